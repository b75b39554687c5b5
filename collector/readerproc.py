"""Reads a trace into records in a child process, so that indexing a large
trace decodes on one core while the index is written on the other (decoding
is about half of the work). The child is `python -m` this module; batches
come back pickled on its stdout, one chunk at a time, so at most a chunk or
two is in flight whatever the trace's size.

Each message is (end_offset, packets, records, interning rows or None), or
("error", message, offset) for a TraceError, or None at the end. If the
child cannot run or dies, Died says so and the caller reads on itself."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys

from .tracereader import Interning, TraceError, read_records

_LEN = struct.Struct("<Q")


class Died(Exception):
    """The reader process could not start or ended early; read on in-process."""


def read(path: str, offset: int, interned: list):
    """Yields what the child sends, in order (see the module's docstring)."""
    try:
        child = subprocess.Popen([sys.executable, "-m", __name__, path, str(offset)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL)
    except OSError as e:
        raise Died(str(e)) from None
    stdin, out = child.stdin, child.stdout
    assert stdin is not None and out is not None   # both are PIPEs
    try:
        try:
            stdin.write(pickle.dumps(interned, protocol=5))
            stdin.close()
        except OSError as e:
            raise Died(str(e)) from None
        while True:
            head = out.read(_LEN.size)
            if len(head) < _LEN.size:
                raise Died("the trace reader process ended early")
            msg = pickle.loads(out.read(_LEN.unpack(head)[0]))
            if msg is None:
                return
            yield msg
    finally:
        out.close()
        child.kill()
        child.wait()


def _serve(path: str, offset: int) -> None:
    st = Interning(callstacks=False)
    st.load(pickle.loads(sys.stdin.buffer.read()))
    out = sys.stdout.buffer

    def send(msg) -> None:
        b = pickle.dumps(msg, protocol=5)
        out.write(_LEN.pack(len(b)) + b)
        out.flush()

    try:
        for end, n, recs in read_records(path, offset, st):
            send((end, n, recs, st.rows() if st.dirty else None))
            st.dirty = False
    except TraceError as e:
        send(("error", str(e), e.offset))
    except OSError as e:
        send(("error", f"cannot read trace: {e.strerror}", None))
    send(None)


if __name__ == "__main__":
    try:
        _serve(sys.argv[1], int(sys.argv[2]))
    except BrokenPipeError:   # the parent stopped reading
        os._exit(0)
