"""A stand-in training job for the sidecar tests: loads the real libcudart (so
default discovery, "Python with CUDA libraries mapped", finds it), forks a
data worker that reads a file in a loop, and runs "steps" in the main
process: read a batch from the worker over a pipe, read the data file, launch
a (non-existent, no GPU here) kernel. Writes {"pid", "worker"} (its own PID
namespace's view) to the info file, and runs until killed.

    sidecar_trainer.py CUDART DATAFILE INFOFILE
"""

import ctypes as ct
import json
import os
import sys
import time

cudart_path, data_path, info_path = sys.argv[1:4]
cudart = ct.CDLL(cudart_path)


class Dim3(ct.Structure):
    _fields_ = [("x", ct.c_uint), ("y", ct.c_uint), ("z", ct.c_uint)]


cudart.cudaLaunchKernel.argtypes = [ct.c_void_p, Dim3, Dim3, ct.c_void_p, ct.c_size_t,
                                    ct.c_void_p]

r, w = os.pipe()
worker = os.fork()
if worker == 0:
    os.close(r)
    while True:
        with open(data_path, "rb") as f:
            chunk = f.read(65536)
        os.write(w, chunk[:512])
        time.sleep(0.02)

os.close(w)
tmp = info_path + ".tmp"
with open(tmp, "w") as f:
    json.dump({"pid": os.getpid(), "worker": worker}, f)
os.replace(tmp, info_path)
fn = ct.c_void_p(0x1000)
while True:
    os.read(r, 512)
    fd = os.open(data_path, os.O_RDONLY)
    os.pread(fd, 32768, 0)
    os.close(fd)
    cudart.cudaLaunchKernel(fn, Dim3(1, 1, 1), Dim3(32, 1, 1), None, 0, None)
    time.sleep(0.01)
