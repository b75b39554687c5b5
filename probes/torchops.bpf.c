// PyTorch's step markers, one event per region, whatever the training loop:
// torch.autograd.profiler.record_function regions (every torch.optim
// optimizer's step, zero_grad and every DataLoader iterator's __next__ open
// one, profiler on or off) and each backward pass (autograd Engine::execute).
// uprobes on libtorch_cpu; a few calls per step, so each costs little.
#include <uapi/linux/ptrace.h>  // struct pt_regs
#include "torchops.h"

#ifndef TORCH_RING_PAGES
#define TORCH_RING_PAGES 128  // 512 KB: seconds of markers at thousands of steps per second
#endif

BPF_RINGBUF_OUTPUT(torch_events, TORCH_RING_PAGES);
BPF_HASH(torch_entering, u32, struct torch_open, 4096);     // tid -> region being entered
BPF_HASH(torch_regions, struct torch_key, struct torch_open, 16384);  // open regions
BPF_HASH(torch_backward, u32, u64, 4096);                    // tid -> backward start

// record_function_enter_new(const std::string& name, const optional<string>& args)
// returns an intrusive_ptr through the hidden slot in the first register.
int enter_region(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_tracked(id >> 32))
        return 0;
    struct torch_open o = {};
    o.start = bpf_ktime_get_ns();
    o.slot = PT_REGS_PARM1(ctx);
    u64 data = 0;  // std::string (libstdc++): its first word points at the characters
    bpf_probe_read_user(&data, sizeof(data), (void *)PT_REGS_PARM2(ctx));
    bpf_probe_read_user_str(o.name, sizeof(o.name), (void *)data);
    u32 tid = (u32)id;
    torch_entering.update(&tid, &o);
    return 0;
}

int leave_region(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct torch_open *o = torch_entering.lookup(&tid);
    if (!o)
        return 0;
    struct torch_key k = {id >> 32, 0, 0};
    bpf_probe_read_user(&k.handle, sizeof(k.handle), (void *)o->slot);
    if (k.handle)
        torch_regions.update(&k, o);
    torch_entering.delete(&tid);
    return 0;
}

// record_function_exit_new(const intrusive_ptr<PythonRecordFunction>&)
int enter_region_exit(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    struct torch_key k = {id >> 32, 0, 0};
    bpf_probe_read_user(&k.handle, sizeof(k.handle), (void *)PT_REGS_PARM1(ctx));
    struct torch_open *o = torch_regions.lookup(&k);
    if (!o)
        return 0;
    struct torch_event *e = torch_events.ringbuf_reserve(sizeof(struct torch_event));
    if (!e) {
        count_drop(DROP_TORCH);
        torch_regions.delete(&k);
        return 0;
    }
    e->start = o->start;
    e->end = bpf_ktime_get_ns();
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->kind = TORCH_REGION;
    e->pad = 0;
    __builtin_memcpy(e->name, o->name, sizeof(e->name));
    torch_regions.delete(&k);
    torch_events.ringbuf_submit(e, ring_flags(DROP_TORCH, sizeof(*e), TORCH_RING_PAGES * 4096));
    return 0;
}

int enter_backward(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_tracked(id >> 32))
        return 0;
    u32 tid = (u32)id;
    u64 now = bpf_ktime_get_ns();
    torch_backward.update(&tid, &now);
    return 0;
}

int leave_backward(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    u64 *start = torch_backward.lookup(&tid);
    if (!start)
        return 0;
    struct torch_event *e = torch_events.ringbuf_reserve(sizeof(struct torch_event));
    if (!e) {
        count_drop(DROP_TORCH);
        torch_backward.delete(&tid);
        return 0;
    }
    e->start = *start;
    e->end = bpf_ktime_get_ns();
    e->pid = id >> 32;
    e->tid = tid;
    e->kind = TORCH_BACKWARD;
    e->pad = 0;
    e->name[0] = 0;
    torch_backward.delete(&tid);
    torch_events.ringbuf_submit(e, ring_flags(DROP_TORCH, sizeof(*e), TORCH_RING_PAGES * 4096));
    return 0;
}
