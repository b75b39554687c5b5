"""From a walked frame chain to the Frames of a sample, shared by the walker that
reads stacks from outside (pystack) and the one that walks them in the kernel
(pyperf): which frames count, and which line each is at."""

from __future__ import annotations

from .events import Frame
from .pycode import CodeInfo, Torn
from .pylayouts import Layout


def keep_of(L: Layout, owner: int) -> int:
    """owner + 1 for a frame to report, 0 for a shim (C stack, interpreter entry)."""
    if L.frame_model == "frameobject":
        return 1
    return owner + 1 if L.owner_skip_min is None or owner < L.owner_skip_min else 0


def build(L: Layout, chain: list[tuple[int, int, int]], infos: dict[int, CodeInfo]) -> list[Frame]:
    """Frames, outermost first, for chain = [(code, instruction, keep)] innermost
    first; infos has every kept frame's code. Raises Torn on an instruction outside
    its code (a stack read mid-change). Frames still in their prologue are left out."""
    frames = []
    interp = L.frame_model != "frameobject"
    not_started = 1 if L.instr_is_next else 0  # (see Layout.instr_is_next)
    for k, (c, instr, keep) in enumerate(chain):
        if not keep:
            continue
        info = infos[c]
        if not interp:
            idx = instr  # f_lasti in code units, -1 before the first instruction
            if idx < 0:
                continue  # just pushed, not started: incomplete, like 3.11+'s prologue
            if idx >= info.n_units:
                raise Torn("instruction out of range")
        else:
            idx = (instr - c - L.code_adaptive) // 2
            if keep - 1 != L.owner_generator and idx < info.firsttraceable + (k == 0) * not_started:
                continue  # incomplete frame, still in its prologue
            if not 0 <= idx < info.n_units:
                raise Torn("instruction out of range")
        frames.append(info.frame(idx))
    frames.reverse()
    return frames
