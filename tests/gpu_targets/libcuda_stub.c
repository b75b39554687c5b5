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

static CUresult stub_launch(CUstream s)
{
    if (capturing && s == capturing) { capture_nodes++; return 0; }
    return NO_DEVICE;
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
CUresult cuStreamSynchronize(CUstream s) { (void)s; usleep(2000); return NO_DEVICE; }
CUresult cuCtxSynchronize(void) { usleep(2000); return NO_DEVICE; }
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
    (void)s;
    if (e >= n_execs) return NO_DEVICE;
    exec_launches[e]++;
    return 0;
}
