// Process lifecycle of the tracked tree: forks, threads, exec, exit, renames.
// Uses tracepoint arguments and BPF helpers only: the kernel headers here do
// not match the running kernel, so no kernel struct is dereferenced.
#include "proc.h"

#ifndef PROC_RING_PAGES
#define PROC_RING_PAGES 16
#endif
#define CLONE_THREAD_FLAG 0x00010000

BPF_RINGBUF_OUTPUT(proc_events, PROC_RING_PAGES);

static __always_inline void proc_submit(struct proc_event *e, u32 size)
{
    // Lifecycle events are rare and order the others: woken for each.
    if (proc_events.ringbuf_output(e, size, 0) != 0)
        count_drop(DROP_PROC);
}

// task_newtask runs in the parent, for both threads and processes, and knows
// the clone flags, so the child's tgid is known without reading task_struct.
TRACEPOINT_PROBE(task, task_newtask)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!is_tracked(tgid))
        return 0;
    struct proc_event e = {};
    e.ts = bpf_ktime_get_ns();
    e.tid = args->pid;
    bpf_probe_read_kernel(e.comm, sizeof(e.comm), args->comm);
    if (args->clone_flags & CLONE_THREAD_FLAG) {
        e.kind = PROC_THREAD;
        e.pid = tgid;
    } else {
        u32 child = args->pid;
        tracked.update(&child, &tgid);  // the parent, for its fd classes
        e.kind = PROC_FORK;
        e.pid = child;
        e.ppid = tgid;
    }
    proc_submit(&e, offsetof(struct proc_event, filename));
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!is_tracked(tgid))
        return 0;
    struct proc_event e = {};
    e.ts = bpf_ktime_get_ns();
    e.kind = PROC_EXEC;
    e.pid = tgid;
    e.tid = args->pid;
    bpf_get_current_comm(e.comm, sizeof(e.comm));
    unsigned short loc = args->data_loc_filename & 0xFFFF;
    bpf_probe_read_kernel_str(e.filename, sizeof(e.filename), (char *)args + loc);
    proc_submit(&e, sizeof(e));
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    if (!is_tracked(tgid))
        return 0;
    struct proc_event e = {};
    e.ts = bpf_ktime_get_ns();
    e.kind = PROC_EXIT;
    e.pid = tgid;
    e.tid = tid;
    bpf_get_current_comm(e.comm, sizeof(e.comm));
    if (tid == tgid)
        tracked.delete(&tgid);
    u32 one = 1;
    summed_gone.update(&tid, &one);  // its sums are final: summed.py reads then deletes them
    proc_submit(&e, offsetof(struct proc_event, filename));
    return 0;
}

#ifdef HAVE_TASK_RENAME
TRACEPOINT_PROBE(task, task_rename)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!is_tracked(tgid))
        return 0;
    struct proc_event e = {};
    e.ts = bpf_ktime_get_ns();
    e.kind = PROC_RENAME;
    e.pid = tgid;
    e.tid = args->pid;
    bpf_probe_read_kernel(e.comm, sizeof(e.comm), args->newcomm);
    proc_submit(&e, offsetof(struct proc_event, filename));
    return 0;
}
#endif
