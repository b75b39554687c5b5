"""Names from the kernel (paths, command lines, process and thread names) as
text, losslessly. Linux names are bytes and need not be UTF-8; a trace's
strings must be. Undecodable bytes become `\\xNN` and a backslash becomes
`\\\\`, so two different names never read the same (U+FFFD would merge
them) and the bytes can be recovered (`to_bytes`). A name that is UTF-8 and
has no backslash, i.e. nearly every name, is unchanged."""

from __future__ import annotations

import codecs
import os
import re


def text(raw: bytes) -> str:
    if b"\\" not in raw:
        try:
            return raw.decode()
        except UnicodeDecodeError:
            pass
    return raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def from_os(s: str) -> str:
    """A str the os module made (undecodable bytes held as surrogates)."""
    return text(os.fsencode(s))


_ESCAPE = re.compile(rb"\\(\\|x[0-9a-f]{2})")


def to_bytes(s: str) -> bytes:
    """The name's bytes again (the inverse of text)."""
    if "\\" not in s:
        return s.encode()
    return _ESCAPE.sub(lambda m: b"\\" if m[1] == b"\\" else codecs.decode(m[1][1:], "hex"),
                       s.encode())
