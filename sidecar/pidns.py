"""PID namespaces: eBPF sees kernel (init-namespace) PIDs, a sidecar sees its pod's.

In a pod with `shareProcessNamespace: true` gpuscope's /proc is the pod's, so
/proc/PID, process_vm_readv and everything a user reads use the pod's PIDs,
while bpf_get_current_pid_tgid() and the tracked map use the kernel's. The
host's procfs, mounted read-only (hostPath /proc -> /host/proc), shows both:
/host/proc/K/status has `NSpid: K ... N`, and /host/proc/K/ns/pid says which
namespace N belongs to. That is the translation table; nothing in the BPF
programs changes.

Everything gpuscope does above the BPF boundary then runs on namespace PIDs:
`NamespacedKernelProbes` translates namespace -> kernel where PIDs go into the
kernel (the tracked map) and kernel -> namespace in every ring-buffer record
*before* the probe decodes it, so the probes' own /proc reads (fd tables, maps
of GPU libraries, thread names) use the right PIDs too. Other sources that
report kernel PIDs (NVML) are wrapped in `TranslatedSource`.

A record whose task exited before it could be translated (a thread that lived
less than one poll) is dropped and counted as a loss of source "pidns".
"""

from __future__ import annotations

import ctypes as ct
import os
import struct
import time
from collections.abc import Iterable

from gpuscope.probes import procfs
from gpuscope.probes.events import (
    CounterSample,
    Event,
    Instant,
    Loss,
    Span,
    StackSample,
    ThreadName,
)
from gpuscope.probes.kernel import KernelProbes
from gpuscope.probes.source import Source, SourceError, SourceStats

INIT_PIDNS_INO = 0xEFFFFFFC   # PROC_PID_INIT_INO: the initial PID namespace
DEFAULT_HOST_PROC = "/host/proc"
CACHE_MAX = 65536
NEGATIVE_TTL_S = 2.0          # "not in our namespace" answers are re-checked after this
# ... for a waker only (a field a record is kept without): wakers outside the pod are
# many on a busy node, each re-read from /host/proc every NEGATIVE_TTL_S cost ~0.5% of a
# core in bench_sidecar; a pod task behind a recently seen outside id shows as waker 0.
WAKER_NEGATIVE_TTL_S = 30.0

# Record fields holding a PID or TID; required ones make the record useless untranslated.
ID_FIELDS = {"pid": True, "tid": True, "ppid": True, "waker_pid": False, "waker_tid": False}
PROC_EXIT = 4                 # proc.h PROC_EXIT
_U32 = struct.Struct("<I")
_INT_CODES = {(4, False): "I", (4, True): "i", (8, False): "Q", (8, True): "q"}


