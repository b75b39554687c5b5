// The set of processes being watched, shared by every gpuscope BPF program
// (they are compiled as one unit, see kernel.py). Keys are kernel tgids.
// User space seeds it from /proc; proc.bpf.c adds forked children in the
// kernel, so a DataLoader worker is followed from its first instruction.
// The value is the parent tgid for a child forked while tracked (0 for a
// process seeded from /proc): io.bpf.c falls back to the parent's fd classes.
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
#define DROP_TORCH 5
#define DROP_SLOTS 8

// Detail settings written by user space (KernelProbes.set_level) and read by
// the programs on every event, so detail changes without reloading (kernel.py
// LEVELS). All zero is only the moment between load and the first set_level.
#define CFG_ONEBY_WAIT_NS 0         // waits at least this long go one by one, shorter are summed: off-CPU
                                    // intervals, and syscalls on non-data fds (a pipe read that blocks)
#define CFG_FILE_SUMMED_NS 1        // data-file reads/writes shorter than this are summed (0: none)
#define CFG_IPC_LIFECYCLE_PER_S 2   // creations, closes, dups of non-data fds shipped one by one per
                                    // thread per second; the rest are summed
#define CFG_IO_ONEBY_PER_CPU_S 3    // data-file reads/writes shipped one by one per CPU per second; the
                                    // rest are summed (a flood costs a counter each, not a record); 0: no limit
#define CFG_SLOTS 8

BPF_HASH(tracked, u32, u32, MAX_TRACKED);
BPF_PERCPU_ARRAY(drops, u64, DROP_SLOTS);
BPF_ARRAY(gs_config, u64, CFG_SLOTS);

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

static __always_inline u64 config(int slot)
{
    u64 *v = gs_config.lookup(&slot);
    return v ? *v : 0;
}

// Ring buffer submit flags: no wakeup per record (the collector polls on a
// timer), but a forced one each time this CPU has submitted 1/(4 x CPUs) of
// the ring since its last, so a ring never fills unseen between polls.
// (BCC 0.26 has no ringbuf_query to ask the fill level itself.)
#ifndef GS_NCPUS
#define GS_NCPUS 1
#endif
BPF_PERCPU_ARRAY(ring_fill, u64, DROP_SLOTS);

static __always_inline u64 ring_flags(int slot, u64 size, u64 ring_bytes)
{
    u64 *n = ring_fill.lookup(&slot);
    if (!n)
        return 0;
    *n += size;
    if (*n < ring_bytes / (4 * GS_NCPUS))
        return BPF_RB_NO_WAKEUP;
    *n = 0;
    return BPF_RB_FORCE_WAKEUP;
}

#endif
