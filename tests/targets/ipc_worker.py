"""Test target for in-kernel sums: waits for a line on stdin, then makes a
known number of pipe and socket calls, data-file preads, short sleeps, and
forks a worker that uses a data file and a pipe its parent opened; prints
what it did as JSON and exits."""

import json
import os
import resource
import select
import socket
import sys
import threading
import time

data = sys.argv[1]
N = 10_000
print(json.dumps({"ready": os.getpid()}), flush=True)
sys.stdin.readline()
done = {"pid": os.getpid(), "tid": threading.get_native_id()}



def piper(out):
    """Exactly N pipe writes, N pipe reads, 1000 socket reads on this thread."""
    out["tid"] = threading.get_native_id()
    r, w = os.pipe()
    a, b = socket.socketpair()
    for _ in range(N):
        os.write(w, b"x")
        os.read(r, 1)
    for _ in range(1000):
        a.send(b"yy")   # sendto: not traced
        os.read(b.fileno(), 2)


def passer(out):
    """An fd received over a unix socket (SCM_RIGHTS, as DataLoaders pass
    shared memory), read 500 times; then 300 pipes made and closed."""
    out["tid"] = threading.get_native_id()
    a, b = socket.socketpair(socket.AF_UNIX)
    shm = os.memfd_create("shm")
    os.write(shm, b"q" * 64)
    socket.send_fds(a, [b"f"], [shm])
    _, (got,), _, _ = socket.recv_fds(b, 1, 1)
    for _ in range(500):
        os.pread(got, 4, 0)
    for _ in range(300):
        r, w = os.pipe()
        os.close(r)
        os.close(w)


passed = {}
t = threading.Thread(target=passer, args=(passed,))
t.start()
t.join()
done["passer_tid"] = passed["tid"]

pipes = {}
t = threading.Thread(target=piper, args=(pipes,))
t.start()
t.join()
done["piper_tid"] = pipes["tid"]
fd = os.open(data, os.O_RDONLY)
for i in range(50):
    os.pread(fd, 10, i)


def napper(out):
    out["tid"] = threading.get_native_id()
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw
    for _ in range(200):
        # select's timeout is relative: each call blocks. (time.sleep computes an
        # absolute deadline first, and returns at once if a busy machine delayed it
        # past that: no wait at all to count.)
        select.select([], [], [], 0.0002)
    # How many of them blocked: one whose deadline had passed by the time it
    # would sleep (a busy machine) returns without a context switch.
    out["blocked"] = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw - before


nap = {}
t = threading.Thread(target=napper, args=(nap,))
t.start()
t.join()
done["napper_tid"], done["napper_blocked"] = nap["tid"], nap["blocked"]

r2, w2 = os.pipe()
child = os.fork()
if child == 0:
    for i in range(20):
        os.pread(fd, 10, i)      # the parent's data file
    for _ in range(1000):
        os.write(w2, b"z")       # the parent's pipe
    os._exit(0)
os.waitpid(child, 0)
done["child"] = child
time.sleep(0.3)
print(json.dumps(done), flush=True)
