"""The summary's `gpu` section, from the event stream: which GPU libraries
were probed and how early (libprobes' "uprobes on" / "library mapped"
instants), and device memory per process (the `allocated`/`freed` the CUDA
probe puts on allocation spans, probes/cudamem.py): peak, what is held at
the end, and the allocations never freed, each with the Python line that
made it (the span's `py`)."""

from __future__ import annotations

from gpuscope.probes.events import CUDA, Event, Instant, Span

MAX_LISTED = 100   # never-freed allocations listed per process (largest first); all are summed


class GpuSummary:
    def __init__(self):
        self.libraries: dict[str, dict] = {}   # path -> how it was probed
        self.mapped: dict[str, dict[str, dict]] = {}   # path -> pid -> its unprobed window
        self.memory: dict[int, dict] = {}      # pid -> counts, peak
        self.live: dict[int, dict[str, dict]] = {}   # pid -> ptr -> the allocation

    def feed(self, batch: list[Event]) -> None:
        for ev in batch:
            if type(ev) is Span:
                if ev.cat == CUDA and "allocated" in ev.args:
                    self._memory(ev)
            elif type(ev) is Instant and ev.cat == CUDA:
                self._instant(ev)

    def _instant(self, ev: Instant) -> None:
        a = ev.args
        if ev.name == "uprobes on":
            self.libraries.setdefault(a["library"], {"path": a["library"], "kind": a["kind"],
                                                     "found": a["found"]})
        elif ev.name == "library mapped":   # before its "uprobes on" when probed late
            self.mapped.setdefault(a["library"], {})[str(ev.pid)] = {
                "unprobed_ms": a["unprobed_ms"]}

    def _memory(self, ev: Span) -> None:
        a = ev.args
        m = self.memory.get(ev.pid)
        if m is None:
            m = self.memory[ev.pid] = {"allocations": 0, "frees": 0, "peak_bytes": 0,
                                       "peak_ns": 0, "allocated_bytes": 0}
        live = self.live.setdefault(ev.pid, {})
        if "freed" in a:
            m["frees"] += 1
            live.pop(a["ptr"], None)
        else:
            m["allocations"] += 1
            live[a["ptr"]] = {"ptr": a["ptr"], "bytes": a["bytes"], "call": ev.name,
                              "ts_ns": ev.start, "tid": ev.tid, "py": a.get("py")}
        m["allocated_bytes"] = a["allocated"]
        if a["allocated"] > m["peak_bytes"]:
            m["peak_bytes"], m["peak_ns"] = a["allocated"], ev.end

    def result(self) -> dict:
        memory = {}
        for pid, m in sorted(self.memory.items()):
            left = sorted(self.live.get(pid, {}).values(), key=lambda x: (-x["bytes"], x["ts_ns"]))
            lines: dict[str | None, list[int]] = {}
            for x in left:
                c = lines.setdefault(x["py"], [0, 0])
                c[0] += 1
                c[1] += x["bytes"]
            memory[str(pid)] = {**m, "never_freed_count": len(left),
                                "never_freed_bytes": sum(x["bytes"] for x in left),
                                "never_freed": left[:MAX_LISTED],
                                "never_freed_by_line": [
                                    {"py": py, "count": n, "bytes": b}
                                    for py, (n, b) in sorted(lines.items(), key=lambda kv: -kv[1][1])]}
        return {"libraries": [{**self.libraries[p], "mapped_by": self.mapped.get(p, {})}
                              for p in sorted(self.libraries)],
                "memory": memory}
