// A Python stack sampled in the kernel while its thread is on a CPU, shared by
// pyperf.bpf.c and pyperf.py (BCC builds the ctypes struct from this file).
#ifndef GPUSCOPE_PYPERF_H
#define GPUSCOPE_PYPERF_H

#ifndef PY_MAX_FRAMES
#define PY_MAX_FRAMES 128
#endif

#define PYS_GIL 1        // the thread held the GIL
#define PYS_TRUNCATED 2  // deeper than PY_MAX_FRAMES: the outermost frames are cut
#define PYS_READ_FAILED 4  // a frame could not be read: the stack ends early

struct py_sample {
    u64 ts;        // CLOCK_MONOTONIC ns
    u64 tstate;    // the thread state the walk started from
    u32 pid;
    u32 tid;
    u32 n;         // frames walked, innermost first
    u32 flags;     // PYS_*
    u64 code[PY_MAX_FRAMES];   // code object (3.13: f_executable) of each frame
    u64 instr[PY_MAX_FRAMES];  // prev_instr / instr_ptr (3.11+), f_lasti (3.10)
    u8 owner[PY_MAX_FRAMES];   // frame owner (3.11+; 0 on 3.10)
};

// Per covered thread (user space sets tstate; sched_switch keeps on_cpu).
struct py_thread {
    u64 tstate;
    u32 on_cpu;
    u32 pad;
};

// Per process: where to look for the GIL holder (see pyperf.py).
struct py_proc {
    u64 gil_addr;  // <= 3.11: &_PyRuntime.gilstate.tstate_current; 3.12: the gil struct
};

#endif
