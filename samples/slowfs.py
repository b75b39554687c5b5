"""A FUSE filesystem that serves a directory with a fixed latency per read,
so DataLoader workers block in real read() syscalls, as on slow storage.

    python samples/slowfs.py SRC MOUNTPOINT --latency-ms 30

Runs in the foreground until unmounted (umount MOUNTPOINT) or killed.
direct_io keeps the page cache out of the way, so every read pays.
"""

from __future__ import annotations

import argparse
import os
import time

from fuse import FUSE, FuseOSError, Operations


class SlowFS(Operations):
    def __init__(self, root: str, latency_s: float):
        self.root = root
        self.latency_s = latency_s

    def _p(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def getattr(self, path, fh=None):
        try:
            st = os.lstat(self._p(path))
        except OSError as e:
            raise FuseOSError(e.errno) from None
        return {k: getattr(st, k) for k in ("st_atime", "st_ctime", "st_gid", "st_mode",
                                             "st_mtime", "st_nlink", "st_size", "st_uid")}

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self._p(path))]

    def open(self, path, flags):
        return os.open(self._p(path), os.O_RDONLY)

    def read(self, path, size, offset, fh):
        time.sleep(self.latency_s)
        return os.pread(fh, size, offset)

    def release(self, path, fh):
        os.close(fh)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("mountpoint")
    ap.add_argument("--latency-ms", type=float, default=20)
    a = ap.parse_args()
    os.makedirs(a.mountpoint, exist_ok=True)
    FUSE(SlowFS(os.path.abspath(a.src), a.latency_ms / 1000), a.mountpoint, foreground=True,
         direct_io=True, ro=True, allow_other=True)


if __name__ == "__main__":
    main()
