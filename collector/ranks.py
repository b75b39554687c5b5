"""The stall analysis of every DDP rank, and the straggler among them.

StallAnalysis follows one training loop. Under a launcher (torchrun) each
rank is a process with a loop of its own, and in a data-parallel job the
ranks wait for each other in their collectives: the rank that makes the
others wait is the one to fix, and its own verdict says why it is slow.

RankAnalysis wraps the job-wide StallAnalysis (whose verdict stays what
gpuscope always gave) and, for each process below the target where that
analysis sees a training loop, runs one more StallAnalysis rooted at the
rank, fed only the events of the rank's process tree (the fork and parent
instants of the stream say whose child each process is). A rank is named
by RANK / LOCAL_RANK from its environment, read once when its loop is first
seen, and written into the trace (a "ddp rank" instant on its process
track) so that `gpuscope report` names it the same way."""

from __future__ import annotations

from gpuscope.probes.events import PROC, CounterSample, Instant

from .findings import headline as headline_of
from .stalls import StallAnalysis

RANK_INSTANT = "ddp rank"
_ENV = {"RANK": "rank", "LOCAL_RANK": "local_rank", "WORLD_SIZE": "world_size"}
# A straggler: the others spend at least this share of their step in collectives,
# and that much more than it does (Kineto's advice threshold for communication: 10%).
STRAGGLER_WAIT = 0.10


