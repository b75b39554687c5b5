"""The summary's `gpu` section, from the event stream: which GPU libraries
were probed and how early (libprobes' "uprobes on" / "library mapped"
instants)."""

from __future__ import annotations

from gpuscope.probes.events import CUDA, Event, Instant


class GpuSummary:
    def __init__(self):
        self.libraries: dict[str, dict] = {}   # path -> how it was probed
        self.mapped: dict[str, dict[str, dict]] = {}   # path -> pid -> its unprobed window

    def feed(self, batch: list[Event]) -> None:
        for ev in batch:
            if type(ev) is Instant and ev.cat == CUDA:
                self._instant(ev)

    def _instant(self, ev: Instant) -> None:
        a = ev.args
        if ev.name == "uprobes on":
            self.libraries.setdefault(a["library"], {"path": a["library"], "kind": a["kind"],
                                                     "found": a["found"]})
        elif ev.name == "library mapped":   # before its "uprobes on" when probed late
            self.mapped.setdefault(a["library"], {})[str(ev.pid)] = {
                "unprobed_ms": a["unprobed_ms"]}

    def result(self) -> dict:
        return {"libraries": [{**self.libraries[p], "mapped_by": self.mapped.get(p, {})}
                              for p in sorted(self.libraries)]}
