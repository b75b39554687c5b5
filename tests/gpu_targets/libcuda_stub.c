/* STAND-IN for the NVIDIA driver library libcuda.so.1, which cannot exist on
 * a machine without a GPU. It exports the driver entry points gpuscope probes,
 * with the driver's own symbol names (the _v2 ones included) and signatures,
 * so the driver uprobes fire on a real ELF mapped into a real process. It does
 * nothing: out-parameters get recognisable values, everything else returns
 * CUDA_ERROR_NO_DEVICE (100), and the synchronisations sleep 2 ms.
 * Memory is a bump allocator from 0xd000 in 4 KiB pages (so the first two
 * allocations are 0xd000 and 0xe000 when the first is one page) that keeps
 * its live allocations: freeing an unknown pointer is CUDA_ERROR_INVALID_VALUE,
 * and standin_allocated()/standin_peak() say what it holds and held at most.
 * $STUB_CUDA_ALLOC_US: each allocation takes that long (for a sampled stack).
 * Built by tests/test_cuda.py and test_cuda_gpu.py; used nowhere else. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

typedef int CUresult;
typedef uint64_t CUdeviceptr;
typedef void *CUfunction, *CUkernel, *CUmodule, *CUlibrary, *CUstream, *CUgraphExec;
#define NO_DEVICE 100
#define INVALID_VALUE_ 1

CUresult cuModuleGetFunction(CUfunction *f, CUmodule m, const char *name)
{ (void)m; (void)name; *f = (CUfunction)0xf00dULL; return 0; }
CUresult cuLibraryGetKernel(CUkernel *k, CUlibrary l, const char *name)
{ (void)l; (void)name; *k = (CUkernel)0xbeefULL; return 0; }
/* Graphs: a stream in capture records launches as nodes (they succeed and
 * do not run); EndCapture returns graph 0x6000 + n, instantiation exec
 * 0x7000 + n; launching a known exec succeeds. standin_graph_nodes(g) and
 * standin_graph_launches(exec) say what happened. */
#define MAX_GRAPHS 16
static CUstream capturing;
static unsigned capture_nodes, graph_nodes[MAX_GRAPHS], exec_graph[MAX_GRAPHS], exec_launches[MAX_GRAPHS];
static unsigned n_graphs, n_execs;

static CUresult enqueue(CUstream s, unsigned kernels);
static CUresult stub_launch(CUstream s)
{
    if (capturing && s == capturing) { capture_nodes++; return 0; }
    return enqueue(s, 1);
}

CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                        unsigned by, unsigned bz, unsigned shared, CUstream s, void **params,
                        void **extra)
{ (void)f; (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)shared;
  (void)params; (void)extra; return stub_launch(s); }
typedef struct { unsigned g[3], b[3], smem; CUstream stream; void *attrs; unsigned nattrs; } CUlaunchConfig;
CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **params, void **extra)
{ (void)f; (void)params; (void)extra; return stub_launch(config->stream); }
CUresult cuStreamBeginCapture_v2(CUstream s, int mode)
{ (void)mode; if (capturing || !s) return INVALID_VALUE_; capturing = s; capture_nodes = 0; return 0; }
CUresult cuStreamEndCapture(CUstream s, void **graph)
{
    if (!capturing || s != capturing || n_graphs >= MAX_GRAPHS) return INVALID_VALUE_;
    capturing = 0;
    graph_nodes[n_graphs] = capture_nodes;
    *graph = (void *)(uintptr_t)(0x6000 + n_graphs++);
    return 0;
}
CUresult cuGraphInstantiateWithFlags(void **exec, void *graph, unsigned long long flags)
{
    unsigned g = (unsigned)((uintptr_t)graph - 0x6000);
    (void)flags;
    if (g >= n_graphs || n_execs >= MAX_GRAPHS) return INVALID_VALUE_;
    exec_graph[n_execs] = g;
    *exec = (void *)(uintptr_t)(0x7000 + n_execs++);
    return 0;
}
unsigned standin_graph_nodes(void *graph) { return graph_nodes[(uintptr_t)graph - 0x6000]; }
unsigned standin_graph_launches(void *exec) { return exec_launches[(uintptr_t)exec - 0x7000]; }
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void *s, size_t n) { (void)d; (void)s; (void)n; return NO_DEVICE; }
CUresult cuMemcpyDtoH_v2(void *d, CUdeviceptr s, size_t n) { (void)d; (void)s; (void)n; return NO_DEVICE; }
CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) { (void)d; (void)s; (void)n; return NO_DEVICE; }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void *s, size_t n, CUstream st)
{ (void)d; (void)s; (void)n; (void)st; return NO_DEVICE; }
CUresult cuMemcpyDtoHAsync_v2(void *d, CUdeviceptr s, size_t n, CUstream st)
{ (void)d; (void)s; (void)n; (void)st; return NO_DEVICE; }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st)
{ (void)d; (void)s; (void)n; (void)st; return NO_DEVICE; }
CUresult cuMemcpy(CUdeviceptr d, CUdeviceptr s, size_t n) { (void)d; (void)s; (void)n; return NO_DEVICE; }
CUresult cuMemcpyAsync(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st)
{ (void)d; (void)s; (void)n; (void)st; return NO_DEVICE; }
/* A GPU clock: with $STUB_KERNEL_US set, a launch outside a capture succeeds
 * and keeps its stream busy that long after the stream's earlier work (a
 * graph launch: that long per node); a synchronisation sleeps until the
 * work it waits for is done, then returns 0. standin_stream_busy_ns(s) is
 * how long s was busy, standin_stream_late_ns(s) how long after its work was
 * done the syncs that waited for it returned (their own 2 ms, oversleep).
 * Without it, launches fail and syncs sleep 2 ms and fail (NO_DEVICE). */
