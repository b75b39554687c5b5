"""Fault-suite target: runs until told, reading a little of a file and writing
one numbered line to OUT every 10 ms, so a test can check that nothing
gpuscope did changed what the job does. Prints {"ready": pid} first.
stdin commands: "exec" re-executes it (same PID, counting on), "exit" ends it."""

import json
import os
import sys
import threading
import time

out_path = sys.argv[1]
count = [int(sys.argv[2]) if len(sys.argv) > 2 else 0]
print(json.dumps({"ready": os.getpid()}), flush=True)


def tick(out):
    while True:
        with open(__file__, "rb") as f:
            f.read(512)
        out.write(f"tick {count[0]}\n")
        out.flush()
        count[0] += 1
        time.sleep(0.01)


out = open(out_path, "a")
threading.Thread(target=tick, args=(out,), name="ticker", daemon=True).start()
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "exec":
        out.flush()
        os.execv(sys.executable, [sys.executable, __file__, out_path, str(count[0] + 1)])
    if cmd == "exit":
        break
out.flush()
