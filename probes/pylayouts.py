"""CPython struct layouts the sampler reads, as data: one table per minor version.

Sources: every offset below was printed with offsetof() by a C file compiled
against each pyenv interpreter's own headers (Include/cpython/*.h and
Include/internal/*.h at v3.10.13, v3.11.7, v3.12.1, v3.13.0, Py_BUILD_CORE),
and agrees with ../shared/CPYTHON.md. 3.11.2 (Debian) has the 3.11.7 layout.
3.13 tables are only a fallback: the live `_Py_DebugOffsets` at the start of
the target's `_PyRuntime` win (see with_debug_offsets).

Version dispatch happens in exactly one place: layout_for().
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass


class UnsupportedVersion(Exception):
    """The target runs a CPython version we have no layout for."""

    version: str | None = None  # "3.x.y", filled in by pyruntime for doctor


@dataclass(frozen=True)
class Layout:
    version: tuple[int, int]
    # How frames are linked: "frameobject" (3.10 PyFrameObject chain) or
    # "interpframe" (3.11+ _PyInterpreterFrame chain in per-thread data stacks).
    frame_model: str
    # _PyRuntime
    runtime_interp_head: int
    runtime_tstate_current: int | None  # gilstate.tstate_current (<= 3.11)
    # PyInterpreterState
    interp_next: int
    interp_threads_head: int
    interp_gil_ptr: int | None  # ceval.gil: pointer to _gil_runtime_state (3.12+)
    gil_last_holder: int  # in _gil_runtime_state
    gil_locked: int
    # PyThreadState
    tstate_next: int
    tstate_thread_id: int  # pthread_t
    tstate_native_tid: int | None  # kernel TID (3.11+)
    tstate_frame: int  # 3.10 frame, 3.11/3.12 cframe, 3.13 current_frame
    cframe_current_frame: int | None  # set when tstate_frame points at a _PyCFrame
    tstate_datastack_chunk: int | None
    tstate_datastack_top: int | None
    tstate_status: int | None  # 3.13 _status bitfield
    holds_gil_bit: int | None
    # Frame (PyFrameObject on 3.10, _PyInterpreterFrame on 3.11+)
    frame_code: int
    frame_previous: int
    frame_instr: int  # 3.10 f_lasti (int, code units); 3.11+ prev_instr/instr_ptr (pointer)
    frame_owner: int | None
    owner_generator: int  # FRAME_OWNED_BY_GENERATOR
    owner_skip_min: int | None  # owners >= this are shims (C stack / interpreter)
    # PyCodeObject
    code_firstlineno: int
    code_filename: int
    code_name: int
    code_qualname: int | None
    code_linetable: int
    code_firsttraceable: int | None
    code_adaptive: int | None  # co_code_adaptive: first code unit (3.11+)
    linetable_format: str  # "lnotab310" or "locations311"
    # PyUnicodeObject data offsets: sizeof(PyASCIIObject), sizeof(PyCompactUnicodeObject)
    str_ascii_data: int
    str_compact_data: int
    # 3.13's instr_ptr is the instruction about to run (3.11/3.12's prev_instr the last
    # one run): a frame whose instr_ptr is still at _co_firsttraceable (RESUME) has
    # not started.
    instr_is_next: bool = False
    bytes_data: int = 32  # PyBytesObject.ob_sval
    ob_type: int = 8
    ob_size: int = 16
    source: str = "table"

    # Whole-struct read sizes, derived from the offsets used.
    @property
    def tstate_read(self) -> int:
        fields = [self.tstate_next, self.tstate_thread_id, self.tstate_frame]
        fields += [f for f in (self.tstate_native_tid, self.tstate_datastack_top,
                               self.tstate_datastack_chunk, self.tstate_status) if f is not None]
        return max(fields) + 8

    @property
    def frame_read(self) -> int:
        return max(self.frame_code, self.frame_previous, self.frame_instr, self.frame_owner or 0) + 8

    @property
    def code_read(self) -> int:
        fields = [self.code_firstlineno, self.code_filename, self.code_name, self.code_linetable]
        fields += [f for f in (self.code_qualname, self.code_firsttraceable) if f is not None]
        return max(fields) + 8


# v3.10.13: Include/cpython/pystate.h, Include/internal/pycore_runtime.h,
# Include/cpython/frameobject.h, Include/cpython/code.h.
PY310 = Layout(
    version=(3, 10), frame_model="frameobject",
    runtime_interp_head=32, runtime_tstate_current=568,
    interp_next=0, interp_threads_head=8, interp_gil_ptr=None,
    gil_last_holder=360, gil_locked=368,  # _PyRuntime.ceval.gil (unused: tstate_current is exact)
    tstate_next=8, tstate_thread_id=176, tstate_native_tid=None, tstate_frame=24,
    cframe_current_frame=None, tstate_datastack_chunk=None, tstate_datastack_top=None,
    tstate_status=None, holds_gil_bit=None,
    frame_code=32, frame_previous=24, frame_instr=96, frame_owner=None,
    owner_generator=1, owner_skip_min=None,
    code_firstlineno=40, code_filename=104, code_name=112, code_qualname=None,
    code_linetable=120, code_firsttraceable=None, code_adaptive=None,
    linetable_format="lnotab310", str_ascii_data=48, str_compact_data=72,
)

# v3.11.7 (and 3.11.2): Include/cpython/pystate.h, Include/internal/pycore_frame.h,
# Include/cpython/code.h. Owners: 0 thread, 1 generator, 2 frame object; no shims.
PY311 = Layout(
    version=(3, 11), frame_model="interpframe",
    runtime_interp_head=40, runtime_tstate_current=576,
    interp_next=0, interp_threads_head=16, interp_gil_ptr=None,
    gil_last_holder=368, gil_locked=376,
    tstate_next=8, tstate_thread_id=152, tstate_native_tid=160, tstate_frame=56,
    cframe_current_frame=8, tstate_datastack_chunk=296, tstate_datastack_top=304,
    tstate_status=None, holds_gil_bit=None,
    frame_code=32, frame_previous=48, frame_instr=56, frame_owner=69,
    owner_generator=1, owner_skip_min=None,
    code_firstlineno=72, code_filename=112, code_name=120, code_qualname=128,
    code_linetable=136, code_firsttraceable=168, code_adaptive=184,
    linetable_format="locations311", str_ascii_data=48, str_compact_data=72,
)

# v3.12.1: gilstate.tstate_current is gone; the GIL lives behind interp->ceval.gil.
# Owner 3 = FRAME_OWNED_BY_CSTACK (the entry shim). PEP 623 shrank unicode headers.
PY312 = Layout(
    version=(3, 12), frame_model="interpframe",
    runtime_interp_head=40, runtime_tstate_current=None,
    interp_next=0, interp_threads_head=72, interp_gil_ptr=384,
    gil_last_holder=8, gil_locked=16,
    tstate_next=8, tstate_thread_id=136, tstate_native_tid=144, tstate_frame=56,
    cframe_current_frame=0, tstate_datastack_chunk=232, tstate_datastack_top=240,
    tstate_status=None, holds_gil_bit=None,
    frame_code=0, frame_previous=8, frame_instr=56, frame_owner=70,
    owner_generator=1, owner_skip_min=3,
    code_firstlineno=68, code_filename=112, code_name=120, code_qualname=128,
    code_linetable=136, code_firsttraceable=176, code_adaptive=192,
    linetable_format="locations311", str_ascii_data=40, str_compact_data=56,
)

# v3.13.0 fallback (the live _Py_DebugOffsets override most of it). _status bit 5 =
# holds_gil. Owner 3 = FRAME_OWNED_BY_CSTACK.
PY313 = Layout(
    version=(3, 13), frame_model="interpframe",
    runtime_interp_head=632, runtime_tstate_current=None,
    interp_next=7264, interp_threads_head=7344, interp_gil_ptr=16,
    gil_last_holder=8, gil_locked=16,
    tstate_next=8, tstate_thread_id=152, tstate_native_tid=160, tstate_frame=72,
    cframe_current_frame=None, tstate_datastack_chunk=232, tstate_datastack_top=240,
    tstate_status=32, holds_gil_bit=5,
    frame_code=0, frame_previous=8, frame_instr=56, frame_owner=70,
    owner_generator=1, owner_skip_min=3,
    code_firstlineno=68, code_filename=112, code_name=120, code_qualname=128,
    code_linetable=136, code_firsttraceable=184, code_adaptive=200,
    linetable_format="locations311", str_ascii_data=40, str_compact_data=56,
    instr_is_next=True,
)

_TABLES = {(3, 10): PY310, (3, 11): PY311, (3, 12): PY312, (3, 13): PY313}

# _Py_DebugOffsets field lists (Include/internal/pycore_runtime.h @v3.13.0): groups of
# u64 after cookie[8], version, free_threaded. Only the groups we use are named.
DEBUG_GROUPS_313 = [
    ("runtime_state", ["size", "finalizing", "interpreters_head"]),
    ("interpreter_state", ["size", "id", "next", "threads_head", "gc", "imports_modules",
                           "sysdict", "builtins", "ceval_gil", "gil_runtime_state",
                           "gil_runtime_state_enabled", "gil_runtime_state_locked",
                           "gil_runtime_state_holder"]),
    ("thread_state", ["size", "prev", "next", "interp", "current_frame", "thread_id",
                      "native_thread_id", "datastack_chunk", "status"]),
    ("interpreter_frame", ["size", "previous", "executable", "instr_ptr", "localsplus",
                           "owner"]),
    ("code_object", ["size", "filename", "name", "qualname", "linetable", "firstlineno",
                     "argcount", "localsplusnames", "localspluskinds", "co_code_adaptive"]),
]
DEBUG_COOKIE = b"xdebugpy"
DEBUG_READ_SIZE = 24 + 8 * sum(len(f) for _, f in DEBUG_GROUPS_313)


def parse_debug_offsets(blob: bytes) -> tuple[int, dict[str, int]] | None:
    """(PY_VERSION_HEX, {"group.field": offset}) from the start of _PyRuntime, or None."""
    if len(blob) < DEBUG_READ_SIZE or blob[:8] != DEBUG_COOKIE:
        return None
    version, free_threaded = struct.unpack_from("<QQ", blob, 8)
    if free_threaded:
        # Free-threaded builds have other frame and GIL semantics: no table for them.
        raise UnsupportedVersion(f"unsupported Python {version >> 24}.{(version >> 16) & 255} "
                                 "free-threaded build")
    out: dict[str, int] = {}
    pos = 24
    for group, fields in DEBUG_GROUPS_313:
        for name in fields:
            (out[f"{group}.{name}"],) = struct.unpack_from("<Q", blob, pos)
            pos += 8
    return version, out


def with_debug_offsets(base: Layout, d: dict[str, int]) -> Layout:
    """The table layout with every field the debug offsets carry replaced by the live value.
    (They do not carry owner values, _co_firsttraceable or unicode data offsets.)"""
    return dataclasses.replace(
        base,
        runtime_interp_head=d["runtime_state.interpreters_head"],
        interp_next=d["interpreter_state.next"],
        interp_threads_head=d["interpreter_state.threads_head"],
        interp_gil_ptr=d["interpreter_state.ceval_gil"],
        tstate_next=d["thread_state.next"],
        tstate_thread_id=d["thread_state.thread_id"],
        tstate_native_tid=d["thread_state.native_thread_id"],
        tstate_frame=d["thread_state.current_frame"],
        tstate_datastack_chunk=d["thread_state.datastack_chunk"],
        tstate_datastack_top=d["thread_state.datastack_chunk"] + 8,  # next field
        tstate_status=d["thread_state.status"],
        frame_code=d["interpreter_frame.executable"],
        frame_previous=d["interpreter_frame.previous"],
        frame_instr=d["interpreter_frame.instr_ptr"],
        frame_owner=d["interpreter_frame.owner"],
        code_firstlineno=d["code_object.firstlineno"],
        code_filename=d["code_object.filename"],
        code_name=d["code_object.name"],
        code_qualname=d["code_object.qualname"],
        code_linetable=d["code_object.linetable"],
        code_adaptive=d["code_object.co_code_adaptive"],
        source="_Py_DebugOffsets",
    )


def layout_for(version: tuple[int, int], debug_blob: bytes | None = None) -> Layout:
    """The one place that maps a CPython version to a layout."""
    if version == (3, 13):
        parsed = parse_debug_offsets(debug_blob or b"")
        if parsed is not None and (parsed[0] >> 16) == 0x030D:
            return with_debug_offsets(PY313, parsed[1])
        return PY313
    if version in _TABLES:
        return _TABLES[version]
    raise UnsupportedVersion(f"unsupported Python {version[0]}.{version[1]} "
                             f"(gpuscope reads 3.10 to 3.13)")
