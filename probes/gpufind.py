"""Where a target's CUDA and NCCL libraries are before it loads them.

Uprobes are attached to a file (its inode), not to a process, and the kernel
puts them into every mapping of that file made later. So probes attached to
the libraries a target *can* load fire on its very first call into them, with
no race against the dlopen: `run` holds the child until they are on, `attach`
puts them on at start. Searched, by file name only (nothing is executed):
- the target interpreter's site-packages (a venv's, its base's, the user
  site, PYTHONPATH) -- where pip's nvidia-*-cu12 and torch wheels put them;
- the dynamic loader's paths: LD_LIBRARY_PATH, /etc/ld.so.cache, CUDA's
  usual install directories.
The interpreter comes from the command (`run`) or the process's argv[0],
executable, environment and mapped files (`attach`). A library somewhere else
is caught when it is opened (io.bpf.c wakes the collector) or mapped.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from collections.abc import Iterable

from . import procfs
from .gpulibs import CUDART, DRIVER, NCCL

_NAME = re.compile(r"^lib(cudart|cuda|nccl)(-[0-9a-f]{8})?\.so(\.\d+)*$")
_KINDS = {"cudart": CUDART, "cuda": DRIVER, "nccl": NCCL}
_CACHE_PATH = re.compile(rb"/[^\0]*/lib(?:cudart|cuda|nccl)[^\0/]*\.so[^\0/]*")
CUDA_DIRS = ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib",
             "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib/wsl/lib")
MAX_PER_DIR = 4096   # entries looked at in one directory (a huge site-packages is cut short)


def kind_by_name(path: str) -> str | None:
    """CUDART, DRIVER or NCCL from a library's file name (libcudart.so.12,
    torch's hashed libcudart-1a2b3c4d.so.12), else None."""
    m = _NAME.match(os.path.basename(path))
    return _KINDS[m.group(1)] if m else None


def _listdir(d: str) -> list[str]:
    try:
        with os.scandir(d) as it:
            return [e.name for _, e in zip(range(MAX_PER_DIR), it, strict=False)]
    except OSError:
        return []


def libs_in(d: str) -> list[str]:
    return [os.path.join(d, n) for n in _listdir(d) if kind_by_name(n)]


def libs_in_site(site: str) -> list[str]:
    """GPU libraries of the packages in a site-packages directory: in a
    package, its lib/ or a subpackage's lib/ (nvidia/cuda_runtime/lib,
    torch/lib), or an auditwheel .libs directory."""
    out = libs_in(site)
    for name in _listdir(site):
        d = os.path.join(site, name)
        if not os.path.isdir(d) or name.endswith((".dist-info", ".egg-info")) or name == "__pycache__":
            continue
        out += libs_in(d) + libs_in(os.path.join(d, "lib"))
        for sub in _listdir(d):
            out += libs_in(os.path.join(d, sub, "lib"))
    return out


def interpreter(argv0: str, path_env: str | None, cwd: str | None = None) -> str | None:
    """The program argv0 names, as exec would find it; for a script with a
    #! line (torchrun, a console script), its interpreter."""
    exe: str | None
    if "/" in argv0:
        exe = argv0 if os.path.isabs(argv0) else os.path.join(cwd or os.getcwd(), argv0)
    else:
        exe = shutil.which(argv0, path=path_env)
    if not exe or not os.path.isfile(exe):
        return None
    try:
        with open(exe, "rb") as f:
            head = f.read(256)
    except OSError:
        return exe
    if head.startswith(b"#!"):
        words = head[2:].split(b"\n", 1)[0].split()
        if words:
            first = words[0].decode("utf-8", "replace")
            if os.path.basename(first) == "env" and len(words) > 1:
                return interpreter(words[1].decode("utf-8", "replace"), path_env, cwd)
            return first
    return exe


def site_dirs(exe: str) -> list[str]:
    """site-packages directories of the Python installation exe belongs to
    (a venv's, and its base's when the venv includes system site-packages)."""
    prefixes = [os.path.dirname(os.path.dirname(exe))]
    real = os.path.realpath(exe)
    cfg = os.path.join(prefixes[0], "pyvenv.cfg")
    if os.path.isfile(cfg):
        text = procfs.read_text(cfg) or ""
        if re.search(r"include-system-site-packages\s*=\s*true", text, re.I):
            prefixes.append(os.path.dirname(os.path.dirname(real)))
    else:
        prefixes.append(os.path.dirname(os.path.dirname(real)))
    out: list[str] = []
    for p in dict.fromkeys(prefixes):
        for pattern in ("lib/python3*/site-packages", "lib/python3*/dist-packages",
                        "lib/python3/dist-packages", "local/lib/python3*/dist-packages"):
            out += sorted(glob.glob(os.path.join(p, pattern)))
    return out


def loader_libs(root: str, ld_library_path: str | None) -> list[str]:
    """GPU libraries on the loader's paths, as the target sees them."""
    out: list[str] = []
    for d in (ld_library_path or "").split(":"):
        if d:
            out += libs_in(root + d)
    data = procfs.read_bytes(root + "/etc/ld.so.cache") or b""
    out += [root + m.decode("utf-8", "replace") for m in _CACHE_PATH.findall(data)]
    for d in CUDA_DIRS:
        out += libs_in(root + d)
    return out


def _environ(pid: int) -> dict[str, str]:
    raw = procfs.read_bytes(f"/proc/{pid}/environ") or b""
    env = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            env[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
    return env


def _root(pid: int | None) -> str:
    """Prefix reaching the target's files from here ("" in our mount namespace)."""
    if pid is None:
        return ""
    try:
        if os.stat(f"/proc/{pid}/root").st_ino == os.stat("/").st_ino:
            return ""
    except OSError:
        return ""
    return f"/proc/{pid}/root"


def candidates(pid: int | None = None, command: Iterable[str] = (),
               env: dict[str, str] | None = None) -> dict[str, str]:
    """path (openable from here) -> kind of every GPU library the target can
    load: for `run`, the command about to be exec'ed with env; for `attach`,
    process pid."""
    command = list(command)
    root = _root(pid) if not command else ""
    if env is None:
        env = _environ(pid) if pid is not None and not command else dict(os.environ)
    exes: list[str] = []
    sites: list[str] = []
    if command:
        exe = interpreter(command[0], env.get("PATH"))
        exes += [exe] if exe else []
    elif pid is not None:
        argv = procfs.cmdline(pid)
        if argv:
            exe = interpreter(argv[0], env.get("PATH"), procfs.cwd(pid))
            exes += [exe] if exe and not root else []
        real = procfs.exe(pid)
        exes += [root + real] if real else []
        for m in procfs.maps(pid):   # site-packages a running job already imports from
            for marker in ("/site-packages/", "/dist-packages/"):
                i = m.path.find(marker)
                if i > 0:
                    sites.append(root + m.path[:i + len(marker) - 1])
    for var in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        if env.get(var):
            exes.append(root + env[var] + "/bin/python")
    for exe in dict.fromkeys(exes):
        sites += site_dirs(exe)
    sites += [root + d for d in env.get("PYTHONPATH", "").split(":") if d]
    home = env.get("HOME")
    if home:
        sites += glob.glob(root + home + "/.local/lib/python3*/site-packages")
    found: list[str] = []
    for site in dict.fromkeys(sites):
        found += libs_in_site(site)
    found += loader_libs(root, env.get("LD_LIBRARY_PATH"))
    out: dict[str, str] = {}
    for path in found:
        kind = kind_by_name(path)
        if kind and os.path.isfile(path):
            out.setdefault(path, kind)
    return out
