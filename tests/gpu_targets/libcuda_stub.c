/* STAND-IN for the NVIDIA driver library libcuda.so.1, which cannot exist on
 * a machine without a GPU. It exports the driver entry points gpuscope probes,
 * with the driver's own symbol names (the _v2 ones included) and signatures,
 * so the driver uprobes fire on a real ELF mapped into a real process. It does
 * nothing: out-parameters get recognisable values, everything else returns
 * CUDA_ERROR_NO_DEVICE (100), and the synchronisations sleep 2 ms. Built by
 * tests/test_cuda.py; used nowhere else. */
#include <stddef.h>
#include <stdint.h>
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
CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) { (void)n; *p = 0xd000; return 0; }
CUresult cuMemFree_v2(CUdeviceptr p) { (void)p; return 0; }
CUresult cuMemAllocAsync(CUdeviceptr *p, size_t n, CUstream s) { (void)n; (void)s; *p = 0xe000; return 0; }
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) { (void)p; (void)s; return 0; }
CUresult cuGraphLaunch(CUgraphExec g, CUstream s) { (void)g; (void)s; return NO_DEVICE; }