#define MAX_STREAMS 8
static CUstream st_id[MAX_STREAMS];
static uint64_t st_end[MAX_STREAMS], st_busy[MAX_STREAMS], st_late[MAX_STREAMS];
static uint64_t st_pending[MAX_STREAMS];   /* work not yet waited for */

static uint64_t now_ns(void)
{ struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return (uint64_t)t.tv_sec * 1000000000ULL + t.tv_nsec; }

static long kernel_ns(void) { const char *v = getenv("STUB_KERNEL_US"); return v ? atol(v) * 1000L : 0; }

static int stream_slot(CUstream s)
{
    for (int i = 0; i < MAX_STREAMS; i++)
        if (st_id[i] == s || !st_id[i]) { st_id[i] = s; return i; }
    return -1;
}

static CUresult enqueue(CUstream s, unsigned kernels)
{
    long k = kernel_ns();
    int i = stream_slot(s);
    if (!k || i < 0) return NO_DEVICE;
    uint64_t t = now_ns(), begin = st_end[i] > t ? st_end[i] : t;
    st_end[i] = begin + (uint64_t)k * kernels;
    st_busy[i] += st_end[i] - begin;
    st_pending[i] = 1;
    return 0;
}

static void wait_until(uint64_t t)
{
    for (uint64_t n = now_ns(); n < t; n = now_ns()) {
        struct timespec d = {0, (long)(t - n)};
        nanosleep(&d, NULL);
    }
}

static void waited(int i, uint64_t ret)
{ if (st_pending[i]) { st_late[i] += ret - st_end[i]; st_pending[i] = 0; } }

CUresult cuStreamSynchronize(CUstream s)
{
    int i = stream_slot(s);
    if (!kernel_ns() || i < 0) { usleep(2000); return NO_DEVICE; }
    wait_until(st_end[i]);
    usleep(2000);
    waited(i, now_ns());
    return 0;
}
CUresult cuCtxSynchronize(void)
{
    uint64_t end = 0;
    for (int i = 0; i < MAX_STREAMS; i++)
        end = st_end[i] > end ? st_end[i] : end;
    wait_until(end);
    usleep(2000);
    uint64_t t = now_ns();
    for (int i = 0; i < MAX_STREAMS; i++)
        waited(i, t);
    return kernel_ns() ? 0 : NO_DEVICE;
}
uint64_t standin_stream_busy_ns(CUstream s) { int i = stream_slot(s); return i < 0 ? 0 : st_busy[i]; }
uint64_t standin_stream_late_ns(CUstream s) { int i = stream_slot(s); return i < 0 ? 0 : st_late[i]; }
#define INVALID_VALUE 1
#define MAX_LIVE 256
static CUdeviceptr next_ptr = 0xd000, live_ptr[MAX_LIVE];
static size_t live_size[MAX_LIVE], allocated, peak;

static CUresult stub_alloc(CUdeviceptr *p, size_t n)
{
    const char *us = getenv("STUB_CUDA_ALLOC_US");
    if (us)
        usleep((useconds_t)atoi(us));
    for (int i = 0; i < MAX_LIVE; i++)
        if (!live_ptr[i]) {
            live_ptr[i] = *p = next_ptr;
            live_size[i] = n;
            next_ptr += (n + 4095) / 4096 * 4096;
            allocated += n;
            peak = allocated > peak ? allocated : peak;
            return 0;
        }
    return 2;  /* CUDA_ERROR_OUT_OF_MEMORY */
}

static CUresult stub_free(CUdeviceptr p)
{
    for (int i = 0; i < MAX_LIVE; i++)
        if (p && live_ptr[i] == p) {
            live_ptr[i] = 0;
            allocated -= live_size[i];
            return 0;
        }
    return INVALID_VALUE;
}

size_t standin_allocated(void) { return allocated; }
size_t standin_peak(void) { return peak; }
CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) { return stub_alloc(p, n); }
CUresult cuMemFree_v2(CUdeviceptr p) { return stub_free(p); }
CUresult cuMemAllocAsync(CUdeviceptr *p, size_t n, CUstream s) { (void)s; return stub_alloc(p, n); }
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) { (void)s; return stub_free(p); }
CUresult cuGraphLaunch(CUgraphExec g, CUstream s)
{
    unsigned e = (unsigned)((uintptr_t)g - 0x7000);
    if (e >= n_execs) return NO_DEVICE;
    exec_launches[e]++;
    enqueue(s, graph_nodes[exec_graph[e]]);
    return 0;
}
