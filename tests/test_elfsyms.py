"""elfsyms on real ELF files, checked against the dynamic loader (dlsym, the
addresses a running process really has) and against pyelftools' own symbol
iteration: libcudart.so.12 from its wheel, libc, the python binary, and a
library and an executable built here with local, hidden and global symbols."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from gpuscope.probes import elfsyms, procfs

CUDART = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" \
    / "site-packages" / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so.12"

SOURCE = r"""
#include <stdio.h>
static int local_fn(int x) { return x * 3; }
__attribute__((visibility("hidden"))) int hidden_fn(int x) { return x + 1; }
int exported_fn(int x) { return local_fn(x) + hidden_fn(x); }
int exported_obj[4] = {1, 2, 3, 4};
void *addr_local_fn(void) { return (void *)&local_fn; }
void *addr_hidden_fn(void) { return (void *)&hidden_fn; }
#ifdef MAIN
int main(void) {
    printf("{\"exported_fn\": %lu, \"exported_obj\": %lu, \"local_fn\": %lu, \"main\": %lu}\n",
           (unsigned long)&exported_fn, (unsigned long)&exported_obj,
           (unsigned long)addr_local_fn(), (unsigned long)&main);
    fflush(stdout);
    return getchar() == EOF;
}
#endif
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("elfsyms")
    (d / "syms.c").write_text(SOURCE)
    lib, exe = d / "libsyms.so", d / "syms"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O0", "-o", str(lib), str(d / "syms.c")], check=True)
    subprocess.run(["gcc", "-O0", "-DMAIN", "-o", str(exe), str(d / "syms.c")], check=True)
    return {"lib": str(lib), "exe": str(exe), "dir": str(d)}


def _mapping(pid: int, path: str, addr: int | None = None) -> procfs.Mapping:
    """The mapping of path holding addr (or its first one, offset 0)."""
    ms = procfs.file_maps(pid)[os.path.realpath(path)]
    if addr is None:
        return next(m for m in ms if m.offset == 0)
    return next(m for m in ms if m.start <= addr < m.end)


def _base(t: elfsyms.ElfSymbols, pid: int, path: str) -> int:
    return 0 if t.e_type == "ET_EXEC" else _mapping(pid, path).start - t.load_vaddr


def _by_pyelftools(path: str) -> tuple[dict[str, int], set[tuple[int, str]]]:
    """(default-version dynsym name -> value, {(value, name)} of functions) the slow way."""
    exported: dict[str, int] = {}
    funcs: set[tuple[int, str]] = set()
    with open(path, "rb") as f:
        elf = ELFFile(f)
        versym = elf.get_section_by_name(".gnu.version")
        for secname in (".dynsym", ".symtab"):
            sec = elf.get_section_by_name(secname)
            for i, sym in enumerate(sec.iter_symbols() if sec is not None else ()):
                kind = sym["st_info"]["type"]
                if sym["st_shndx"] == "SHN_UNDEF" or not sym["st_value"] or \
                        kind not in ("STT_FUNC", "STT_LOOS", "STT_GNU_IFUNC", "STT_OBJECT"):
                    continue
                if kind != "STT_OBJECT":
                    funcs.add((sym["st_value"], sym.name))
                if secname == ".dynsym":
                    ndx = versym.get_symbol(i)["ndx"] if versym is not None else 0
                    if isinstance(ndx, int) and ndx & 0x8000:  # not the default version
                        exported.setdefault(sym.name, sym["st_value"])
                    else:
                        exported[sym.name] = sym["st_value"]
    return exported, funcs


def _libc() -> str:
    return next(m.path for m in procfs.maps(os.getpid()) if "/libc.so" in m.path)


