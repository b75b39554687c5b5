"""Test target: waits for a line on stdin, then reads two known files with
read, pread64 and readv (one in a forked worker process), sleeps 200 ms on a
named thread, prints what it did as JSON, and exits."""

import ctypes
import json
import os
import sys
import threading
import time

main_file, worker_file = sys.argv[1], sys.argv[2]
print(json.dumps({"ready": os.getpid()}), flush=True)
sys.stdin.readline()


def read_file(path):
    fd = os.open(path, os.O_RDONLY)
    a = os.read(fd, 4096)
    b = os.pread(fd, 1000, 100)
    bufs = [bytearray(300), bytearray(200)]
    c = os.readv(fd, bufs)
    os.close(fd)
    return {"read": len(a), "pread64": len(b), "readv": c}


def sleeper(out):
    out["tid"] = threading.get_native_id()
    # Name the OS thread, as torch does for its workers (PR_SET_NAME = 15).
    ctypes.CDLL(None).prctl(15, b"sleeper", 0, 0, 0)
    time.sleep(0.2)


done = {"pid": os.getpid(), "tid": threading.get_native_id(), "main": read_file(main_file)}
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.close(r)
    res = {"pid": os.getpid(), "tid": threading.get_native_id(), "worker": read_file(worker_file)}
    os.write(w, json.dumps(res).encode())
    os._exit(0)
os.close(w)
os.waitpid(child, 0)
done["child"] = json.loads(os.read(r, 65536))
slept = {}
t = threading.Thread(target=sleeper, args=(slept,), name="sleeper")
t.start()
t.join()
done["sleeper_tid"] = slept["tid"]
time.sleep(0.3)  # let the probes' last events drain before exit
print(json.dumps(done), flush=True)
