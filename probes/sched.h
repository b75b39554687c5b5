// Off-CPU interval of a tracked thread, shared by sched.bpf.c and sched.py.
#ifndef GPUSCOPE_SCHED_H
#define GPUSCOPE_SCHED_H

struct offcpu_event {
    u64 start;       // switched out
    u64 end;         // switched back in
    u64 wakeup;      // when it was woken (0: not seen, e.g. preempted)
    u32 pid;
    u32 tid;
    u32 waker_pid;   // who woke it (0: not seen)
    u32 waker_tid;
    s64 state;       // prev_state at switch-out (see sched.py)
    char waker_comm[16];
};

#endif
