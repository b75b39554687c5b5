"""procfs against real /proc files of real processes: a child that names itself
and a thread with ')' and spaces in their comms (the case naive stat parsers
get wrong), burns known CPU time, and maps files at known addresses."""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
import time

import pytest

from gpuscope.probes import procfs

# Both fit the kernel's 15-byte comm and look like the fields that follow it.
PROC_COMM = "a) Z 1 (b) c"
THREAD_COMM = "t) R 7 ) x"

CHILD = r"""
import json, mmap, os, sys, threading, time
proc_comm, thread_comm, tmp = sys.argv[1:4]
with open("/proc/self/comm", "w") as f:
    f.write(proc_comm)
ready = threading.Event()
def named():
    with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
        f.write(thread_comm)
    ready.set()
    time.sleep(3600)
t = threading.Thread(target=named, daemon=True)
t.start()
ready.wait()
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
page = mmap.PAGESIZE
shared = open(os.path.join(tmp, "a file) (with spaces"), "w+b")
shared.truncate(4 * page)
m_shared = mmap.mmap(shared.fileno(), 2 * page, offset=page)
gone = open(os.path.join(tmp, "unlinked"), "w+b")
gone.truncate(page)
m_gone = mmap.mmap(gone.fileno(), page, prot=mmap.PROT_READ, flags=mmap.MAP_PRIVATE)
os.unlink(gone.name)
m_anon = mmap.mmap(-1, 3 * page, prot=mmap.PROT_READ, flags=mmap.MAP_PRIVATE)
import ctypes
t_ = os.times()
print(json.dumps({"pid": os.getpid(), "tid": t.native_id, "cpu": t_.user + t_.system,
                  "shared": [ctypes.addressof(ctypes.c_char.from_buffer(m_shared)), shared.name],
                  "gone": gone.name}), flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def child(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", CHILD, PROC_COMM, THREAD_COMM, str(tmp_path)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(p.stdout.readline())
        yield p, info
    finally:
        p.kill()
        p.wait()


def test_stat_parses_around_comms_with_spaces_and_parens(child):
    p, info = child
    deadline = time.monotonic() + 10
    st = procfs.stat(p.pid)
    while st is not None and st.state == "R" and time.monotonic() < deadline:
        time.sleep(0.01)  # still on its way to reading stdin
        st = procfs.stat(p.pid)
    assert st is not None
    assert (st.pid, st.comm, st.ppid, st.num_threads) == (p.pid, PROC_COMM, os.getpid(), 2)
    assert st.state == "S"  # blocked on its stdin
    assert procfs.comm(p.pid) == PROC_COMM
    thread = procfs.stat(p.pid, info["tid"])
    assert thread is not None and (thread.pid, thread.comm) == (info["tid"], THREAD_COMM)
    assert procfs.comm(p.pid, info["tid"]) == THREAD_COMM
    assert procfs.threads(p.pid) == sorted([p.pid, info["tid"]])
    assert p.pid in procfs.pids() and info["tid"] not in procfs.pids()
    tick = os.sysconf("SC_CLK_TCK")
    # the child's own times(2) and our reading of its stat agree within a few ticks
    assert abs((st.utime + st.stime) / tick - info["cpu"]) <= 3 / tick
    assert st.utime + st.stime >= 0.25 * tick
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    assert 0 <= uptime - st.starttime / tick < 60  # started moments ago
    mine = procfs.stat(os.getpid())
    assert mine is not None and mine.starttime <= st.starttime
    status = procfs.status(p.pid)
    assert status["Name"] == PROC_COMM and int(status["PPid"]) == os.getpid()
    assert int(status["Threads"]) == 2 and status["State"].startswith("S")
    assert int(status["VmSize"].split()[0]) * 1024 == st.vsize
    # the kernel sums per-CPU RSS counters for status, not for stat: close, not equal
    assert abs(int(status["VmRSS"].split()[0]) * 1024 / (st.rss * mmap.PAGESIZE) - 1) < 0.1
    assert procfs.status(p.pid, info["tid"])["Name"] == THREAD_COMM


def test_parse_stat_rejects_what_is_not_a_stat_line():
    assert procfs.parse_stat(b"") is None
    assert procfs.parse_stat(b"12 (x) S 1 2 3") is None  # truncated
    assert procfs.parse_stat(b"garbage without parens " * 3) is None
    with open("/proc/self/stat", "rb") as f:
        raw = f.read()
    assert procfs.stat_state(raw) == procfs.parse_stat(raw).state == "R"  # we are running


def test_maps_are_typed_records_of_the_real_mappings(child):
    p, info = child
    page = mmap.PAGESIZE
    maps = procfs.maps(p.pid)
    assert maps == sorted(maps) and all(m.start < m.end for m in maps)
    addr, path = info["shared"]
    [m] = [m for m in maps if m.start == addr]
    st = os.stat(path)
    assert (m.end, m.perms, m.offset, m.path) == (addr + 2 * page, "rw-s", page, path)
    assert (m.dev, m.inode) == (st.st_dev, st.st_ino)  # comparable with stat(2)
    assert m.file and not m.deleted and not m.executable
    gone = [m for m in maps if m.path == info["gone"] + " (deleted)"]
    assert len(gone) == 1 and gone[0].deleted and gone[0].perms == "r--p"
    exe = os.path.realpath(sys.executable)
    text = [m for m in maps if m.path == exe and m.executable]
    assert text and text[0].inode == os.stat(exe).st_ino
    assert any(m.path == "[stack]" and not m.file for m in maps)
    assert any(m.path == "" and m.inode == 0 for m in maps)  # anonymous
    grouped = procfs.file_maps(p.pid)
    assert grouped[path] == [m] and "[stack]" not in grouped
    assert [m for ms in grouped.values() for m in ms] == sorted(m for m in maps if m.file)
    # The library poll's fast read: the same executable files as the full parse.
    assert procfs.executable_files(p.pid) == {m.path: m.inode for m in maps
                                               if m.executable and m.file and not m.deleted}
    assert procfs.executable_files(p.pid)[exe] == os.stat(exe).st_ino


def test_a_vanished_process_reads_as_empty_or_raises_when_asked_to():
    p = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while procfs.alive(p.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    st = procfs.stat(p.pid)
    assert st is not None and st.state == "Z" and not procfs.alive(p.pid)  # a zombie
    p.wait()
    assert procfs.stat(p.pid) is None and procfs.status(p.pid) == {}
    assert procfs.maps(p.pid) == [] and procfs.file_maps(p.pid) == {}
    assert procfs.threads(p.pid) == [] and procfs.comm(p.pid) == "" and procfs.exe(p.pid) is None
    with pytest.raises(FileNotFoundError):
        procfs.maps(p.pid, strict=True)


def test_status_of_self_and_of_another_procfs_root(tmp_path):
    assert int(procfs.status("self")["Pid"]) == os.getpid()
    assert procfs.status(os.getpid(), proc=str(tmp_path)) == {}
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "status").write_text("Name:\tx: y\nNSpid:\t70\t7\nbroken line\n")
    assert procfs.status(7, proc=str(tmp_path)) == {"Name": "x: y", "NSpid": "70\t7"}
    (tmp_path / "self").mkdir()
    assert procfs.pids(str(tmp_path)) == [7] and procfs.pids(str(tmp_path / "none")) == []
