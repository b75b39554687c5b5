// Events summed in the kernel instead of shipped one by one: per thread x
// kind x class counters, read (and diffed) by summed.py about twice a second.
// High-rate, low-value events go here: IO on pipes, sockets and other
// non-data fds, short off-CPU waits (see kernel.py's LEVELS for what else).
#ifndef GPUSCOPE_SUMMED_H
#define GPUSCOPE_SUMMED_H

// Classes (fd classes for IO, see io.bpf.c; off-CPU waits have their own).
#define CLS_UNKNOWN 0
#define CLS_DATA 1     // a regular path not under /dev, /proc, /sys
#define CLS_OTHER 2    // pipe, socket, eventfd, memfd, /dev/*, /proc/*, /sys/*, anon inode
#define CLS_OFFCPU 3

// Off-CPU kinds (IO kinds are io.h's IO_*).
#define SUM_BLOCKED 100
#define SUM_PREEMPTED 101

#ifndef MAX_SUMMED
#define MAX_SUMMED 16384
#endif

struct sum_key {
    u32 pid;
    u32 tid;
    u32 kind;
    u32 cls;
};

struct sum_val {
    u64 calls;
    u64 bytes;    // bytes moved (IO with a byte count)
    u64 ns;       // time in the syscall, or off CPU
    u64 errors;   // calls that returned an error
};

BPF_HASH(summed, struct sum_key, struct sum_val, MAX_SUMMED);
// Threads that exited: their counters are final and can be read and deleted.
BPF_HASH(summed_gone, u32, u32, 8192);

// Adds one event to its thread's counters; non-zero when the map is full
// (the caller then ships the event one by one: nothing is lost).
static __always_inline int sum_add(u32 pid, u32 tid, u32 kind, u32 cls, u64 bytes, u64 ns, int error)
{
    struct sum_key k = {pid, tid, kind, cls};
    struct sum_val zero = {};
    struct sum_val *v = summed.lookup_or_try_init(&k, &zero);
    if (!v)
        return -1;
    v->calls++;
    v->bytes += bytes;
    v->ns += ns;
    v->errors += error;
    return 0;
}

#endif
