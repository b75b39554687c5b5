"""A Python dict of event arguments as Perfetto DebugAnnotations, names
interned: the bulk of the bytes and of the encoding time of a slice.

Everything that depends only on an argument's name is encoded once, when
the name is first seen: the annotation's field tag, length and name_iid,
for each length an int's varint or a short string can have. A value then
costs a lookup and one concatenation.
"""

from __future__ import annotations

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from . import protowire as pw
from .protowire import LO2, SMALL, f_bytes, f_str, f_varint, pack_double, tag, varint

_DA = {f.name: f.number for f in pb.DebugAnnotation.DESCRIPTOR.fields}
_NAMED = {f.name: f.number for f in pb.DebugAnnotationName.DESCRIPTOR.fields}
_FIELD = pb.TrackEvent.DESCRIPTOR.fields_by_name["debug_annotations"].number
_INTERNED_FIELD = pb.InternedData.DESCRIPTOR.fields_by_name["debug_annotation_names"].number
_ANNOTATION = tag(_FIELD, pw.LEN)
_NAME_IID = tag(_DA["name_iid"], pw.VARINT)
_INT = tag(_DA["int_value"], pw.VARINT)
_UINT = tag(_DA["uint_value"], pw.VARINT)
_BOOL = tag(_DA["bool_value"], pw.VARINT)
_DOUBLE = tag(_DA["double_value"], pw.I64)
_STR = tag(_DA["string_value"], pw.LEN)
_TRUE, _FALSE = _BOOL + b"\x01", _BOOL + b"\x00"
_SHORT = 128   # strings up to this many bytes take the precomputed prefix
STR_CACHE = 20_000   # encoded (name, string) pairs kept (a few MB)


def value(v) -> bytes:
    """A DebugAnnotation's value field. Ints beyond int64 go to uint_value,
    beyond uint64 to a decimal string: never an invalid varint."""
    t = type(v)
    if t is str:
        b = pw.utf8(v)
        return _STR + varint(len(b)) + b
    if t is bool:
        return _TRUE if v else _FALSE
    if isinstance(v, int):
        if pw.I64_MIN <= v < pw.I64_END:
            return _INT + varint(v)
        if 0 <= v <= pw.U64:
            return _UINT + varint(v)
        return value(str(int(v)))
    if isinstance(v, float):
        return _DOUBLE + pack_double(v)
    return value(str(v))


class Annotations:
    """Encodes args dicts on one sequence. A new name's InternedData entry
    is appended to `pending`, which the writer sends with the next packet."""

    def __init__(self, pending: bytearray):
        self.pending = pending
        self.names: dict[str, tuple] = {}   # name -> prefixes, see _name
        self.strs: dict[tuple, bytes] = {}   # (name, string) -> its annotation

    def _name(self, name: str) -> tuple:
        """(int prefixes by varint length, short-string prefixes by byte
        length, double prefix, the bare name_iid field)."""
        iid = len(self.names) + 1
        kf = _NAME_IID + varint(iid)
        ks = kf + _STR
        e = self.names[name] = (
            tuple(_ANNOTATION + varint(len(kf) + 1 + n) + kf + _INT for n in range(11)),
            tuple(_ANNOTATION + varint(len(ks) + 1 + n) + ks + SMALL[n] for n in range(_SHORT)),
            _ANNOTATION + varint(len(kf) + 9) + kf + _DOUBLE,
            kf)
        self.pending += f_bytes(_INTERNED_FIELD, f_varint(_NAMED["iid"], iid)
                                + f_str(_NAMED["name"], name))
        return e

    def encode(self, args: dict) -> bytes:
        """The TrackEvent.debug_annotations fields of args, in its order. A
        (name, string) pair is encoded once and then looked up: most repeat
        (a path); ints are a table lookup anyway."""
        names, strs = self.names, self.strs
        out = []
        for k, v in args.items():
            t = type(v)
            if t is int:
                try:
                    e = names[k]
                except KeyError:
                    e = self._name(k)
                if 0 <= v < 16384:
                    b = SMALL[v]
                elif 0 < v < 268435456:
                    b = LO2[v & 0x3FFF] + SMALL[v >> 14]
                elif pw.I64_MIN <= v < pw.I64_END:
                    b = varint(v)
                else:
                    out.append(f_bytes(_FIELD, e[3] + value(v)))
                    continue
                out.append(e[0][len(b)] + b)
            elif t is str:
                b = strs.get((k, v))
                if b is None:
                    if len(strs) >= STR_CACHE:
                        strs.clear()
                    b = strs[(k, v)] = self._other(k, v)
                out.append(b)
            else:
                out.append(self._other(k, v))
        return b"".join(out)

    def _other(self, k: str, v) -> bytes:
        try:
            e = self.names[k]
        except KeyError:
            e = self._name(k)
        t = type(v)
        if t is str:
            try:
                b = v.encode()
            except UnicodeEncodeError:
                b = pw.utf8(v)
            n = len(b)
            return e[1][n] + b if n < _SHORT else f_bytes(_FIELD, e[3] + _STR + varint(n) + b)
        if t is float:
            return e[2] + pack_double(v)
        return f_bytes(_FIELD, e[3] + value(v))
