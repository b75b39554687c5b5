// Off-CPU intervals of tracked threads: blocked (sleeping, waiting on IO,
// a futex, a pipe) or preempted (runnable but not running), with the waker.
// Filtered in the kernel: intervals of tracked threads shorter than
// MIN_OFFCPU_NS are not counted at all; those shorter than the level's
// one-by-one threshold (config CFG_ONEBY_WAIT_NS) are summed per thread
// (summed.h); only the longer ones reach user space one by one.
#include "sched.h"

#ifndef SCHED_RING_PAGES
#define SCHED_RING_PAGES 256
#endif
// prev_state as the sched_switch tracepoint reports it.
#define STATE_EXIT_MASK 0x30   // EXIT_DEAD | EXIT_ZOMBIE: the final switch-out
#ifndef MIN_OFFCPU_NS
#define MIN_OFFCPU_NS 50000
#endif

BPF_RINGBUF_OUTPUT(sched_events, SCHED_RING_PAGES);
// tid -> the interval being built while the thread is off CPU (start 0: on
// CPU). Entries are rewritten in place, not inserted at each switch-out and
// deleted at each switch-in: two hash updates fewer per context switch of a
// tracked thread. LRU, so threads that exited age out.
BPF_TABLE("lru_hash", u32, struct offcpu_event, offcpu, 16384);

TRACEPOINT_PROBE(sched, sched_switch)
{
    u64 now = 0;
    // prev is the current task: its tgid comes from the helper.
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    u32 prev = args->prev_pid;
    if (prev != 0 && is_tracked(tgid)) {
        if (args->prev_state & STATE_EXIT_MASK) {   // the final switch-out
            offcpu.delete(&prev);
        } else {
            now = bpf_ktime_get_ns();
            struct offcpu_event s = {};
            s.start = now;
            s.pid = tgid;
            s.tid = prev;
            s.state = args->prev_state;
            struct offcpu_event *old = offcpu.lookup(&prev);
            if (old)
                __builtin_memcpy(old, &s, sizeof(s));
            else
                offcpu.update(&prev, &s);
        }
    }
    u32 next = args->next_pid;
    struct offcpu_event *e = offcpu.lookup(&next);
    if (e && e->start) {
        if (!now)
            now = bpf_ktime_get_ns();
        u64 d = now - e->start;
        if (d >= MIN_OFFCPU_NS) {
            e->end = now;
            u32 kind = (e->state == 0 || e->state == 0x100) ? SUM_PREEMPTED : SUM_BLOCKED;
            if (d >= config(CFG_ONEBY_WAIT_NS) || sum_add(e->pid, e->tid, kind, CLS_OFFCPU, 0, d, 0) != 0) {
                u64 flags = ring_flags(DROP_SCHED, sizeof(*e), SCHED_RING_PAGES * 4096);
                if (sched_events.ringbuf_output(e, sizeof(*e), flags) != 0)
                    count_drop(DROP_SCHED);
            }
        }
        e->start = 0;
    }
    return 0;
}

static __always_inline int note_wakeup(u32 tid)
{
    struct offcpu_event *e = offcpu.lookup(&tid);
    if (!e || !e->start || e->wakeup)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    e->wakeup = bpf_ktime_get_ns();
    e->waker_pid = id >> 32;
    e->waker_tid = (u32)id;
    bpf_get_current_comm(e->waker_comm, sizeof(e->waker_comm));
    return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup)
{
    return note_wakeup(args->pid);
}
