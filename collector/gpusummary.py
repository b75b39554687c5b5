"""The summary's `gpu` section, from the event stream: which GPU libraries
were probed and how early (libprobes' "uprobes on" / "library mapped"
instants), and device memory per process (the `allocated`/`freed` the CUDA
probe puts on allocation spans, probes/cudamem.py): peak, what is held at
the end, and the allocations never freed, each with the Python line that
made it (the span's `py`); CUDA graphs per process: each capture with the
graph it made and its kernels, each executable graph with its launches
(probes/cudagraphs.py puts the ids on the spans); and the estimated busy
time per stream (gputime.py over probes/gpubusy.py's counters)."""

from __future__ import annotations

from gpuscope.probes.events import CUDA, CounterSample, Event, Instant, Span

from .gputime import ESTIMATE_LABEL, GpuTime

MAX_LISTED = 100   # never-freed allocations listed per process (largest first); all are summed


class GpuSummary:
    def __init__(self):
        self.libraries: dict[str, dict] = {}   # path -> how it was probed
        self.mapped: dict[str, dict[str, dict]] = {}   # path -> pid -> its unprobed window
        self.memory: dict[int, dict] = {}      # pid -> counts, peak
        self.live: dict[int, dict[str, dict]] = {}   # pid -> ptr -> the allocation
        self.captures: dict[int, dict[int, dict]] = {}   # pid -> capture number -> capture
        self.execs: dict[int, dict[str, dict]] = {}   # pid -> exec id -> its launches
        self.time = GpuTime()

    def feed(self, batch: list[Event]) -> None:
        for ev in batch:
            if type(ev) is Span:
                if ev.cat == CUDA:
                    a = ev.args
                    if "allocated" in a:
                        self._memory(ev)
                    elif "graph" in a or "capture" in a:
                        self._graph(ev)
            elif type(ev) is Instant and ev.cat == CUDA:
                self._instant(ev)
            elif type(ev) is CounterSample:
                self.time.add(ev)

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

    def _graph(self, ev: Span) -> None:
        a, name = ev.args, ev.name
        if "capture" in a:
            c = self.captures.setdefault(ev.pid, {}).setdefault(a["capture"], {
                "capture": a["capture"], "stream": a["stream"], "begin_ns": ev.start,
                "end_ns": None, "graph": None, "kernel_count": 0, "kernels": ""})
            if name.endswith("EndCapture"):
                c["end_ns"] = ev.end
                if "graph" in a:
                    c.update(graph=a["graph"], kernel_count=a.get("kernel_count", 0),
                             kernels=a.get("kernels", ""))
        elif "graph_exec" in a:
            x = self.execs.setdefault(ev.pid, {}).setdefault(a["graph_exec"], {
                "graph_exec": a["graph_exec"], "graph": a["graph"], "runtime_launches": 0,
                "driver_launches": 0, "kernel_count": a.get("kernel_count"),
                "kernels": a.get("kernels")})
        elif name.endswith("GraphLaunch") and a["ret"] == 0:
            x = self.execs.setdefault(ev.pid, {}).setdefault(a["graph"], {
                "graph_exec": a["graph"], "graph": a.get("graph_id"), "runtime_launches": 0,
                "driver_launches": 0, "kernel_count": a.get("kernel_count"),
                "kernels": a.get("kernels")})
            x["runtime_launches" if name.startswith("cuda") else "driver_launches"] += 1

    def _graphs(self) -> dict:
        out = {}
        for pid in sorted(set(self.captures) | set(self.execs)):
            execs = []
            for x in self.execs.get(pid, {}).values():
                x = dict(x)
                # cudaGraphLaunch calls cuGraphLaunch on a real driver: one launch
                x["launches"] = max(x.pop("runtime_launches"), x.pop("driver_launches"))
                execs.append(x)
            out[str(pid)] = {"captures": list(self.captures.get(pid, {}).values()),
                             "executables": execs}
        return out

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
                "memory": memory, "graphs": self._graphs(), "busy_estimate": self._busy()}

    def _busy(self) -> dict:
        out = {}
        for pid, streams in sorted(self.time.busy.items()):
            out[str(pid)] = {
                "label": ESTIMATE_LABEL,
                "busy_ms": round(sum(e - s for s, e in self.time.estimate(pid)) / 1e6, 3),
                "streams": {st: {"busy_ms": round(sum(e - s for s, e in ivs) / 1e6, 3),
                                 "intervals": len(ivs)} for st, ivs in sorted(streams.items())}}
        return out
