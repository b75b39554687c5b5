"""Uprobes as BPF links (uprobe_multi, Linux >= 6.6), BCC's perf-event uprobes
where the kernel has no such link.

Why: BCC makes each uprobe a perf event, and the kernel tears a perf-event
uprobe down under its global event_mutex, waiting out an RCU grace period
inside it, so detaching is serial whatever the threads: the sidecar's 222
CUDA uprobes took 21.9 s to detach here (its "detached ... in N s" log line),
past Kubernetes' 30 s grace period once the rest of the stop is added. A
uprobe_multi link is released without that mutex: the same detach took 3.7 s,
0.4 s of it the links (closed in parallel). The programs and what they see are
the same; only the attachment differs.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
import weakref
from concurrent.futures import ThreadPoolExecutor

from .elfsyms import load_segments, offset_in

BPF_PROG_TYPE_KPROBE = 2      # uprobes are kprobe-type programs
_SYS_BPF, _BPF_LINK_CREATE = 321, 28
BPF_TRACE_UPROBE_MULTI = 48   # enum bpf_attach_type
BPF_F_UPROBE_MULTI_RETURN = 1
# Kernels without uprobe_multi links refuse the program or the link with these.
_UNSUPPORTED = {errno.EINVAL, errno.EOPNOTSUPP, 524, errno.ENOSYS, errno.E2BIG}  # 524: ENOTSUPP


class _LinkAttr(ct.Structure):
    """union bpf_attr for BPF_LINK_CREATE, its uprobe_multi member."""
    _fields_ = [("prog_fd", ct.c_uint32), ("target_fd", ct.c_uint32), ("attach_type", ct.c_uint32),
                ("flags", ct.c_uint32), ("path", ct.c_uint64), ("offsets", ct.c_uint64),
                ("ref_ctr_offsets", ct.c_uint64), ("cookies", ct.c_uint64), ("cnt", ct.c_uint32),
                ("multi_flags", ct.c_uint32), ("pid", ct.c_uint32)]


_libc = ct.CDLL(None, use_errno=True)
# bpf object -> link fds it owns / programs loaded for links; links off for
# that object after a refusal
_links: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_loaded: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_refused: weakref.WeakSet = weakref.WeakSet()


def _wanted(bpf) -> bool:
    return os.environ.get("GPUSCOPE_UPROBE_LINKS", "1") != "0" and bpf not in _refused


def load(bpf, fn_name: str):
    """Loads (verifies) a uprobe program now, for the attach this module makes."""
    if _wanted(bpf):
        try:
            fn = bpf.load_func(fn_name, BPF_PROG_TYPE_KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
            _loaded.setdefault(bpf, set()).add(fn.name)
            return fn
        except Exception:  # noqa: BLE001 - BCC raises bare Exception; an old kernel, say
            _refuse(bpf)
    return bpf.load_func(fn_name, BPF_PROG_TYPE_KPROBE)


def attach(bpf, path: str, vaddr: int, fn_name: str, ret: bool = False) -> None:
    """One uprobe (or uretprobe) on the function at ELF address `vaddr` of
    `path`, for every process (the programs filter on the tracked map).
    Raises OSError or BCC's Exception with the reason."""
    if _wanted(bpf):
        fn = load(bpf, fn_name)
        if bpf not in _refused:
            fd = _link(fn.fd, path, offset_in(load_segments(path), vaddr), ret)
            if fd >= 0:
                _links.setdefault(bpf, []).append(fd)
                return
            err = ct.get_errno()
            if err not in _UNSUPPORTED:
                raise OSError(err, f"uprobe link on {path}: {os.strerror(err)}")
            _refuse(bpf)
    if ret:
        bpf.attach_uretprobe(name=path, addr=vaddr, fn_name=fn_name, pid=-1)
    else:
        bpf.attach_uprobe(name=path, addr=vaddr, fn_name=fn_name, pid=-1)


def detach_all(bpf) -> None:
    """Closes every link of `bpf` at once: each close waits its own grace
    period, and those overlap."""
    fds = _links.pop(bpf, [])
    if len(fds) > 1:
        with ThreadPoolExecutor(max_workers=min(32, len(fds))) as pool:
            list(pool.map(_close, fds))
    elif fds:
        _close(fds[0])


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _refuse(bpf) -> None:
    """This kernel makes no uprobe_multi links: BCC's uprobes from now on, with
    the programs loaded again without the link's attach type."""
    _refused.add(bpf)
    for name in _loaded.pop(bpf, ()):
        fn = bpf.funcs.pop(name, None)
        if fn is not None:
            _close(fn.fd)


def _link(prog_fd: int, path: str, offset: int, ret: bool) -> int:
    p = ct.create_string_buffer(os.fsencode(path))
    off = ct.c_uint64(offset)
    attr = _LinkAttr(prog_fd=prog_fd, attach_type=BPF_TRACE_UPROBE_MULTI, path=ct.addressof(p),
                     offsets=ct.addressof(off), cnt=1,
                     multi_flags=BPF_F_UPROBE_MULTI_RETURN if ret else 0)
    return _libc.syscall(_SYS_BPF, _BPF_LINK_CREATE, ct.byref(attr), ct.sizeof(attr))