@pytest.mark.parametrize("which", ["cudart", "libc", "python", "built"])
def test_real_libraries_agree_with_pyelftools(which, built):
    if which == "cudart" and not CUDART.exists():
        pytest.skip(f"{CUDART} is missing: pip install the test extras (nvidia-*-cu12)")
    path = {"cudart": str(CUDART), "libc": _libc(), "python": os.path.realpath(sys.executable),
            "built": built["exe"]}[which]
    t = elfsyms.symbols(path)
    assert t is not None
    exported, funcs = _by_pyelftools(path)
    assert t.exported == exported
    assert set(zip(t.addrs, t.names, strict=True)) == funcs
    assert t.addrs == sorted(t.addrs)


def test_addresses_match_the_dynamic_loader():
    """Symbol value + load bias == where dlsym and the interpreter put things."""
    if not CUDART.exists():
        pytest.skip(f"{CUDART} is missing: pip install the test extras (nvidia-*-cu12)")
    pid = os.getpid()
    cudart = ctypes.CDLL(str(CUDART))
    t = elfsyms.symbols(str(CUDART))
    base = _base(t, pid, str(CUDART))
    for name in ("cudaLaunchKernel", "cudaMalloc", "cudaStreamSynchronize"):
        addr = ctypes.cast(getattr(cudart, name), ctypes.c_void_p).value
        assert t.exported[name] + base == addr
        m = _mapping(pid, str(CUDART), addr)
        assert t.lookup(t.vaddr(addr + 1, m.start, m.offset)) == name

    libc_path = _libc()
    libc = ctypes.CDLL(libc_path)
    t = elfsyms.symbols(libc_path)
    base = _base(t, pid, libc_path)
    for name in ("malloc", "getpid", "realpath", "posix_spawn"):  # the last two: two versions
        assert t.exported[name] + base == ctypes.cast(getattr(libc, name), ctypes.c_void_p).value
    assert "strlen" in t.exported and "strlen" in t.names  # an IFUNC

    exe = os.path.realpath(sys.executable)
    t = elfsyms.symbols(exe)
    base = _base(t, pid, exe)
    assert t.address("PyCode_Type") + base == id(types.CodeType)
    assert t.address("PyUnicode_Type") + base == id(str)
    runtime = ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, "_PyRuntime"))
    assert t.address("_PyRuntime") + base == runtime


def test_local_hidden_and_global_symbols_of_a_library(built):
    pid = os.getpid()
    lib = ctypes.CDLL(built["lib"])
    t = elfsyms.symbols(built["lib"])
    base = _base(t, pid, built["lib"])
    fn = ctypes.cast(lib.exported_fn, ctypes.c_void_p).value
    obj = ctypes.addressof(ctypes.c_int.in_dll(lib, "exported_obj"))
    assert (t.exported["exported_fn"] + base, t.exported["exported_obj"] + base) == (fn, obj)
    for getter, name in (("addr_local_fn", "local_fn"), ("addr_hidden_fn", "hidden_fn")):
        getattr(lib, getter).restype = ctypes.c_void_p
        addr = getattr(lib, getter)()
        m = _mapping(pid, built["lib"], addr)
        assert t.lookup(t.vaddr(addr, m.start, m.offset)) == name   # named from .symtab
        assert t.address(name) is None  # local after linking: nothing to attach to by name
    m = _mapping(pid, built["lib"], obj)
    assert t.lookup(t.vaddr(obj, m.start, m.offset)) is None  # data is not a function


