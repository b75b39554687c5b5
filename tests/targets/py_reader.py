"""Test target: a worker thread reads a slow pipe from a known line, so the
IO slice of that read can be checked for the Python line that issued it."""

import json
import os
import sys
import threading
import time

r, w = os.pipe()
print(json.dumps({"ready": os.getpid()}), flush=True)
sys.stdin.readline()


def feeder():
    time.sleep(0.5)
    os.write(w, b"x" * 10)


def reader(out):
    out["tid"] = threading.get_native_id()
    out["data"] = len(os.read(r, 10))  # READ_LINE


res = {}
threading.Thread(target=feeder).start()
t = threading.Thread(target=reader, args=(res,))
t.start()
t.join()
res["pid"] = os.getpid()
res["line"] = next(i for i, ln in enumerate(open(__file__), 1) if "# READ_LINE" in ln and "next(" not in ln)
time.sleep(0.3)
print(json.dumps(res), flush=True)
