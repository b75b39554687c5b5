/* Benchmark target (bench/bench_cuda.py): calls one int f(void *) function of
 * a shared library in a tight loop. Prints {"ready": pid}; then for each line
 * "N probed|bare" on stdin waits until the function carries (probed) or lacks
 * (bare) a uprobe breakpoint (int3 in its first byte), makes N calls and
 * prints the elapsed nanoseconds. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: call_loop LIB SYMBOL\n");
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "%s\n", dlerror());
        return 1;
    }
    int (*f)(void *) = (int (*)(void *))dlsym(lib, argv[2]);
    if (!f) {
        fprintf(stderr, "%s\n", dlerror());
        return 1;
    }
    volatile unsigned char *first = (volatile unsigned char *)f;
    printf("{\"ready\": %d}\n", getpid());
    fflush(stdout);
    char line[128], mode[32];
    long n;
    while (fgets(line, sizeof line, stdin)) {
        if (sscanf(line, "%ld %31s", &n, mode) != 2)
            break;
        int want = strcmp(mode, "probed") == 0;
        for (int i = 0; i < 3000 && (*first == 0xCC) != want; i++)
            usleep(10000);
        if ((*first == 0xCC) != want) {
            printf("{\"error\": \"breakpoint state never became %s\"}\n", mode);
            fflush(stdout);
            continue;
        }
        long long t0 = now_ns();
        for (long i = 0; i < n; i++)
            f(NULL);
        long long t1 = now_ns();
        printf("{\"ns\": %lld}\n", t1 - t0);
        fflush(stdout);
    }
    return 0;
}
