"""Uprobes on the GPU libraries, put on before the target's first call where
that can be known, and the honest account of where it could not.

Each (library, symbol) gets one uprobe + uretprobe for all processes (pid -1;
the BPF side filters on the tracked map), once per file (inode: the same
library reached through a symlink or /proc/PID/root is one file). A library
is probed, in order of preference:
- "searched": found by gpufind before the target mapped it (its interpreter's
  site-packages, the loader's paths). Nothing is missed: the kernel puts the
  probes into the mapping as it is made.
- "mapped at start": already mapped when gpuscope attached.
- "on open": the kernel saw the target open it (io.bpf.c wakes the collector
  at once); calls made between its mapping and the probes going live are not
  seen. That window is measured from the mmap the kernel saw (a per-process
  figure, `windows`) and reported; the calls in it cannot be counted, as
  nothing observes them.
- "maps poll": found in /proc/PID/maps (a library opened unseen); the window
  is the mmap's, if the IO probe saw it, else up to one poll (MAPS_POLL_S).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

from . import gpufind, uprobes
from .elfsyms import symbols
from .events import CUDA, Event, Instant
from .gpulibs import MappedLib, classify, gpu_libraries, host_path

SEARCHED, AT_START, ON_OPEN, MAPS_POLL = "searched", "mapped at start", "on open", "maps poll"
# The maps poll is only the fallback for an open the IO probe missed: every 2 s,
# not every tick, as reading a torch process's maps costs ~0.7 ms per process.
MAPS_POLL_S = 2.0


def identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class LibraryAttacher:
    def __init__(self, kinds: dict[str, dict[str, str]], required: dict[str, set[str]],
                 launch: Iterable[str] = ()):
        self.kinds = kinds          # kind -> {symbol: program suffix}
        self.required = required    # kind -> symbols whose absence is worth a notice
        self.launch = list(launch)  # `run`'s command: search its interpreter, not the held child
        self.attached: dict[str, MappedLib] = {}   # open_path -> lib
        self.how: dict[str, str] = {}              # open_path -> SEARCHED, ON_OPEN, ...
        self.live_ns: dict[str, int] = {}          # open_path -> when its probes were on
        self.mapped: set[str] = set()              # open_paths some target process mapped
        # (pid, open_path) -> ns its code was mapped before the probes were on (0: none)
        self.windows: dict[tuple[int, str], int] = {}
        self.probes = 0
        self.bpf = None
        self._files: dict[tuple[int, int], str] = {}   # file identity -> open_path attached
        self._seen: set[str] = set()               # target paths looked at in maps
        self._notices: list[str] = []
        self._events: list[Event] = []             # "uprobes on" instants not yet handed out
        self._polled = 0.0                         # monotonic s of the last maps read

    # -- when --------------------------------------------------------------
    def start(self, bpf, pids: list[int]) -> None:
        """Probe what the target can load, then what it has loaded."""
        self.bpf = bpf
        # Programs loaded (verified) now, not at the first attach: a library
        # probed on its open has the loader racing the attach.
        for prog in {p for syms in self.kinds.values() for p in syms.values()}:
            for side in ("enter", "leave"):
                try:
                    uprobes.load(bpf, f"{side}_{prog}")
                except Exception:  # noqa: BLE001 - BCC raises bare Exception; attach says why
                    pass
        found: dict[str, str] = {}
        if self.launch:
            found.update(gpufind.candidates(command=self.launch))
        for pid in pids if not self.launch else ():
            found.update(gpufind.candidates(pid))
        for path, kind in found.items():
            if kind in self.kinds:
                self._attach(bpf, MappedLib(kind, path, path), SEARCHED)
        self.scan(bpf, pids, AT_START)

    def scan(self, bpf, pids: list[int], how: str = MAPS_POLL) -> list[MappedLib]:
        """Libraries in the processes' maps (at start, then every MAPS_POLL_S as a fallback)."""
        now = time.monotonic()
        if how == MAPS_POLL and now - self._polled < MAPS_POLL_S:
            return []
        self._polled = now
        new = []
        for lib in gpu_libraries(pids, self._seen):
            self._seen.add(lib.path)
            if lib.kind not in self.kinds:
                continue
            known = self._known(lib.open_path)
            if known is not None:
                self.mapped.add(known)
                continue
            new.append(lib)
            self._attach(bpf, lib, how)
            self.mapped.add(lib.open_path)
        return new

    def take_events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def on_open(self, pid: int, path: str, out: list[Event]) -> None:
        """The target opened a file named like a GPU library (the IO probe's
        openat, decoded as soon as the kernel woke the collector)."""
        if self.bpf is None:
            return
        open_path = host_path(pid, path)
        kind = gpufind.kind_by_name(path) or classify(open_path)
        if kind in self.kinds and self._known(open_path) is None:
            self._attach(self.bpf, MappedLib(kind, path, open_path), ON_OPEN)
            out += self.take_events()

    def on_map(self, pid: int, path: str, ts: int, out: list[Event]) -> None:
        """The target mapped that file at ts (its first mapping counts)."""
        known = self._known(host_path(pid, path))
        if known is None:
            return
        self.mapped.add(known)
        key = (pid, known)
        if key not in self.windows:
            gap = self.windows[key] = max(0, self.live_ns[known] - ts)
            out.append(Instant(CUDA, "library mapped", pid, 0, ts,
                               {"library": path, "found": self.how[known],
                                "unprobed_ms": round(gap / 1e6, 3)}))

    def _known(self, open_path: str) -> str | None:
        if open_path in self.attached:
            return open_path
        ident = identity(open_path)
        return self._files.get(ident) if ident is not None else None

    # -- how ---------------------------------------------------------------
    def _attach(self, bpf, lib: MappedLib, how: str) -> None:
        ident = identity(lib.open_path)
        if ident is None or ident in self._files:
            return
        self._files[ident] = lib.open_path
        self.attached[lib.open_path] = lib
        self.how[lib.open_path] = how
        table = symbols(lib.open_path)
        exported = table.exported if table is not None else {}
        done: set[int] = set()
        for sym, prog in self.kinds[lib.kind].items():
            addr = exported.get(sym)
            if addr is None:
                if sym in self.required.get(lib.kind, ()):
                    self._notices.append(f"{sym} is not exported by {lib.path}: not probed")
                continue
            if addr in done:  # an alias of a symbol already probed
                continue
            try:   # by address: no symbol lookup in BCC (0.85 -> 0.05 ms each)
                uprobes.attach(bpf, lib.open_path, addr, f"enter_{prog}")
                uprobes.attach(bpf, lib.open_path, addr, f"leave_{prog}", ret=True)
            except Exception as e:  # BCC raises bare Exception
                self._notices.append(f"attach uprobe {sym} in {lib.path}: {e}")
                continue
            done.add(addr)
            self.probes += 1
        now = self.live_ns[lib.open_path] = time.monotonic_ns()
        self._events.append(Instant(CUDA, "uprobes on", 0, 0, now,
                                    {"library": lib.path, "kind": lib.kind, "found": how,
                                     "functions": len(done)}))

    def libraries(self) -> list[dict]:
        """Each probed library the target mapped: how it was found, and per
        process the time its code was mapped before the probes were on."""
        out = []
        for path in sorted(self.mapped):
            lib = self.attached[path]
            win = {pid: ns for (pid, p), ns in self.windows.items() if p == path}
            out.append({"path": lib.path, "kind": lib.kind, "found": self.how[path],
                        "unprobed_ms": {str(pid): round(ns / 1e6, 3) for pid, ns in sorted(win.items())}})
        return out

    def notices(self) -> list[str]:
        out = list(self._notices)
        for lib in self.libraries():
            if lib["found"] in (SEARCHED, AT_START):
                continue
            gaps = {pid: ms for pid, ms in lib["unprobed_ms"].items() if ms > 0}
            if gaps:
                worst = max(gaps.values())
                out.append(f"{lib['path']} was probed {lib['found']}, up to {worst:.1f} ms after "
                           f"{len(gaps)} process(es) mapped it: calls made in that window are not "
                           "traced (they cannot be counted)")
            elif not lib["unprobed_ms"]:
                out.append(f"{lib['path']} was probed {lib['found']}; its mapping was not seen, so "
                           f"calls made up to {MAPS_POLL_S:g} s before may be missing (they cannot be "
                           "counted)")
        return out


class LibraryProbe:
    """The part of a library's Probe (CUDA, NCCL) that hands its library's life to
    its LibraryAttacher (self.libs): attach, the kernel's open/map of the file,
    and what the first attach found."""

    libs: LibraryAttacher
    ring: str
    tracked: Callable[[], list[int]]

    def attach(self, bpf) -> None:
        self.table = bpf[self.ring]
        self.libs.start(bpf, self.tracked())

    def on_library_open(self, pid: int, path: str, out: list[Event]) -> None:
        self.libs.on_open(pid, path, out)

    def on_library_mapped(self, pid: int, path: str, ts: int, out: list[Event]) -> None:
        self.libs.on_map(pid, path, ts, out)

    def initial_events(self, pids: list[int], out: list[Event]) -> None:
        out += self.libs.take_events()
