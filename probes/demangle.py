"""C++ names, demangled in-process by libstdc++'s __cxa_demangle (ctypes).

No subprocess and no binutils: libstdc++.so.6 is on every machine that runs
BCC (libbcc links it) and in the sidecar image. Its output is made identical to
`c++filt`'s: c++filt asks the same demangler for "verbose" names, which spell
out the four old-ABI abbreviations (std::string, ...) that __cxa_demangle keeps.
A name that is not mangled, or that this libstdc++ cannot parse (GCC 12 does
not know some newer manglings, e.g. generic lambdas `auto:1`), stays as it is.
"""

from __future__ import annotations

import ctypes
import re
from functools import lru_cache

CACHE_SIZE = 8192  # a job launches hundreds to a few thousand distinct kernels; names run to KBs


def _load():
    for name in ("libstdc++.so.6", None):  # None: already in this process (BCC's libbcc)
        try:
            fn = ctypes.CDLL(name).__cxa_demangle
            libc_free = ctypes.CDLL(None).free
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_void_p  # a malloc'd buffer we must free, not a Python bytes
        fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
                       ctypes.POINTER(ctypes.c_int)]
        libc_free.restype = None
        libc_free.argtypes = [ctypes.c_void_p]
        return fn, libc_free
    return None, None


_cxa_demangle, _free = _load()

_VERBOSE = {
    "string": "std::basic_string<char, std::char_traits<char>, std::allocator<char> >",
    "istream": "std::basic_istream<char, std::char_traits<char> >",
    "ostream": "std::basic_ostream<char, std::char_traits<char> >",
    "iostream": "std::basic_iostream<char, std::char_traits<char> >",
}
# c++filt also writes "> >" where a spelt-out name closes before another '>'.
_ABBREV = re.compile(r"\bstd::(string|istream|ostream|iostream)\b(?=(>?))")


def available() -> bool:
    return _cxa_demangle is not None


@lru_cache(maxsize=CACHE_SIZE)
def demangle(name: str) -> str:
    """The demangled form of a C++ symbol name, or name itself."""
    if not name.startswith("_Z") or _cxa_demangle is None:
        return name  # __cxa_demangle would also turn type codes ("i") into types ("int")
    try:
        raw = name.encode()
    except UnicodeEncodeError:
        return name
    status = ctypes.c_int(0)
    buf = _cxa_demangle(raw, None, None, ctypes.byref(status))
    if not buf:
        return name  # status -2: not a valid mangled name
    try:
        if status.value != 0:
            return name
        out = ctypes.string_at(buf).decode("utf-8", "replace")
    finally:
        _free(buf)
    return _ABBREV.sub(lambda m: _VERBOSE[m.group(1)] + (" " if m.group(2) else ""), out)


__all__ = ["available", "demangle"]
