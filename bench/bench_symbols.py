"""Cost of reading symbols, demangling and parsing /proc, measured side by side
in one run (prints, asserts nothing).

  ELF symbols   elfsyms.symbols (struct over the tables) vs pyelftools' own
                iter_symbols over .dynsym + .symtab, cold (cache cleared), on
                real files: libcudart.so.12, libnccl.so.2, libc, the python
                binary, torch's libraries when installed
  demangling    __cxa_demangle in-process (the demangle module, cache cleared)
                vs one long-lived c++filt, one name per round trip (what
                gpuscope did before), on every mangled name of libnccl.so.2
  /proc         procfs.maps / procfs.stat of this process vs only reading the file

    .venv/bin/python bench/bench_symbols.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from elftools.elf.elffile import ELFFile

from gpuscope.probes import demangle as demangle_mod
from gpuscope.probes import elfsyms, procfs

SITE = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
FILES = [SITE / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so.12",
         SITE / "nvidia" / "nccl" / "lib" / "libnccl.so.2",
         SITE / "torch" / "lib" / "libtorch_python.so",
         SITE / "torch" / "lib" / "libtorch_cpu.so"]
PYELFTOOLS_MAX = 100_000  # entries; beyond this pyelftools takes minutes


def _pyelftools(path: str) -> int:
    n = 0
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for name in (".dynsym", ".symtab"):
            sec = elf.get_section_by_name(name)
            for sym in sec.iter_symbols() if sec is not None else ():
                n += bool(sym.name and sym["st_value"])
    return n


def _entries(path: str) -> int:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        return sum(s["sh_size"] // max(s["sh_entsize"], 1) for s in elf.iter_sections()
                   if s["sh_type"] in ("SHT_SYMTAB", "SHT_DYNSYM"))


def _best(fn, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_elf(rounds: int) -> None:
    libc = next(m.path for m in procfs.maps(os.getpid()) if "/libc.so" in m.path)
    paths = [str(p) for p in FILES if p.exists()] + [libc, os.path.realpath(sys.executable)]
    print(f"ELF symbols, cold (best of {rounds})")
    for path in paths:
        entries = _entries(path)

        def cold(path=path):
            elfsyms._files.clear()
            elfsyms.symbols(path)
        ours = _best(cold, rounds)
        line = f"  {os.path.basename(path):24} {entries:>8} entries  elfsyms {ours * 1e3:8.1f} ms"
        if entries <= PYELFTOOLS_MAX:
            theirs = _best(lambda path=path: _pyelftools(path), rounds)
            line += f"  pyelftools {theirs * 1e3:8.1f} ms  ratio {theirs / ours:5.1f}x"
        else:
            line += "  pyelftools skipped (too slow)"
        print(line)
    t = elfsyms.symbols(paths[0])
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        elfsyms.symbols(paths[0])
    print(f"  cached symbols(path): {(time.perf_counter() - start) / n * 1e6:.1f} us "
          f"(open + fstat); lookup: ", end="")
    addrs = t.addrs[:: max(1, len(t.addrs) // 1000)] * 20
    start = time.perf_counter()
    for a in addrs:
        t.lookup(a + 1)
    print(f"{(time.perf_counter() - start) / len(addrs) * 1e6:.2f} us")


def bench_demangle(rounds: int) -> None:
    nccl = FILES[1]
    if not nccl.exists() or shutil.which("c++filt") is None:
        print("demangling: needs libnccl.so.2 and c++filt, skipped")
        return
    t = elfsyms.symbols(str(nccl))
    names = sorted({n for n in t.names if n.startswith("_Z")})

    def ours():
        demangle_mod.demangle.cache_clear()
        for n in names:
            demangle_mod.demangle(n)

    proc = subprocess.Popen(["c++filt"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, bufsize=1)

    def theirs():
        for n in names:
            proc.stdin.write(n + "\n")
            proc.stdin.flush()
            proc.stdout.readline()

    a, b = _best(ours, rounds), _best(theirs, rounds)
    proc.stdin.close()
    proc.wait()
    k = len(names)
    start = time.perf_counter()
    for n in names:
        demangle_mod.demangle(n)
    cached = (time.perf_counter() - start) / k
    print(f"demangling {k} names of libnccl.so.2 (best of {rounds}): __cxa_demangle "
          f"{a / k * 1e6:.1f} us/name, c++filt round trip {b / k * 1e6:.1f} us/name, "
          f"ratio {b / a:.1f}x; cached {cached * 1e6:.2f} us/name")


def bench_proc(rounds: int) -> None:
    pid = os.getpid()
    lines = len(procfs.maps(pid))
    n = 300

    def parse():
        for _ in range(n):
            procfs.maps(pid)

    def read():
        for _ in range(n):
            procfs.read_text(f"/proc/{pid}/maps")

    a, b = _best(parse, rounds), _best(read, rounds)
    print(f"/proc/{pid}/maps ({lines} lines): procfs.maps {a / n * 1e6:.0f} us, "
          f"read only {b / n * 1e6:.0f} us, parse = {(a - b) / n / lines * 1e6:.2f} us/line")
    m = 20_000

    def stat():
        for _ in range(m):
            procfs.stat(pid)

    def raw():
        for _ in range(m):
            procfs.read_bytes(f"/proc/{pid}/stat")

    a, b = _best(stat, rounds), _best(raw, rounds)
    print(f"/proc/{pid}/stat: procfs.stat {a / m * 1e6:.1f} us, read only {b / m * 1e6:.1f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    try:
        import torch  # noqa: F401  (a realistic maps: a few hundred mappings)
    except ImportError:
        pass
    bench_elf(args.rounds)
    bench_demangle(args.rounds)
    bench_proc(args.rounds)


if __name__ == "__main__":
    main()