def read_rank_env(pid: int) -> dict[str, int]:
    """RANK, LOCAL_RANK, WORLD_SIZE of a process ({} if its environ cannot be
    read: exited, another user's, or not set)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        key, _, value = item.partition(b"=")
        name = _ENV.get(key.decode("ascii", "replace"))
        if name:
            try:
                out[name] = int(value)
            except ValueError:
                pass
    return out


class RankAnalysis:
    def __init__(self, root_pid: int, cores: int | None = None, rate_hz: float | None = None,
                 environ=read_rank_env):
        """environ: how to read a live rank's identity; None for a saved trace
        (its PIDs may now be other processes: the trace's instants name them)."""
        self.top = StallAnalysis(root_pid, cores, rate_hz)
        self.root, self.cores, self.environ = root_pid, cores, environ
        self.ranks: dict[int, StallAnalysis] = {}   # rank pid -> its analysis
        self.ident: dict[int, dict] = {}            # rank pid -> rank, local_rank, world_size
        self.parent: dict[int, int] = {}
        self._owner: dict[int, int] = {}            # pid -> rank pid whose tree it is in
        self._nloops = 0

    # The job-wide analysis' view, for verdict_events.
    @property
    def first_ts(self) -> int:
        return self.top.first_ts

    @property
    def last_ts(self) -> int:
        return self.top.last_ts

    def stall_intervals(self) -> list[tuple[int, int]]:
        return self.top.stall_intervals()

    # -- feeding -------------------------------------------------------------
    def feed(self, batch) -> None:
        top = self.top
        if not self.ranks and self.root in top.loops:
            # The target runs the loop itself: the job-wide analysis is the whole story.
            top.feed(batch)
            return
        # One event at a time, so a rank's analysis starts at the very event that
        # showed its loop, whatever the batches (a live capture's and a replay's differ).
        self._route(batch)

    def _instant(self, ev: Instant) -> None:
        if ev.name == "fork":
            self.parent[ev.args["child"]] = ev.pid
        elif ev.name == "parent":
            self.parent[ev.pid] = ev.args["ppid"]
        elif ev.name == RANK_INSTANT:
            self.ident[ev.pid] = {k: ev.args[k] for k in _ENV.values() if k in ev.args}

    def _route(self, batch) -> None:
        top = self.top
        out: dict[int, list] = {pid: [] for pid in self.ranks}
        for ev in batch:
            top.feed((ev,))
            if len(top.loops) != self._nloops:
                self._new_loops()
                for pid in self.ranks:
                    out.setdefault(pid, [])
            t = type(ev)
            if t is CounterSample:   # the sampler's rate, GPU counters: every rank's
                for lst in out.values():
                    lst.append(ev)
                continue
            if t is Instant:
                self._instant(ev)
            src = getattr(ev, "pid", None)   # a Loss has none: the job-wide analysis' alone
            owner = self.owner(src) if src is not None else None
            if owner is not None:
                out[owner].append(ev)
        for pid, evs in out.items():
            if evs:
                self.ranks[pid].feed(evs)

    def owner(self, pid: int) -> int | None:
        """The rank whose process tree pid is in (a rank, or a DataLoader worker of one)."""
        o = self._owner.get(pid)
        if o is not None:
            return o
        p: int | None = pid
        seen = 0
        while p is not None and seen < 64:
            if p in self.ranks:
                self._owner[pid] = p
                return p
            p = self.parent.get(p)
            seen += 1
        return None

    def _new_loops(self) -> None:
        top = self.top
        self._nloops = len(top.loops)
        for pid in top.loops:
            if pid == self.root or pid in self.ranks:
                continue   # the target's own loop: the job-wide analysis is its analysis
            rate = 1e9 / top.requested_period if top.rate_seen else None
            a = self.ranks[pid] = StallAnalysis(pid, top.cores, rate_hz=rate)
            a.slowest_period = top.slowest_period
            a.parent = {c: p for c, p in self.parent.items()}
            if self.environ is not None and pid not in self.ident:
                self.ident[pid] = self.environ(pid)
        self._owner.clear()

    # -- results -----------------------------------------------------------
    def result(self) -> dict:
        res = self.top.result()
        if not self.ranks or (len(self.ranks) < 2 and not any("rank" in self.ident.get(p, {})
                                                               for p in self.ranks)):
            return res   # one loop, not a DDP rank: the single-process verdict alone
        ranks = []
        for pid, a in self.ranks.items():
            ident = self.ident.get(pid, {})
            a.ddp = a.ddp or "rank" in ident
            ranks.append(_rank_entry(pid, ident, a.result()))
        ranks.sort(key=lambda r: (r["rank"] is None, r["rank"] if r["rank"] is not None else 0, r["pid"]))
        res = {**res, "ranks": ranks}
        f = straggler(ranks)
        if f is not None:
            v = dict(res["verdict"])
            # First: the job-wide verdict is one rank's (whichever loop was seen first),
            # and whatever that rank lost, the whole job runs at the straggler's pace.
            v["findings"] = [f] + list(v.get("findings", []))
            v["primary"] = "straggler"
            if v.get("data_wait_share") is not None:
                v["headline"] = headline_of(v["input_bound"], v["data_wait_share"], v["findings"],
                                            res.get("steps", []))
            res["verdict"] = v
        return res


def _rank_entry(pid: int, ident: dict, r: dict) -> dict:
    v = r["verdict"]
    b = v.get("breakdown", {})
    findings = v.get("findings", [])
    return {"rank": ident.get("rank"), "local_rank": ident.get("local_rank"),
            "world_size": ident.get("world_size"), "pid": pid,
            "verdict": {"input_bound": v["input_bound"], "data_wait_share": v["data_wait_share"],
                        "compute_share": b.get("compute", 0.0), "comm_share": b.get("comm", 0.0),
                        "sync_share": b.get("sync", 0.0), "h2d_share": b.get("h2d", 0.0),
                        "confidence": v["confidence"], "steps": len(r.get("steps", [])),
                        "step_ms_median": v.get("step_ms_median"), "window_ns": v.get("window_ns"),
                        "primary": v["primary"], "headline": v["headline"],
                        "data_producers": v.get("data_producers", [])},
            "findings": findings}


def name_of(r: dict) -> str:
    return f"rank {r['rank']}" if r["rank"] is not None else f"the rank in PID {r['pid']}"


def straggler(ranks: list[dict]) -> dict | None:
    """The rank the others wait for: the least of its step in collectives while
    the others spend a large share of theirs there; the share of their step
    they lose (their collective share above its own: the collective's own
    cost, which the last rank to arrive pays too); and its own cause."""
    seen = [r for r in ranks if r["verdict"]["data_wait_share"] is not None and r["verdict"]["steps"]]
    if len(seen) < 2:
        return None
    comm = {r["pid"]: r["verdict"]["comm_share"] + r["verdict"]["sync_share"] for r in seen}
    slow = min(seen, key=lambda r: comm[r["pid"]])
    others = [r for r in seen if r is not slow]
    others_share = sum(comm[r["pid"]] for r in others) / len(others)
    lost = others_share - comm[slow["pid"]]
    if others_share < STRAGGLER_WAIT or lost < STRAGGLER_WAIT:
        return None
    lost_ms = sum((comm[r["pid"]] - comm[slow["pid"]]) * r["verdict"]["step_ms_median"] * r["verdict"]["steps"]
                  for r in others)
    sv = slow["verdict"]
    cause = next((f for f in slow["findings"] if f["kind"] != "not_input_bound"), None)
    producer = (cause or {}).get("numbers", {}).get("producer") if cause else None
    frames = [p["frame"] for p in sv.get("data_producers", [])]
    who = name_of(slow)
    if cause is not None:
        why = cause["title"] + (f" ({producer})" if producer and producer not in cause["title"] else "")
        fix = f"Fix {who} first: {cause['fix']}"
    else:
        why = f"its own compute (data wait {sv['data_wait_share']:.0%}, compute {sv['compute_share']:.0%} of its step)"
        fix = (f"Even out the work across ranks: {who} computes longer per step (uneven batches or "
               "sequence lengths, a slower or shared core, another process on its CPU).")
    evidence = [f"{name_of(r)}: {comm[r['pid']]:.0%} of its step in collectives, "
                f"median step {r['verdict']['step_ms_median']} ms" for r in others]
    evidence.append(f"{who}: {comm[slow['pid']]:.0%} of its step in collectives (the collective's own "
                    f"cost), data wait {sv['data_wait_share']:.0%}, compute {sv['compute_share']:.0%}")
    evidence.append(f"{who}'s own verdict: {why[0].lower() + why[1:]}")
    numbers = {"straggler_rank": slow["rank"], "straggler_pid": slow["pid"],
               "straggler_comm_share": round(comm[slow["pid"]], 4),
               "others_comm_share": round(others_share, 4), "others_wait_share": round(lost, 4),
               "cause": cause["kind"] if cause else "compute"}
    if producer or frames:
        numbers["cause_frame"] = producer or frames[0]
    return {"kind": "straggler",
            "title": f"Straggler: {who} makes the other ranks wait in their collectives "
                     f"({lost:.0%} of their step)",
            "severity": "high" if lost >= 0.20 else "medium", "stall_ms": round(lost_ms, 1),
            "numbers": numbers, "evidence": evidence, "fix": fix}


def rank_events(result: dict) -> list[Instant]:
    """Each rank's identity on its process track: `gpuscope report` reads it back."""
    out = []
    for r in result.get("ranks", []):
        args = {k: r[k] for k in _ENV.values() if r.get(k) is not None}
        ts = (r["verdict"].get("window_ns") or [0])[0]
        if args:
            out.append(Instant(PROC, RANK_INSTANT, r["pid"], 0, ts, args))
    return out


