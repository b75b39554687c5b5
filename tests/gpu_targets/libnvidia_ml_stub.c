/* STAND-IN for NVIDIA's libnvidia-ml.so.1 (NVML), which needs a GPU driver
 * this machine cannot have. It exports only the functions gpuscope's NVML
 * poller calls through pynvml, with NVML's signatures, returning scripted
 * values so pynvml's own code runs unchanged:
 *   2 GPUs, "Stub GPU 0" / "Stub GPU 1";
 *   utilisation gpu 40 + 10*i %, memory 20 + i %; memory used (i+1) GiB;
 *   power 150000 + 1000*i mW; SM clock 1410 MHz; temperature 61 + i C;
 *   PCIe tx 2048 KB/s, rx 4096 KB/s;
 *   GPU 1 runs the process $STUB_NVML_PID with 512 MiB, SM 77 %, memory 33 %;
 *   GPU 0 runs nothing and does not support per-process utilisation.
 * Built by tests/test_nvml.py; used nowhere else. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;
#define OK 0
#define INVALID_ARGUMENT 2
#define NOT_SUPPORTED 3
#define INSUFFICIENT_SIZE 7

typedef struct { unsigned gpu, memory; } nvmlUtilization_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned pid; unsigned long long usedGpuMemory; unsigned gi, ci; } nvmlProcessInfo_t;
typedef struct { unsigned pid; unsigned long long timeStamp; unsigned sm, mem, enc, dec; } nvmlSample_t;

static int gpu(nvmlDevice_t d) { return (int)(uintptr_t)d - 1; }
static unsigned target(void) { const char *s = getenv("STUB_NVML_PID"); return s ? (unsigned)atoi(s) : 0; }

nvmlReturn_t nvmlInitWithFlags(unsigned flags) { (void)flags; return OK; }
nvmlReturn_t nvmlShutdown(void) { return OK; }
const char *nvmlErrorString(nvmlReturn_t r) { return r == NOT_SUPPORTED ? "Not Supported" : "stub error"; }
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned *n) { *n = 2; return OK; }
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned i, nvmlDevice_t *d)
{ if (i > 1) return INVALID_ARGUMENT; *d = (nvmlDevice_t)(uintptr_t)(i + 1); return OK; }
nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned len)
{ strncpy(name, gpu(d) ? "Stub GPU 1" : "Stub GPU 0", len); return OK; }
nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u)
{ u->gpu = 40 + 10 * gpu(d); u->memory = 20 + gpu(d); return OK; }
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m)
{ m->total = 80ULL << 30; m->used = (unsigned long long)(gpu(d) + 1) << 30; m->free = m->total - m->used; return OK; }
nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned *mw) { *mw = 150000 + 1000 * gpu(d); return OK; }
nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t d, int type, unsigned *mhz)
{ (void)d; if (type != 1) return NOT_SUPPORTED; *mhz = 1410; return OK; }
nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned *t)
{ if (sensor != 0) return NOT_SUPPORTED; *t = 61 + gpu(d); return OK; }
nvmlReturn_t nvmlDeviceGetPcieThroughput(nvmlDevice_t d, int counter, unsigned *kbs)
{ (void)d; *kbs = counter == 0 ? 2048 : 4096; return OK; }
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned *n, nvmlProcessInfo_t *p)
{
    unsigned have = gpu(d) == 1 ? 1 : 0;
    if (have == 0) { *n = 0; return OK; }
    if (!p || *n < have) { *n = have; return INSUFFICIENT_SIZE; }
    memset(p, 0, sizeof(*p));
    p->pid = target();
    p->usedGpuMemory = 512ULL << 20;
    *n = have;
    return OK;
}
nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t d, nvmlSample_t *s, unsigned *n,
                                             unsigned long long since)
{
    (void)since;
    if (gpu(d) == 0) return NOT_SUPPORTED;
    if (!s || *n < 1) { *n = 1; return INSUFFICIENT_SIZE; }
    memset(s, 0, sizeof(*s));
    s->pid = target(); s->timeStamp = 1000; s->sm = 77; s->mem = 33;
    *n = 1;
    return OK;
}
