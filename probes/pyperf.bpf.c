// Python stacks of on-CPU threads, walked in the kernel from a CPU-clock perf
// event. The thread is interrupted while it runs, so its frame chain is read
// as it stands: no copy-then-recheck as the out-of-process walker must do,
// and no process_vm_readv against the job's memory map. User space keeps the
// tid -> thread state map (py_threads), so no kernel or libpthread struct is
// read here; the layout's offsets come as -D flags (one program per layout).
#include <uapi/linux/bpf_perf_event.h>
#include "pyperf.h"

#ifndef PY_RING_PAGES
#define PY_RING_PAGES 64
#endif
#define FRAME_WORDS ((PY_FRAME_READ + 7) / 8)

BPF_HASH(py_threads, u32, struct py_thread, 65536);  // tid -> its thread state
BPF_HASH(py_procs, u32, struct py_proc, 4096);   // tgid -> per-process facts
BPF_RINGBUF_OUTPUT(py_samples, PY_RING_PAGES);
BPF_PERCPU_ARRAY(py_counts, u64, 3);             // 0 samples, 1 ring full, 2 read failed

static __always_inline void count(u32 k)
{
    u64 *v = py_counts.lookup(&k);
    if (v)
        (*v)++;
}

static __always_inline u64 read_u64(u64 addr)
{
    u64 v = 0;
    bpf_probe_read_user(&v, sizeof(v), (void *)addr);
    return v;
}

int on_cpu_sample(struct bpf_perf_event_data *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id, tgid = id >> 32;
    struct py_thread *t = py_threads.lookup(&tid);
    if (!t)
        return 0;
    struct py_proc *pp = py_procs.lookup(&tgid);
    if (!pp)
        return 0;
    u64 tstate = t->tstate;
    struct py_sample *s = py_samples.ringbuf_reserve(sizeof(struct py_sample));
    if (!s) {
        count(1);
        return 0;
    }
    s->ts = bpf_ktime_get_ns();
    s->tstate = tstate;
    s->pid = tgid;
    s->tid = tid;
    s->flags = 0;
#if PY_GIL_MODE == 1      // <= 3.11: the runtime's current tstate
    if (read_u64(pp->gil_addr) == tstate)
        s->flags |= PYS_GIL;
#elif PY_GIL_MODE == 2    // 3.12: the interpreter's gil struct: locked and last holder
    {
        u32 locked = 0;
        bpf_probe_read_user(&locked, sizeof(locked), (void *)(pp->gil_addr + PY_GIL_LOCKED));
        if (locked && read_u64(pp->gil_addr + PY_GIL_LAST_HOLDER) == tstate)
            s->flags |= PYS_GIL;
    }
#elif PY_GIL_MODE == 3    // 3.13: a bit in the tstate's _status word
    {
        u32 status = 0;
        bpf_probe_read_user(&status, sizeof(status), (void *)(tstate + PY_TSTATE_STATUS));
        if ((status >> PY_HOLDS_GIL_BIT) & 1)
            s->flags |= PYS_GIL;
    }
#endif
#ifdef PY_CFRAME_CURRENT_FRAME   // 3.11/3.12: tstate->cframe->current_frame
    u64 cframe = read_u64(tstate + PY_TSTATE_FRAME);
    u64 frame = cframe ? read_u64(cframe + PY_CFRAME_CURRENT_FRAME) : 0;
#else                            // 3.10 tstate->frame, 3.13 tstate->current_frame
    u64 frame = read_u64(tstate + PY_TSTATE_FRAME);
#endif
    u32 n = 0;
    u64 buf[FRAME_WORDS];
    for (int i = 0; i < PY_MAX_FRAMES; i++) {
        if (!frame)
            break;
        if (bpf_probe_read_user(buf, sizeof(buf), (void *)frame)) {
            s->flags |= PYS_READ_FAILED;
            count(2);
            break;
        }
        s->code[i] = buf[PY_FRAME_CODE / 8];
#if PY_FRAME_INSTR_SIZE == 8
        s->instr[i] = buf[PY_FRAME_INSTR / 8];
#else
        s->instr[i] = (u64)(s64)((s32 *)buf)[PY_FRAME_INSTR / 4];
#endif
#ifdef PY_FRAME_OWNER
        s->owner[i] = ((u8 *)buf)[PY_FRAME_OWNER];
#else
        s->owner[i] = 0;
#endif
        frame = buf[PY_FRAME_PREVIOUS / 8];
        n = i + 1;
    }
    if (frame && n == PY_MAX_FRAMES)
        s->flags |= PYS_TRUNCATED;
    s->n = n;
    count(0);
    py_samples.ringbuf_submit(s, BPF_RB_NO_WAKEUP);
    return 0;
}

// Whether each covered thread is on a CPU right now: a running thread is the
// perf event's to sample; one that is runnable but waiting for a CPU is walked
// from outside (its stack cannot change while it waits).
TRACEPOINT_PROBE(sched, sched_switch)
{
    u32 prev = args->prev_pid, next = args->next_pid;
    struct py_thread *t = py_threads.lookup(&prev);
    if (t)
        t->on_cpu = 0;
    t = py_threads.lookup(&next);
    if (t)
        t->on_cpu = 1;
    return 0;
}
