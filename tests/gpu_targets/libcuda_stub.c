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

CUresult cuModuleGetFunction(CUfunction *f, CUmodule m, const char *name)
{ (void)m; (void)name; *f = (CUfunction)0xf00dULL; return 0; }
CUresult cuLibraryGetKernel(CUkernel *k, CUlibrary l, const char *name)
{ (void)l; (void)name; *k = (CUkernel)0xbeefULL; return 0; }
CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                        unsigned by, unsigned bz, unsigned shared, CUstream s, void **params,
                        void **extra)
{ (void)f; (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)shared; (void)s;
  (void)params; (void)extra; return NO_DEVICE; }
CUresult cuLaunchKernelEx(const void *config, CUfunction f, void **params, void **extra)
{ (void)config; (void)f; (void)params; (void)extra; return NO_DEVICE; }
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
CUresult cuGraphLaunch(CUgraphExec g, CUstream s) { (void)g; (void)s; return NO_DEVICE; }
