// CUDA runtime and driver call event, shared by cuda.bpf.c and (through BCC)
// cuda.py. Arguments travel raw; cuda.py gives them names, so the BPF side
// does no string or struct work beyond a few fixed-size reads.
#ifndef GPUSCOPE_CUDA_H
#define GPUSCOPE_CUDA_H

// Function ids. cuda.py reads this list (lines "#define FN_<function> <id>"),
// so each id is written once. Runtime 1-49, driver 50-99.
#define FN_cudaLaunchKernel 1
#define FN_cudaLaunchKernelExC 2
#define FN_cudaMemcpy 3
#define FN_cudaMemcpyAsync 4
#define FN_cudaMemset 5
#define FN_cudaMemsetAsync 6
#define FN_cudaMemset2D 7
#define FN_cudaMemset2DAsync 8
#define FN_cudaStreamSynchronize 9
#define FN_cudaDeviceSynchronize 10
#define FN_cudaEventSynchronize 11
#define FN_cudaStreamWaitEvent 12
#define FN_cudaMalloc 13
#define FN_cudaFree 14
#define FN_cudaMallocAsync 15
#define FN_cudaFreeAsync 16
#define FN_cudaGraphLaunch 17
#define FN_cudaStreamBeginCapture 18
#define FN_cudaStreamEndCapture 19
#define FN_cudaGraphInstantiate 20
#define FN_cudaGraphInstantiateWithFlags 21

#define FN_cuLaunchKernel 50
#define FN_cuLaunchKernelEx 51
#define FN_cuMemcpyHtoD 52
#define FN_cuMemcpyDtoH 53
#define FN_cuMemcpyDtoD 54
#define FN_cuMemcpyHtoDAsync 55
#define FN_cuMemcpyDtoHAsync 56
#define FN_cuMemcpyDtoDAsync 57
#define FN_cuMemcpy 58
#define FN_cuMemcpyAsync 59
#define FN_cuStreamSynchronize 60
#define FN_cuCtxSynchronize 61
#define FN_cuMemAlloc 62
#define FN_cuMemFree 63
#define FN_cuMemAllocAsync 64
#define FN_cuMemFreeAsync 65
#define FN_cuGraphLaunch 66
#define FN_cuModuleGetFunction 67
#define FN_cuLibraryGetKernel 68
#define FN_cuStreamBeginCapture 69
#define FN_cuStreamEndCapture 70
#define FN_cuGraphInstantiate 71

// What the entry probe saves besides the six register arguments (x[]).
#define X_NONE 0
#define X_STACK 1   // x[0..2] = the 7th..9th integer arguments (on the stack)
#define X_CONFIG 2  // x[0..4] = the first 40 bytes of the struct a[0] points to
// What the return probe adds.
#define R_NONE 0
#define R_OUT 1     // x[0] = *(u64 *)a[0]: the pointer/handle an out-parameter received
#define R_NAME 2    // R_OUT, and name = the string a[2] points to (cuModuleGetFunction)
#define R_OUT2 3    // x[0] = *(u64 *)a[1]: the second argument is the out-parameter

#define CUDA_NX 5
#define CUDA_NAME_LEN 64

// One call, emitted at its return.
struct cuda_event {
    u64 start;
    u64 end;
    u32 pid;
    u32 tid;
    u32 fn;          // FN_*
    s32 ret;         // cudaError_t / CUresult
    u64 a[6];        // integer argument registers: rdi rsi rdx rcx r8 r9
    u64 x[CUDA_NX];  // see X_* and R_*
    char name[CUDA_NAME_LEN];  // R_NAME only; otherwise undefined
};

// What an entry leaves for its return, per (thread, function).
struct cuda_inflight {
    u64 start;
    u64 a[6];
    u64 x[CUDA_NX];
};

#endif
