"""Sampler target: threads parked in known call chains. Prints "ready" when set up.

Main thread: main -> outer_main -> middle_main -> inner_main (Event.wait)
Thread "sleeper": sleeper_a -> sleeper_b -> sleeper_c (time.sleep loop)
Thread "waiter":  waiter_a -> waiter_b -> waiter_c -> waiter_d (Event.wait)
Thread "spinner": spin_a -> spin_b (busy loop on one line), unless argv has "nospin".
"""

import sys
import threading
import time

stop = threading.Event()


class Nest:
    def inner_main(self):
        stop.wait()


def sleeper_c():
    while True:
        time.sleep(100)


def sleeper_b():
    sleeper_c()


def sleeper_a():
    sleeper_b()


def waiter_d():
    stop.wait()


def waiter_c():
    waiter_d()


def waiter_b():
    waiter_c()


def waiter_a():
    waiter_b()


def spin_b():
    while True: pass  # noqa: E701


def spin_a():
    spin_b()


def middle_main():
    Nest().inner_main()


def outer_main():
    middle_main()


def main():
    names = [("sleeper", sleeper_a), ("waiter", waiter_a)]
    if "nospin" not in sys.argv:
        names.append(("spinner", spin_a))
    for name, fn in names:
        threading.Thread(target=fn, name=name, daemon=True).start()
    time.sleep(0.2)  # let every thread reach its parking spot
    print("ready", flush=True)
    outer_main()


if __name__ == "__main__":
    main()
