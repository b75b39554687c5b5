"""Sampler target for attach-time changes. Prints "ready", then on a line from stdin
starts a new thread (late_thread_fn) and forks a child (child_main), and prints
"child <pid>"."""

import os
import sys
import threading
import time


def late_thread_fn():
    while True:
        time.sleep(100)


def child_main():
    while True:
        time.sleep(100)


def parent_main():
    print("ready", flush=True)
    sys.stdin.readline()
    threading.Thread(target=late_thread_fn, name="late", daemon=True).start()
    pid = os.fork()
    if pid == 0:
        child_main()
    print(f"child {pid}", flush=True)
    try:
        sys.stdin.readline()
    finally:
        os.kill(pid, 9)


if __name__ == "__main__":
    parent_main()
