"""Pathological sampler target: threads created and destroyed constantly, each
recursing to a random depth through f0 -> f1 -> ... -> fK (generated, file
"<churn>": fK's def is on line 2K+1 and its only body line, the call, on 2K+2),
then briefly sleeping or spinning in bottom(). A valid sample's <churn> frames
are exactly f0..fK, each on line 2K+2, optionally followed by bottom.
Prints "ready"."""

import random
import threading
import time

DEPTH = 60
SRC = "".join(f"def f{k}(d):\n    return (f{k + 1} if d > {k + 1} else bottom)(d)\n"
              for k in range(DEPTH))
SRC += f"def f{DEPTH}(d):\n    return bottom(d)\n"
SRC += "def bottom(d):\n    if d % 2:\n        sleep(0.0005)\n    else:\n        spin()\n"
ns = {"sleep": time.sleep}


def spin():
    end = time.monotonic() + 0.0005
    while time.monotonic() < end:
        pass


ns["spin"] = spin
exec(compile(SRC, "<churn>", "exec"), ns)


def worker(rounds):
    rnd = random.Random()
    for _ in range(rounds):
        ns["f0"](rnd.randint(1, DEPTH))


def forever():
    worker(10**12)


def spawner():
    while True:
        threads = [threading.Thread(target=worker, args=(5,)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def main():
    for _ in range(2):
        threading.Thread(target=forever, daemon=True).start()
    threading.Thread(target=spawner, daemon=True).start()
    print("ready", flush=True)
    while True:
        time.sleep(100)


if __name__ == "__main__":
    main()
