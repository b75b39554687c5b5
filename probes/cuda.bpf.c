// CUDA runtime (libcudart) and driver (libcuda) calls of the tracked tree.
// One uprobe + uretprobe per function; entry saves the argument registers
// (and, for a few functions, the stack arguments or the launch config struct)
// per (thread, function), return emits one ring buffer event. Keyed by
// function too, so a runtime call and the driver call it makes nest.
// Which symbol each program is attached to is decided by cuda.py.
#include <uapi/linux/ptrace.h>  // struct pt_regs
#include "cuda.h"

#ifndef CUDA_RING_PAGES
#define CUDA_RING_PAGES 256
#endif

BPF_RINGBUF_OUTPUT(cuda_events, CUDA_RING_PAGES);
BPF_HASH(cuda_inflight, u64, struct cuda_inflight, 16384);

static __always_inline int cuda_enter(struct pt_regs *ctx, u32 fn, int xmode)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_tracked(id >> 32))
        return 0;
    struct cuda_inflight c = {};
    c.a[0] = PT_REGS_PARM1(ctx);
    c.a[1] = PT_REGS_PARM2(ctx);
    c.a[2] = PT_REGS_PARM3(ctx);
    c.a[3] = PT_REGS_PARM4(ctx);
    c.a[4] = PT_REGS_PARM5(ctx);
    c.a[5] = PT_REGS_PARM6(ctx);
    if (xmode == X_STACK)  // skip the return address
        bpf_probe_read_user(c.x, 3 * sizeof(u64), (void *)(PT_REGS_SP(ctx) + 8));
    else if (xmode == X_CONFIG)
        bpf_probe_read_user(c.x, sizeof(c.x), (void *)c.a[0]);
    u64 key = (id << 32) | fn;
    c.start = bpf_ktime_get_ns();
    cuda_inflight.update(&key, &c);
    return 0;
}

static __always_inline int cuda_leave(struct pt_regs *ctx, u32 fn, int rmode)
{
    u64 end = bpf_ktime_get_ns();
    u64 id = bpf_get_current_pid_tgid();
    u64 key = (id << 32) | fn;
    struct cuda_inflight *c = cuda_inflight.lookup(&key);
    if (!c)
        return 0;
    struct cuda_event *e = cuda_events.ringbuf_reserve(sizeof(struct cuda_event));
    if (!e) {
        count_drop(DROP_CUDA);
        cuda_inflight.delete(&key);
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
    if (rmode == R_OUT || rmode == R_NAME)
        bpf_probe_read_user(&e->x[0], sizeof(u64), (void *)c->a[0]);
    else if (rmode == R_OUT2)
        bpf_probe_read_user(&e->x[0], sizeof(u64), (void *)c->a[1]);
    if (rmode == R_NAME)
        bpf_probe_read_user_str(e->name, sizeof(e->name), (void *)c->a[2]);
    cuda_inflight.delete(&key);
    cuda_events.ringbuf_submit(e, 0);
    return 0;
}

#define CUDA_PROBE(NAME, XMODE, RMODE)                                                    \
    int enter_##NAME(struct pt_regs *ctx) { return cuda_enter(ctx, FN_##NAME, XMODE); }  \
    int leave_##NAME(struct pt_regs *ctx) { return cuda_leave(ctx, FN_##NAME, RMODE); }

// cudaLaunchKernel(func, dim3 grid, dim3 block, args, sharedMem, stream): each dim3
// travels in two registers (x|y<<32, z); sharedMem and stream are on the stack.
CUDA_PROBE(cudaLaunchKernel, X_STACK, R_NONE)
CUDA_PROBE(cudaLaunchKernelExC, X_CONFIG, R_NONE)
CUDA_PROBE(cudaMemcpy, X_NONE, R_NONE)
CUDA_PROBE(cudaMemcpyAsync, X_NONE, R_NONE)
CUDA_PROBE(cudaMemset, X_NONE, R_NONE)
CUDA_PROBE(cudaMemsetAsync, X_NONE, R_NONE)
CUDA_PROBE(cudaMemset2D, X_NONE, R_NONE)
CUDA_PROBE(cudaMemset2DAsync, X_NONE, R_NONE)
CUDA_PROBE(cudaStreamSynchronize, X_NONE, R_NONE)
CUDA_PROBE(cudaDeviceSynchronize, X_NONE, R_NONE)
CUDA_PROBE(cudaEventSynchronize, X_NONE, R_NONE)
CUDA_PROBE(cudaStreamWaitEvent, X_NONE, R_NONE)
CUDA_PROBE(cudaMalloc, X_NONE, R_OUT)
CUDA_PROBE(cudaFree, X_NONE, R_NONE)
CUDA_PROBE(cudaMallocAsync, X_NONE, R_OUT)
CUDA_PROBE(cudaFreeAsync, X_NONE, R_NONE)
CUDA_PROBE(cudaGraphLaunch, X_NONE, R_NONE)
// Graphs: capture begin(stream, mode) / end(stream, &graph), instantiate(&exec, graph, ...).
CUDA_PROBE(cudaStreamBeginCapture, X_NONE, R_NONE)
CUDA_PROBE(cudaStreamEndCapture, X_NONE, R_OUT2)
CUDA_PROBE(cudaGraphInstantiate, X_NONE, R_OUT)
CUDA_PROBE(cudaGraphInstantiateWithFlags, X_NONE, R_OUT)

// cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra): bz,
// shared and stream are on the stack.
CUDA_PROBE(cuLaunchKernel, X_STACK, R_NONE)
CUDA_PROBE(cuLaunchKernelEx, X_CONFIG, R_NONE)
CUDA_PROBE(cuMemcpyHtoD, X_NONE, R_NONE)
CUDA_PROBE(cuMemcpyDtoH, X_NONE, R_NONE)
CUDA_PROBE(cuMemcpyDtoD, X_NONE, R_NONE)
CUDA_PROBE(cuMemcpyHtoDAsync, X_NONE, R_NONE)
CUDA_PROBE(cuMemcpyDtoHAsync, X_NONE, R_NONE)
CUDA_PROBE(cuMemcpyDtoDAsync, X_NONE, R_NONE)
CUDA_PROBE(cuMemcpy, X_NONE, R_NONE)
CUDA_PROBE(cuMemcpyAsync, X_NONE, R_NONE)
CUDA_PROBE(cuStreamSynchronize, X_NONE, R_NONE)
CUDA_PROBE(cuCtxSynchronize, X_NONE, R_NONE)
CUDA_PROBE(cuMemAlloc, X_NONE, R_OUT)
CUDA_PROBE(cuMemFree, X_NONE, R_NONE)
CUDA_PROBE(cuMemAllocAsync, X_NONE, R_OUT)
CUDA_PROBE(cuMemFreeAsync, X_NONE, R_NONE)
CUDA_PROBE(cuGraphLaunch, X_NONE, R_NONE)
CUDA_PROBE(cuModuleGetFunction, X_NONE, R_NAME)
CUDA_PROBE(cuLibraryGetKernel, X_NONE, R_NAME)
CUDA_PROBE(cuStreamBeginCapture, X_NONE, R_NONE)
CUDA_PROBE(cuStreamEndCapture, X_NONE, R_OUT2)
CUDA_PROBE(cuGraphInstantiate, X_NONE, R_OUT)