class PidNamespace:
    """Translates between kernel PIDs/TIDs and those of one PID namespace."""

    def __init__(self, host_proc: str, ns_ino: int, ns_dev: int):
        self.host_proc = host_proc
        self.ns = (ns_dev, ns_ino)
        self._to_ns: dict[int, int] = {}
        self._to_kernel: dict[int, int] = {}
        self._negative: dict[int, float] = {}
        self._ns_negative: dict[int, float] = {}
        self.lookups = 0

    @classmethod
    def detect(cls, host_proc: str | None = None) -> PidNamespace | None:
        """The namespace gpuscope runs in, or None when it is the initial one
        (kernel PIDs are then its own). Raises SourceError with advice when a
        translation is needed but no host procfs is mounted."""
        st = os.stat("/proc/self/ns/pid")
        if st.st_ino == INIT_PIDNS_INO and host_proc is None:
            return None
        path = host_proc or DEFAULT_HOST_PROC
        try:
            # PID 2 is kthreadd in the initial namespace's procfs (PID 1 may deny access).
            host2 = os.stat(f"{path}/2/ns/pid")
            os.readlink(f"{path}/self")
        except OSError as e:
            raise SourceError(
                "gpuscope runs in a PID namespace (a pod), but eBPF reports the kernel's "
                f"PIDs; it needs the host's /proc to translate them and {path} is not usable "
                f"({e.strerror or e}): mount hostPath /proc read-only at {DEFAULT_HOST_PROC} "
                "(see docs/sidecar.md) or pass --host-proc") from None
        if host2.st_ino != INIT_PIDNS_INO:
            raise SourceError(f"{path} is not the host's procfs (its PID 2 is not in the "
                              "initial PID namespace): mount the host's /proc there")
        if st.st_ino == INIT_PIDNS_INO:
            return None
        return cls(path, st.st_ino, st.st_dev)

    # -- lookups -------------------------------------------------------------
    def _read(self, kid: int) -> int | None:
        """The namespace id of kernel id `kid` (process or thread), from the host procfs."""
        self.lookups += 1
        base = f"{self.host_proc}/{kid}"
        try:
            st = os.stat(f"{base}/ns/pid")
            if (st.st_dev, st.st_ino) != self.ns:
                return None
            ids = procfs.status(kid, proc=self.host_proc)["NSpid"].split()
            if int(ids[0]) != kid:
                return None
            return int(ids[-1])
        except (OSError, KeyError, ValueError, IndexError):
            return None

    def _remember(self, kid: int, nid: int) -> None:
        if len(self._to_ns) >= CACHE_MAX:
            for k in list(self._to_ns)[: CACHE_MAX // 2]:
                self._to_kernel.pop(self._to_ns.pop(k), None)
        old = self._to_kernel.get(nid)
        if old is not None and old != kid:
            self._to_ns.pop(old, None)
        self._to_ns[kid] = nid
        self._to_kernel[nid] = kid
        self._negative.pop(kid, None)
        self._ns_negative.pop(nid, None)

    def to_ns(self, kid: int, negative_ttl_s: float = NEGATIVE_TTL_S) -> int | None:
        nid = self._to_ns.get(kid)
        if nid is not None:
            return nid
        t = self._negative.get(kid)
        if t is not None and time.monotonic() - t < negative_ttl_s:
            return None
        nid = self._read(kid)
        if nid is None:
            if len(self._negative) >= CACHE_MAX:
                self._negative.clear()
            self._negative[kid] = time.monotonic()
            return None
        self._remember(kid, nid)
        return nid

    def to_kernel(self, nid: int) -> int | None:
        kid = self._to_kernel.get(nid)
        if kid is not None and self._to_ns.get(kid) == nid:
            return kid
        # One pass over the host procfs per miss, but not again and again for
        # an id that is not in the namespace.
        t = self._ns_negative.get(nid)
        if t is not None and time.monotonic() - t < NEGATIVE_TTL_S:
            return None
        self.scan()
        kid = self._to_kernel.get(nid)
        if kid is None:
            self._ns_negative[nid] = time.monotonic()
        return kid

    def forget(self, kid: int) -> None:
        """A task exited: its ids may be reused."""
        nid = self._to_ns.pop(kid, None)
        if nid is not None and self._to_kernel.get(nid) == kid:
            del self._to_kernel[nid]

    def scan(self) -> None:
        """Learns every process and thread of the namespace (one pass over the host procfs)."""
        if len(self._ns_negative) > 4096:
            self._ns_negative.clear()
        for kid in procfs.pids(self.host_proc):
            nid = self._read(kid)
            if nid is None:
                continue
            self._remember(kid, nid)
            self.learn_threads(kid)

    def learn_threads(self, kpid: int) -> None:
        for ktid in procfs.threads(kpid, proc=self.host_proc):
            if ktid not in self._to_ns:
                nid = self._read(ktid)
                if nid is not None:
                    self._remember(ktid, nid)


# -- the eBPF source in namespace PIDs -----------------------------------------

class NamespacedKernelProbes(KernelProbes):
    """KernelProbes taking and reporting namespace PIDs, through its hooks for
    PIDs crossing the BPF boundary: the tracked map gets kernel PIDs, and every
    ring-buffer record is rewritten to namespace PIDs before a probe decodes it."""

    def __init__(self, probes, pidns: PidNamespace, extra_cflags: Iterable[str] = ()):
        self.pidns = pidns
        self.exited: list[int] = []
        self._untranslated = self._reported = 0
        self._layouts: dict[str, tuple] = {}
        super().__init__(probes, extra_cflags)

    def kernel_pid(self, pid: int) -> int | None:
        return self.pidns.to_kernel(pid)

    def user_pid(self, kid: int) -> int | None:
        return self.pidns.to_ns(kid)

    def add_process(self, pid: int) -> None:
        super().add_process(pid)
        kid = self.kernel_pid(pid)
        if kid is not None:
            self.pidns.learn_threads(kid)

    def _layout(self, probe, data) -> tuple:
        """Where a ring's records hold PIDs: one struct.Struct over all of them
        (padding between), their offsets and which are required; the offset of
        proc's `kind`."""
        cls = type(self.bpf[probe.ring].event(data))  # BCC's struct for this ring
        types = dict((f[0], f[1]) for f in cls._fields_)
        found = sorted((getattr(cls, n).offset, n, req) for n, req in ID_FIELDS.items()
                       if n in types)
        fmt, pos = "<", found[0][0] if found else 0
        base = pos
        for off, name, _ in found:
            code = _INT_CODES[(ct.sizeof(types[name]), types[name](-1).value < 0)]
            fmt += "x" * (off - pos) + code
            pos = off + ct.sizeof(types[name])
        kind = cls.kind.offset if probe.ring == "proc_events" else -1
        names = [n for _, n, _ in found]
        layout = (struct.Struct(fmt), base, tuple(req for _, _, req in found), kind,
                  names.index("tid") if "tid" in names else -1)
        self._layouts[probe.ring] = layout
        return layout

    def record(self, probe, data, size: int) -> bytes | None:
        layout = self._layouts.get(probe.ring) or self._layout(probe, data)
        st, base, required, kind_at, tid_at = layout
        if not required or base + st.size > size:
            return self._record_short(probe, data, size) if required else data
        ids = st.unpack_from(data, base)
        known, to_ns = self.pidns._to_ns, self.pidns.to_ns
        out = []
        for kid, req in zip(ids, required, strict=True):
            if kid:
                nid = known.get(kid)
                if nid is None:
                    nid = to_ns(kid, NEGATIVE_TTL_S if req else WAKER_NEGATIVE_TTL_S)
                    if nid is None:
                        if req:
                            self._untranslated += 1
                            return None
                        nid = 0  # a waker outside the pod
                out.append(nid)
            else:
                out.append(0)
        buf = bytearray(data)
        st.pack_into(buf, base, *out)
        if kind_at >= 0 and tid_at >= 0 and _U32.unpack_from(buf, kind_at)[0] == PROC_EXIT:
            self.exited.append(out[tid_at])
        return bytes(buf)

    def _record_short(self, probe, data, size: int) -> bytes | None:
        """A record shorter than its PID fields reach (field by field, as far as it goes)."""
        cls = type(self.bpf[probe.ring].event(data))
        buf = (ct.c_char * max(size, ct.sizeof(cls)))()
        ct.memmove(buf, data, size)
        ev = cls.from_buffer(buf)
        for name, required in ID_FIELDS.items():
            if not hasattr(cls, name):
                continue
            kid = getattr(ev, name)
            if not kid or getattr(cls, name).offset + 4 > size:
                continue
            nid = self.pidns.to_ns(kid)
            if nid is None:
                if required:
                    self._untranslated += 1
                    return None
                nid = 0
            setattr(ev, name, nid)
        return ct.string_at(buf, size)

    def start(self, pids: Iterable[int]) -> None:
        self.pidns.scan()
        super().start(pids)

    def poll(self, timeout_s: float) -> list[Event]:
        out = super().poll(timeout_s)
        self._forget_exited(out)
        return out

    def drain(self) -> list[Event]:
        out = super().drain()
        self._forget_exited(out)
        return out

    def _forget_exited(self, out: list[Event]) -> None:
        if self._untranslated > self._reported:
            out.append(Loss("pidns", time.monotonic_ns(), self._untranslated - self._reported,
                            "task exited before its PID could be translated"))
            self._reported = self._untranslated
        exited, self.exited = self.exited, []
        for nid in exited:
            kid = self.pidns._to_kernel.get(nid)
            if kid is not None:
                self.pidns.forget(kid)

    def stats(self) -> SourceStats:
        st = super().stats()
        st.lost["pidns"] = self._untranslated
        return st


# -- any other source reporting kernel PIDs ----------------------------------

class TranslatedSource(Source):
    """Wraps a source that takes and reports kernel PIDs (NVML's per-process
    counters) so it takes and reports namespace PIDs."""

    def __init__(self, inner: Source, pidns: PidNamespace):
        self.inner, self.pidns = inner, pidns
        self.name = inner.name
        self.dropped = 0

    def _k(self, pids: Iterable[int]) -> list[int]:
        return [k for k in (self.pidns.to_kernel(p) for p in pids) if k is not None]

    def start(self, pids: Iterable[int]) -> None:
        self.inner.start(self._k(pids))

    def add_process(self, pid: int) -> None:
        for k in self._k([pid]):
            self.inner.add_process(k)

    def remove_process(self, pid: int) -> None:
        for k in self._k([pid]):
            self.inner.remove_process(k)

    def poll(self, timeout_s: float) -> list[Event]:
        return self._map(self.inner.poll(timeout_s))

    def drain(self) -> list[Event]:
        drain = getattr(self.inner, "drain", None)
        return self._map(drain()) if drain else []

    def _map(self, batch: list[Event]) -> list[Event]:
        out = []
        ns = self.pidns.to_ns
        for ev in batch:
            if type(ev) is CounterSample:
                if ev.pid:
                    p = ns(ev.pid)
                    if p is None:
                        self.dropped += 1
                        continue
                    ev.pid = p
            elif isinstance(ev, (Span, Instant, StackSample, ThreadName)):
                p = ns(ev.pid) if ev.pid else 0
                tid = ns(ev.tid) if ev.tid else 0
                if p is None or tid is None:
                    self.dropped += 1
                    continue
                ev.pid, ev.tid = p, tid
                if type(ev) is Instant and "child" in ev.args:
                    ev.args["child"] = ns(ev.args["child"]) or 0
            out.append(ev)
        return out

    def stop(self) -> None:
        self.inner.stop()

    def stats(self) -> SourceStats:
        st = self.inner.stats()
        st.lost[self.name] = st.lost.get(self.name, 0) + self.dropped
        return st

    def notices(self) -> list[str]:
        return self.inner.notices()


def namespaced(sources: list[Source], pidns: PidNamespace | None) -> list[Source]:
    """The sources as they must run inside `pidns` (unchanged when None)."""
    if pidns is None:
        return sources
    out: list[Source] = []
    for src in sources:
        if type(src) is KernelProbes:
            out.append(NamespacedKernelProbes(src.probes, pidns, src.extra_cflags))
        elif src.name == "nvml":
            out.append(TranslatedSource(src, pidns))
        else:
            out.append(src)  # sources reading /proc themselves (the sampler) already see ours
    return out
