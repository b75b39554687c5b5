"""PythonSampler: every thread's Python stack of every tracked process, at a fixed rate.

A background thread ticks at the current rate; each tick walks all threads of all
tracked pids (pystack.Walker) and tags each stack with the thread's kernel state
(running/idle, from /proc/PID/task/TID/stat read through a kept-open fd) and
whether it holds the GIL. schedstat (read beside stat) tells whether a thread has
been on a CPU since its last walk; if not, its last stack is reused (stats
"reused"). Idle DataLoader plumbing threads are walked every 4th tick ("thinned").
Threads that are running when a tick comes are walked in the kernel instead
(pyperf: a CPU-clock perf event at the same rate walks the frames of whichever
watched thread it interrupts; stats "kernel"), once its program is loaded and
where it can be: then the outside walk only reads threads that are not running.
Samples and losses are queued for poll(). A tick that cannot start on time is
counted late and skipped, so the achieved rate is honest. ctypes releases the GIL
during each process_vm_readv, but the walk itself is Python: at 1 kHz it competes
with the collector's other threads.

The overhead budget's knob: levels() / set_level(n) lower the rate (LEVEL_SCALE);
each change is a CounterSample on RATE_TRACK in the stream.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from functools import partial

from . import procfs, pyperf
from .events import CounterSample, Event, Loss, StackSample
from .procmem import NoPermission, ProcessGone, ProcessMemory, ReadError, denied_why
from .pyruntime import NotPython, Runtime, UnsupportedVersion, find_runtime, runtime_for_child
from .pystack import Walker, dump, python_version
from .source import Source, SourceError, SourceStats
from .threadstates import ThreadStates

MAX_QUEUED = 1_000_000
WAKE_AT = 2000  # queued samples that wake a waiting poll() before its timeout
# The overhead budget's knob: level n samples at rate_hz * LEVEL_SCALE[n] (100, 50, 25, 10 Hz).
LEVEL_SCALE = (1.0, 0.5, 0.25, 0.1)
RATE_TRACK = "python sample rate"


class PythonSampler(Source):
    """Samples Python stacks of the target tree at rate_hz (see module docstring)."""

    name = "python"

    def __init__(self, rate_hz: float = 100, retries: int = 3):
        if not 0 < rate_hz <= 100_000:
            raise ValueError(f"rate_hz must be in (0, 100000], not {rate_hz}")
        self.rate_hz = rate_hz  # the requested (full-detail) rate
        self.current_hz = rate_hz  # the rate of the current level
        self.level = 0
        self.retries = retries
        self._walkers: dict[int, Walker] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: list[Event] = []
        self._lost_pending: dict[str, int] = {}
        self._notices: list[str] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stop_or_wake = threading.Event()  # set by stop() and set_level()
        self._states = ThreadStates()
        self._failing: dict[int, int] = {}  # pid -> consecutive failed ticks
        self._started_at = 0.0
        self._expected_before = 0.0  # ticks the earlier levels asked for
        self._level_since = 0.0
        self._counts = {"events": 0, "lost": 0, "errors": 0, "ticks": 0, "late": 0,
                        "stale": 0, "threads": 0, "reused": 0, "thinned": 0, "kernel": 0}
        self._kernel: pyperf.KernelWalks | None = None  # set when its program is loaded
        self._kernel_thread: pyperf.LoadThread | None = None
        self._setup_cpu = 0.0

    # ---- Source interface ------------------------------------------------------------

    def start(self, pids: Iterable[int]) -> None:
        pids = list(pids)
        got = [self._attach(pid) for pid in pids]
        denied = [pid for pid, how in zip(pids, got, strict=True) if how == "denied"]
        if pids and len(denied) == len(pids):
            self.stop()  # a kernel walker prepare() started must not outlive the refusal
            raise SourceError(f"cannot read the memory of pid {', '.join(map(str, denied))}: "
                              f"the Python sampler {denied_why()} "
                              "(process_vm_readv was refused)")
        self._started_at = self._level_since = time.monotonic()
        self._expected_before = 0.0
        if "ok" in got:  # the requested rate, in the trace: `report` weighs samples as live
            self._rate_event()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="gpuscope-python-sampler", daemon=True)
        self._thread.start()
        self._start_kernel_walks()

    def prepare(self, pids: Iterable[int]) -> None:
        """Start compiling the kernel walker for the target's layout now, beside the
        other sources' start (the pipeline calls this first, then start())."""
        self._stop.clear()  # a new start: a stop() before it is over
        for pid in pids:
            try:
                layout = find_runtime(pid).layout
            except (NotPython, UnsupportedVersion, OSError, ReadError):
                continue
            self._kernel_thread = pyperf.load_in_background(
                layout, int(self.current_hz), self._stop, self._kernel_loaded, self._notice)
            return

    def wait_ready(self, timeout_s: float) -> None:
        """Until the kernel walker is loaded (or has failed): its compile is set-up."""
        t = self._kernel_thread
        if t is not None:
            t.join(timeout_s)

    def _start_kernel_walks(self) -> None:
        """Load the in-kernel walker beside the running sampler (its compile takes
        seconds) unless prepare() did; until it is loaded, or where it cannot be,
        running threads are walked from outside, and a notice says why."""
        walkers = self._snapshot()
        if walkers and self._kernel_thread is None and self._kernel is None:
            self._kernel_thread = pyperf.load_in_background(
                walkers[0].L, int(self.current_hz), self._stop, self._kernel_loaded, self._notice)

    def _kernel_loaded(self, kw: pyperf.KernelWalks) -> None:
        self._kernel = kw

    def setup_cpu_s(self) -> float:
        """CPU spent compiling the kernel walker: once, not per sample."""
        t = self._kernel_thread
        self._setup_cpu = max(self._setup_cpu, t.used_cpu_s() if t is not None else 0.0)
        return self._setup_cpu

    def add_process(self, pid: int) -> None:
        """A new process (fork, or exec of an existing pid): resolve it, reusing the
        parent's runtime when it is a fork of a tracked process."""
        with self._lock:
            old = self._walkers.get(pid)
        if old is not None:
            try:
                if runtime_for_child(old.rt, pid) is not None:
                    return  # same image still mapped: nothing changed
            except OSError:
                pass
        self._attach(pid)

    def remove_process(self, pid: int) -> None:
        with self._lock:
            self._walkers.pop(pid, None)
            self._failing.pop(pid, None)

    def poll(self, timeout_s: float) -> list[Event]:
        with self._cond:
            if not self._queue and not self._lost_pending:
                self._cond.wait(timeout_s)
            batch, self._queue = self._queue, []
            now = time.monotonic_ns()
            for reason, n in self._lost_pending.items():
                batch.append(Loss(self.name, now, n, reason))
            self._lost_pending = {}
        return batch

    def drain(self) -> list[Event]:
        """What is still queued, at the end of a capture (poll() may not have been
        woken for it)."""
        return self.poll(0)

    def stop(self) -> None:
        self._stop.set()
        self._stop_or_wake.set()
        t, self._thread = self._thread, None
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5)
        k, self._kernel_thread = self._kernel_thread, None
        if k is not None:
            k.join(timeout=60)  # a compile in progress cannot be cut short
        kw, self._kernel = self._kernel, None
        if kw is not None:
            kw.close()
        self._states.close()

    def stats(self) -> SourceStats:
        with self._lock:
            counts = dict(self._counts)
        events, lost = counts.pop("events"), counts.pop("lost")
        out: dict[str, float] = dict(counts)
        elapsed = (time.monotonic() - self._started_at) if self._started_at else 0.0
        out["samples_per_s"] = round(out["ticks"] / elapsed) if elapsed > 0 else 0
        out["level"] = self.level
        out["rate_hz"] = self.current_hz
        return SourceStats(events={self.name: events}, lost={self.name: lost}, counters=out)

    def notices(self) -> list[str]:
        with self._lock:
            out = list(self._notices)
            ticks, late = self._counts["ticks"], self._counts["late"]
            now = time.monotonic()
            expected = self._expected_ticks(now) if self._started_at else 0.0
        elapsed = (now - self._started_at) if self._started_at else 0.0
        if elapsed >= 1.0 and ticks < 0.9 * expected:
            out.append(f"python sampler: achieved {ticks / elapsed:.0f} Hz of the "
                       f"{expected / elapsed:.3g} Hz asked for ({late} late ticks skipped)")
        for w in self._snapshot():
            if w.tid_note:
                out.append(f"python sampler, pid {w.pid}: {w.tid_note}")
        return out

    # ---- the overhead budget's knob ------------------------------------------------

    def levels(self) -> int:
        return len(LEVEL_SCALE)

    def set_level(self, n: int) -> None:
        """Sample at a lower rate (n > 0) or the requested one (0). Each change of rate
        goes into the stream as a counter sample (RATE_TRACK, Hz), so the analysis
        knows each sample's weight; the first, at start, is the requested rate."""
        n = max(0, min(int(n), len(LEVEL_SCALE) - 1))
        with self._lock:
            if n == self.level:
                return
            now = time.monotonic()
            if self._started_at:
                self._expected_before += self.current_hz * (now - self._level_since)
            self._level_since = now
            self.level = n
            self.current_hz = self.rate_hz * LEVEL_SCALE[n]
        self._rate_event()
        self._stop_or_wake.set()

    def describe_level(self, n: int) -> str:
        return f"python sampler {self.rate_hz * LEVEL_SCALE[n]:g} Hz"

    def _rate_event(self) -> None:
        with self._cond:
            self._queue.append(CounterSample(RATE_TRACK, "Hz", time.monotonic_ns(), self.current_hz))
            self._cond.notify_all()

    def _expected_ticks(self, now: float) -> float:
        return self._expected_before + self.current_hz * (now - self._level_since)

    # ---- attaching ---------------------------------------------------------------------

    def _notice(self, msg: str) -> None:
        with self._lock:
            if msg not in self._notices:
                self._notices.append(msg)

    def _attach(self, pid: int) -> str:
        """Resolve pid's interpreter. Returns "ok", "denied" or "skipped" (noticed)."""
        rt: Runtime | None = None
        parent = self._parent_runtime(pid)
        try:
            if parent is not None:
                rt = runtime_for_child(parent, pid)
            mem = ProcessMemory(pid)
            if rt is None:
                rt = find_runtime(pid, mem)
            walker = Walker(rt, mem)
            walker.interpreters()  # proves we can read it
        except (NoPermission, PermissionError):
            self._notice(f"python sampler: pid {pid}: permission denied ({denied_why()})")
            return "denied"
        except NotPython as e:
            self._notice(f"python sampler: {e}; its Python frames are not sampled")
            return "skipped"
        except UnsupportedVersion as e:
            self._notice(f"python sampler: pid {pid}: {e}; its Python frames are not sampled")
            return "skipped"
        except (ProcessGone, FileNotFoundError, ProcessLookupError):
            return "skipped"  # exited before we got to it: nothing to say
        except (ReadError, OSError) as e:
            self._notice(f"python sampler: pid {pid}: cannot read its interpreter ({e})")
            return "skipped"
        with self._lock:
            self._walkers[pid] = walker
            self._failing.pop(pid, None)
        return "ok"

    def _parent_runtime(self, pid: int) -> Runtime | None:
        st = procfs.stat(pid)
        if st is None:
            return None
        with self._lock:
            w = self._walkers.get(st.ppid)
        return w.rt if w is not None else None

    def _snapshot(self) -> list[Walker]:
        with self._lock:
            return list(self._walkers.values())

    # ---- the loop ---------------------------------------------------------------------

    def _run(self) -> None:
        period = 1.0 / self.current_hz
        next_t = time.monotonic()
        while not self._stop.is_set():
            if period != 1.0 / self.current_hz:  # the budget changed the level
                next_t += 1.0 / self.current_hz - period
                period = 1.0 / self.current_hz
            now = time.monotonic()
            if now < next_t:
                self._stop_or_wake.wait(next_t - now)
                self._stop_or_wake.clear()
                continue
            self._tick()
            next_t += period
            behind = time.monotonic() - next_t
            if behind > period:  # cannot keep up: skip the ticks we missed, count them
                missed = int(behind / period)
                next_t += missed * period
                with self._lock:
                    self._counts["late"] += missed

    def _tick(self) -> None:
        samples: list[Event] = []
        lost: dict[str, int] = {}
        errors = stale = threads = reused = thinned = 0
        live: set[tuple[int, int]] = set()
        gone: list[int] = []
        states = self._states
        walkers = self._snapshot()
        kw = self._kernel
        covers = None
        if kw is not None:
            if kw.oncpu.rate_hz != int(self.current_hz):
                kw.oncpu.set_rate(int(self.current_hz))
            for pid in kw.pids() - {w.pid for w in walkers}:
                kw.remove(pid)
            covers = kw.covers
        for w in walkers:
            pid = w.pid
            try:
                covered = kw is not None and kw.add(w)
                stacks, wl = w.sample(self.retries, partial(states.probe, pid),
                                      covers if covered else None)
            except ProcessGone:
                gone.append(w.pid)
                continue
            except Exception as e:  # an unreadable interpreter: count, maybe re-resolve
                errors += 1
                lost[f"unreadable process ({type(e).__name__})"] = lost.get(
                    f"unreadable process ({type(e).__name__})", 0) + 1
                self._maybe_reresolve(w.pid)
                continue
            self._failing.pop(w.pid, None)
            for reason, n in wl.items():
                lost[reason] = lost.get(reason, 0) + n
                errors += n
            if covered and kw is not None:
                kw.cover(pid, [(s.tid, s.tstate) for s in stacks if s.error != "gone"])
            for s in stacks:
                threads += 1
                st = s.state if s.state is not None or s.error == "gone" else states.state(pid, s.tid)
                if st is None:
                    stale += 1  # thread exited, or a pre-fork thread state: not ours
                    continue
                live.add((w.pid, s.tid))
                if s.error == "thinned":
                    thinned += 1
                    continue
                if s.error == "on cpu":  # the kernel walks it while it runs
                    continue
                if s.frames is None:
                    continue
                reused += s.reused
                running = st == "R"
                samples.append(StackSample(w.pid, s.tid, s.ts, "running" if running else "idle",
                                           s.gil, s.frames))
        self._states.keep_only(live)
        if kw is not None:
            got = kw.collect({w.pid: w for w in walkers}, lost)
            kernel = len(got)
            samples += got
            for reason, n in lost.items():
                if reason.endswith("(kernel walk)") or reason.startswith("stack too deep for the kernel"):
                    errors += n
        else:
            kernel = 0
        with self._cond:
            c = self._counts
            c["ticks"] += 1
            c["errors"] += errors
            c["stale"] += stale
            c["reused"] += reused
            c["thinned"] += thinned
            c["kernel"] += kernel
            c["threads"] = threads
            c["lost"] += sum(lost.values())
            for reason, n in lost.items():
                self._lost_pending[reason] = self._lost_pending.get(reason, 0) + n
            room = MAX_QUEUED - len(self._queue)
            if len(samples) > room:
                self._lost_pending["buffer full"] = self._lost_pending.get("buffer full", 0) + len(samples) - room
                c["lost"] += len(samples) - room
                samples = samples[:max(room, 0)]
            c["events"] += len(samples)
            self._queue.extend(samples)
            for pid in gone:
                self._walkers.pop(pid, None)
            # The collector's pump wakes on its poll timeout anyway: waking it every
            # tick would cost a thread switch and a GIL hand-over per tick.
            if len(self._queue) >= WAKE_AT or lost:
                self._cond.notify_all()

    def _maybe_reresolve(self, pid: int) -> None:
        """Failing ticks in a row suggest an exec(): resolve the pid again (at most
        every 100 failures)."""
        n = self._failing[pid] = self._failing.get(pid, 0) + 1
        if n % 100 == 1 and n > 1 or n == 3:
            with self._lock:
                self._walkers.pop(pid, None)
            if self._attach(pid) != "ok":
                self._notice(f"python sampler: pid {pid} became unreadable; no longer sampled")


__all__ = ["PythonSampler", "ThreadStates", "dump", "python_version"]
