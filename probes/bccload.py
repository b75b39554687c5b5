"""BCC as gpuscope uses it: one compile at a time, its Python module found or
explained, a BPF object torn down exactly once, and what to do when loading
fails. Every BPF() of gpuscope goes through here."""

from __future__ import annotations

import errno
import os
import threading

from .source import SourceError

# BCC's compiler (LLVM/clang inside libbcc) is not safe to run in two threads at
# once: every BPF() of this process compiles under this lock.
COMPILE_LOCK = threading.Lock()


def compiled(bcc, **kw):
    """bcc.BPF(**kw), under the lock (the memory it leaves is given back once
    every source has compiled: memtrim, from Pipeline.attach)."""
    with COMPILE_LOCK:
        return bcc.BPF(**kw)


def release(bpf) -> None:
    """Frees a BPF object's programs and its LLVM module exactly once.

    BCC registers cleanup() with atexit and only then checks-and-clears its
    module pointer, so a detach still running in a thread when the interpreter
    exits destroyed the same module twice (heap corruption, SIGSEGV/SIGABRT on
    the sidecar's SIGTERM). Teardown also goes through LLVM: under the lock."""
    import atexit

    atexit.unregister(bpf.cleanup)
    with COMPILE_LOCK:
        bpf.cleanup()


def bcc_module():
    try:
        import bcc  # Debian's python3-bpfcc, linked into the venv by scripts/setup.sh
    except ImportError as e:
        raise SourceError(
            "BCC's Python module is missing: apt-get install python3-bpfcc "
            "(then run `make` again so .venv can see it)") from e
    return bcc


def tracepoint_exists(category: str, event: str) -> bool:
    for root in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if os.path.exists(f"{root}/events/{category}/{event}"):
            return True
    return False


def advice_for(err: BaseException) -> str:
    if isinstance(err, PermissionError) or getattr(err, "errno", None) in (errno.EPERM, errno.EACCES):
        return ("permission denied loading eBPF programs: run as root, or grant "
                "CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE")
    text = str(err)
    if "kernel headers" in text or "kconfig.h" in text:
        return ("BCC cannot find kernel headers: apt-get install linux-headers-$(uname -r) "
                "(or run scripts/setup.sh, which links the nearest Debian headers)")
    return f"could not load eBPF programs: {text}"
