"""`gpuscope doctor`: one line per prerequisite, each failure with its fix."""

from __future__ import annotations

import ctypes
import os
import sys

from gpuscope.probes import procfs

CAP_SYS_PTRACE, CAP_PERFMON, CAP_BPF, CAP_SYS_ADMIN = 19, 38, 39, 21
NEEDED = {"CAP_BPF": CAP_BPF, "CAP_PERFMON": CAP_PERFMON, "CAP_SYS_PTRACE": CAP_SYS_PTRACE}


def effective_caps() -> int:
    return int(procfs.status("self").get("CapEff", "0"), 16)


def missing_capabilities() -> list[str]:
    caps = effective_caps()
    if caps >> CAP_SYS_ADMIN & 1:  # CAP_SYS_ADMIN implies BPF and perf on these kernels
        return [] if caps >> CAP_SYS_PTRACE & 1 else ["CAP_SYS_PTRACE"]
    return [name for name, bit in NEEDED.items() if not caps >> bit & 1]


def _bpf_syscall() -> tuple[bool, str]:
    libc = ctypes.CDLL(None, use_errno=True)
    # BPF_PROG_LOAD with an empty attr fails on its arguments (E2BIG, EFAULT,
    # EINVAL) when the syscall exists and is allowed; EPERM when forbidden,
    # ENOSYS when absent.
    SYS_bpf = 321
    libc.syscall(SYS_bpf, 5, None, 0)
    err = ctypes.get_errno()
    if err in (1, 38):
        return False, os.strerror(err)
    return True, "available"


def checks(pid: int | None):
    """Yield (ok, required, name, detail, fix)."""
    missing = missing_capabilities()
    yield (not missing, True, "privileges",
           "root" if os.geteuid() == 0 and not missing else ("missing " + ", ".join(missing)),
           "run as root (sudo), or grant CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE")
    ok, detail = _bpf_syscall()
    yield ok, True, "bpf syscall", detail, "needs a kernel with CONFIG_BPF_SYSCALL and the privileges above"
    tracefs = next((d for d in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
                    if os.path.exists(f"{d}/events")), None)
    yield (tracefs is not None, True, "tracefs", tracefs or "not mounted",
           "mount -t tracefs nodev /sys/kernel/tracing")
    base = tracefs or "/sys/kernel/tracing"
    for cat, ev in (("syscalls", "sys_enter_openat"), ("sched", "sched_switch"),
                    ("task", "task_newtask")):
        ok = os.path.exists(f"{base}/events/{cat}/{ev}")
        yield (ok, True, f"tracepoint {cat}:{ev}", "present" if ok else "missing",
               "needs CONFIG_FTRACE_SYSCALLS / tracepoints in the kernel")
    ok = os.path.exists("/sys/bus/event_source/devices/uprobe/type")
    yield ok, False, "uprobes", "present" if ok else "missing", "needs CONFIG_UPROBE_EVENTS (CUDA/NCCL probes)"
    kdir = f"/lib/modules/{os.uname().release}"
    hdr = next((f"{kdir}/{d}" for d in ("build", "source")
                if os.path.exists(f"{kdir}/{d}/include/linux/kconfig.h")), None)
    yield (hdr is not None, True, "kernel headers", os.path.realpath(hdr) if hdr else "none",
           "apt-get install linux-headers-$(uname -r), or run scripts/setup.sh to link the nearest ones")
    yield (*_bcc_compile(), "apt-get install python3-bpfcc libbpfcc; see the lines above")
    yield (*_nvml(), "install the NVIDIA driver (libnvidia-ml.so.1); without it GPU counters are skipped")
    if pid is not None:
        alive = procfs.alive(pid)
        yield alive, True, f"process {pid}", " ".join(procfs.cmdline(pid))[:80] if alive else "not running", "check the PID with ps -ef"
        if alive:
            yield from _target(pid)


def _bcc_compile():
    try:
        import bcc
    except ImportError:
        return False, True, "BCC compile", "python module bcc missing"
    try:
        from gpuscope.probes.bccload import compiled, release

        b = compiled(bcc, text="int f(void *ctx) { return 0; }")
        b.load_func("f", bcc.BPF.SOCKET_FILTER)
        release(b)
        return True, True, "BCC compile", "ok"
    except Exception as e:
        return False, True, "BCC compile", str(e).splitlines()[-1][:100]


def _nvml():
    try:
        import pynvml
        pynvml.nvmlInit()
        n = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
        return True, False, "NVML", f"{n} GPU(s)"
    except Exception as e:
        return False, False, "NVML", type(e).__name__


def _target(pid: int):
    libs = {os.path.basename(m.path) for m in procfs.maps(pid) if m.path}
    exe = os.path.basename(procfs.exe(pid) or "")
    py = next((lib for lib in libs if lib.startswith("libpython")), None)
    version = None
    try:
        from gpuscope.probes.sampler import python_version  # the frame sampler
        version = python_version(pid)
    except Exception:
        pass
    is_py = bool(version or py or exe.startswith("python"))
    yield (is_py, False, "Python", version or py or exe or "not Python",
           "the Python sampler needs a CPython 3.10-3.13 target; other probes still work")
    for label, prefix in (("CUDA runtime", "libcudart"), ("CUDA driver", "libcuda.so"),
                          ("NCCL", "libnccl")):
        found = sorted(lib for lib in libs if lib.startswith(prefix))
        yield (bool(found), False, label, ", ".join(found) or "not mapped (yet)",
               "probed when the job loads it (lazy CUDA init)")


def run_doctor(pid: int | None) -> int:
    fatal = False
    for ok, required, name, detail, fix in checks(pid):
        mark = "ok  " if ok else ("FAIL" if required else "warn")
        line = f"[{mark}] {name:<28} {detail}"
        if not ok:
            line += f"  -> {fix}"
            fatal |= required
        print(line)
    print("capture: " + ("impossible, fix the FAIL lines" if fatal else "possible"))
    sys.stdout.flush()
    return 1 if fatal else 0
