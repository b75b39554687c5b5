"""Event arguments as the viewer's index stores them: JSON text, each value
as the trace holds it. The collector's live index and the index of a trace
read from disk both go through here, so the two agree row for row."""

from __future__ import annotations

import json

from .protowire import utf8

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def args_json(args) -> str:
    """Arguments as JSON, each value as the trace holds it: a number, a bool,
    or else its str() (what the writer encodes for any other value)."""
    return text(_encode({k: v if isinstance(v, (str, int, float)) else str(v) for k, v in args}))


def cached_json(cache: dict, args) -> str:
    """args_json(args), remembered for the arguments seen most recently."""
    try:
        j = cache.get(args)
    except TypeError:   # a value that is not hashable (from the live writer)
        return args_json(args)
    if j is None:
        if len(cache) > 100_000:
            cache.clear()
        j = cache[args] = args_json(args)
    return j


def pairs_json(frags: dict, items) -> str:
    """args_json(items) for a dict's items (no name twice), pair by pair:
    the JSON of a name and of a (name, string) is kept, as they mostly
    repeat where the whole arguments do not (an offset)."""
    if len(frags) > _JSON_FRAGS:
        frags.clear()
    out = []
    for k, v in items:
        t = type(v)
        if t is int:   # not bool, whose JSON differs
            f = frags.get(k)
            if f is None:
                f = frags[k] = args_json(((k, 0),))[1:-2]
            out.append(f + repr(v))
        elif t is str:
            f = frags.get((k, v))
            if f is None:
                f = frags[(k, v)] = args_json(((k, v),))[1:-1]
            out.append(f)
        else:
            out.append(args_json(((k, v),))[1:-1])
    return "{" + ",".join(out) + "}"


_JSON_FRAGS = 20_000


def text(s: str) -> str:
    """What the trace holds for s: the writer's own UTF-8 encoding of it."""
    return s if s.isascii() else utf8(s).decode("utf-8")
