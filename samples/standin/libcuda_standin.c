/* A stand-in for the GPU driver, which cannot exist on machines without a
 * GPU: exports cuMemcpyHtoD_v2 (and cuInit) as libcuda.so.1 so that
 * samples/train.py --h2d-standin can make synchronous host-to-device copies
 * that take real time, as a pageable copy over PCIe would. It copies into a
 * host buffer and then waits out the rest of bytes / bandwidth.
 * Built by samples/scenarios.py:  gcc -shared -fPIC -o libcuda.so.1 ...  */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef STANDIN_BYTES_PER_S
#define STANDIN_BYTES_PER_S 2000000000.0  /* a slow, pageable PCIe copy */
#endif

static char *device_memory;
static size_t device_size;

int cuInit(unsigned flags) { (void)flags; return 0; }

int cuMemcpyHtoD_v2(unsigned long long dst, const void *src, size_t n)
{
    (void)dst;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (n > device_size) {
        free(device_memory);
        device_memory = malloc(n);
        device_size = device_memory ? n : 0;
    }
    if (device_memory)
        memcpy(device_memory, src, n);
    double want = n / STANDIN_BYTES_PER_S;
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double spent = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
        if (spent >= want)
            break;
        struct timespec rest = {0, (long)((want - spent) * 1e9)};
        nanosleep(&rest, NULL);
    }
    return 0;
}