def test_globals_of_an_executable_are_only_in_its_symtab(built):
    p = subprocess.Popen([built["exe"]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        where = json.loads(p.stdout.readline())
        t = elfsyms.symbols(built["exe"])
        assert "exported_fn" not in t.exported and "main" not in t.exported
        base = _base(t, p.pid, built["exe"])
        for name in ("exported_fn", "exported_obj", "main"):
            assert t.address(name) + base == where[name], name
        m = _mapping(p.pid, built["exe"], where["local_fn"])
        assert t.lookup(t.vaddr(where["local_fn"], m.start, m.offset)) == "local_fn"
    finally:
        p.stdin.close()
        p.wait()


def test_one_cache_by_file_identity(built, tmp_path):
    lib = built["lib"]
    t = elfsyms.symbols(lib)
    assert elfsyms.symbols(lib) is t
    assert elfsyms.symbols(f"/proc/self/root{lib}") is t  # another path, the same file
    copy = tmp_path / "copy.so"
    shutil.copy(lib, copy)
    c = elfsyms.symbols(str(copy))
    assert c is not t and c.exported == t.exported
    st = copy.stat()
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "rebuilt"
    assert elfsyms.symbols(str(copy)) is not c
    for i in range(elfsyms.MAX_FILES + 3):
        shutil.copy(lib, tmp_path / f"{i}.so")
        assert elfsyms.symbols(str(tmp_path / f"{i}.so")) is not None
    assert len(elfsyms._files) <= elfsyms.MAX_FILES
    assert b"\0exported_fn\0" in elfsyms.dynamic_strings(lib)


def test_what_is_not_an_elf_file_is_none(built, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an ELF\n")
    truncated = tmp_path / "truncated.so"
    truncated.write_bytes(Path(built["lib"]).read_bytes()[:200])
    for path in (text, truncated, tmp_path / "missing.so", tmp_path):
        assert elfsyms.symbols(str(path)) is None
        assert elfsyms.dynamic_strings(str(path)) == b""


def test_a_32_bit_library(tmp_path):
    src, lib = tmp_path / "a32.c", tmp_path / "a32.so"
    src.write_text("int f32(int x) { return x + 1; }\nint obj32 = 3;\n"
                   "static int s32(void) { return 2; }\nint g(void) { return s32(); }\n")
    r = subprocess.run(["gcc", "-m32", "-shared", "-nostdlib", "-fPIC", "-o", str(lib), str(src)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"gcc cannot build 32-bit code here: {r.stderr.strip()[:200]}")
    t = elfsyms.symbols(str(lib))
    exported, funcs = _by_pyelftools(str(lib))
    assert t is not None and set(t.exported) == {"f32", "g", "obj32"}
    assert t.exported == exported and set(zip(t.addrs, t.names, strict=True)) == funcs
    assert "s32" in t.names


def test_a_slow_file_does_not_hold_up_the_others(built, tmp_path):
    """While one file is being read (here from a FUSE mount taking 2 s per read, as
    libtorch_cuda.so takes seconds to parse), other files are served."""
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    shutil.copy(built["lib"], src / "slow.so")
    fs = subprocess.Popen([sys.executable, str(Path(__file__).parent.parent / "samples" / "slowfs.py"),
                           str(src), str(mnt), "--latency-ms", "2000"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not (mnt / "slow.so").exists():
            assert time.monotonic() < deadline, "slowfs did not mount"
            time.sleep(0.05)
        got: dict[str, elfsyms.ElfSymbols | None] = {}
        slow = threading.Thread(target=lambda: got.update(slow=elfsyms.symbols(str(mnt / "slow.so"))))
        slow.start()
        while not elfsyms._reading:  # the slow read has begun
            time.sleep(0.01)
        shutil.copy(built["lib"], tmp_path / "fast.so")
        fast = elfsyms.symbols(str(tmp_path / "fast.so"))
        assert fast is not None and slow.is_alive()
        slow.join(120)
        assert got["slow"] is not None and got["slow"].exported == fast.exported
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        fs.kill()
        fs.wait()


def test_find_functions_agrees_with_the_full_table():
    """The few-symbols reader (PyTorch's step markers in libtorch_cpu, 600k symbols):
    the same addresses as the whole table, local symbols included, clones (.cold) skipped."""
    import torch

    from gpuscope.probes import torchops

    lib = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    prefixes = [torchops.ENTER_PREFIX, torchops.EXIT_PREFIX, torchops.ENGINE_PREFIX, "_ZN_no_such_name"]
    got = elfsyms.find_functions(lib, prefixes)
    t = elfsyms.symbols(lib)
    assert t is not None and set(got) == set(prefixes[:3])
    for p, addr in got.items():
        name = t.lookup(addr)
        assert name is not None and name.startswith(p) and "." not in name, (p, name)
    assert elfsyms.find_functions(__file__, prefixes) == {}  # not an ELF file
