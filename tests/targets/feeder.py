"""Sampler target: a multiprocessing.Queue's feeder thread (DataLoader plumbing),
woken every few ms to send one item and otherwise idle in queues.py _feed."""

import multiprocessing
import time

q = multiprocessing.Queue()
q.put(0)  # starts the QueueFeederThread
q.get()
print("ready", flush=True)
i = 0
while True:
    i += 1
    q.put(i)
    q.get()
    time.sleep(0.003)
