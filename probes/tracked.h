// The set of processes being watched, shared by every gpuscope BPF program
// (they are compiled as one unit, see kernel.py). Keys are kernel tgids.
// User space seeds it from /proc; proc.bpf.c adds forked children in the
// kernel, so a DataLoader worker is followed from its first instruction.
#ifndef GPUSCOPE_TRACKED_H
#define GPUSCOPE_TRACKED_H

#ifndef MAX_TRACKED
#define MAX_TRACKED 8192
#endif

// Indices into the per-CPU loss counters: one per ring buffer.
#define DROP_IO 0
#define DROP_SCHED 1
#define DROP_PROC 2
#define DROP_CUDA 3
#define DROP_NCCL 4
#define DROP_SLOTS 8

BPF_HASH(tracked, u32, u32, MAX_TRACKED);
BPF_PERCPU_ARRAY(drops, u64, DROP_SLOTS);

static __always_inline int is_tracked(u32 tgid)
{
    return tracked.lookup(&tgid) != NULL;
}

static __always_inline void count_drop(int slot)
{
    u64 *n = drops.lookup(&slot);
    if (n)
        (*n)++;
}

#endif
