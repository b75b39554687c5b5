// NCCL collectives and point-to-point calls of the tracked tree (libnccl):
// uprobe + uretprobe, arguments saved per (thread, function) at entry, one
// ring buffer event at return. Host-side enqueue time only.
#include <uapi/linux/ptrace.h>  // struct pt_regs
#include "nccl.h"

#ifndef NCCL_RING_PAGES
#define NCCL_RING_PAGES 64
#endif

BPF_RINGBUF_OUTPUT(nccl_events, NCCL_RING_PAGES);
BPF_HASH(nccl_inflight, u64, struct nccl_inflight, 4096);

static __always_inline int nccl_enter(struct pt_regs *ctx, u32 fn, int stack_args)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_tracked(id >> 32))
        return 0;
    struct nccl_inflight c = {};
    c.a[0] = PT_REGS_PARM1(ctx);
    c.a[1] = PT_REGS_PARM2(ctx);
    c.a[2] = PT_REGS_PARM3(ctx);
    c.a[3] = PT_REGS_PARM4(ctx);
    c.a[4] = PT_REGS_PARM5(ctx);
    c.a[5] = PT_REGS_PARM6(ctx);
    if (stack_args)  // skip the return address
        bpf_probe_read_user(c.x, sizeof(c.x), (void *)(PT_REGS_SP(ctx) + 8));
    u64 key = (id << 32) | fn;
    c.start = bpf_ktime_get_ns();
    nccl_inflight.update(&key, &c);
    return 0;
}

static __always_inline int nccl_leave(struct pt_regs *ctx, u32 fn)
{
    u64 end = bpf_ktime_get_ns();
    u64 id = bpf_get_current_pid_tgid();
    u64 key = (id << 32) | fn;
    struct nccl_inflight *c = nccl_inflight.lookup(&key);
    if (!c)
        return 0;
    struct nccl_event *e = nccl_events.ringbuf_reserve(sizeof(struct nccl_event));
    if (!e) {
        count_drop(DROP_NCCL);
        nccl_inflight.delete(&key);
        return 0;
    }
    e->start = c->start;
    e->end = end;
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->fn = fn;
    e->ret = (s32)PT_REGS_RC(ctx);
    __builtin_memcpy(e->a, c->a, sizeof(e->a));
    __builtin_memcpy(e->x, c->x, sizeof(e->x));
    nccl_inflight.delete(&key);
    nccl_events.ringbuf_submit(e, 0);
    return 0;
}

#define NCCL_PROBE(NAME, STACK)                                                          \
    int enter_##NAME(struct pt_regs *ctx) { return nccl_enter(ctx, NC_##NAME, STACK); }  \
    int leave_##NAME(struct pt_regs *ctx) { return nccl_leave(ctx, NC_##NAME); }

NCCL_PROBE(ncclAllReduce, 1)      // (send, recv, count, type, op, comm, [stream])
NCCL_PROBE(ncclBroadcast, 1)      // (send, recv, count, type, root, comm, [stream])
NCCL_PROBE(ncclReduce, 1)         // (send, recv, count, type, op, root, [comm, stream])
NCCL_PROBE(ncclAllGather, 0)      // (send, recv, sendcount, type, comm, stream)
NCCL_PROBE(ncclReduceScatter, 1)  // (send, recv, recvcount, type, op, comm, [stream])
NCCL_PROBE(ncclSend, 0)           // (send, count, type, peer, comm, stream)
NCCL_PROBE(ncclRecv, 0)           // (recv, count, type, peer, comm, stream)
NCCL_PROBE(ncclGroupStart, 0)
NCCL_PROBE(ncclGroupEnd, 0)
