// NCCL call event, shared by nccl.bpf.c and (through BCC) nccl.py. Like
// cuda.h: raw arguments, named on the Python side.
#ifndef GPUSCOPE_NCCL_H
#define GPUSCOPE_NCCL_H

// Function ids. nccl.py reads this list (lines "#define NC_<function> <id>").
#define NC_ncclAllReduce 1
#define NC_ncclBroadcast 2
#define NC_ncclReduce 3
#define NC_ncclAllGather 4
#define NC_ncclReduceScatter 5
#define NC_ncclSend 6
#define NC_ncclRecv 7
#define NC_ncclGroupStart 8
#define NC_ncclGroupEnd 9

#define NCCL_NX 2

// One call, emitted at its return. The span is the host-side enqueue, not
// the collective's run on the GPU.
struct nccl_event {
    u64 start;
    u64 end;
    u32 pid;
    u32 tid;
    u32 fn;        // NC_*
    s32 ret;       // ncclResult_t
    u64 a[6];      // integer argument registers: rdi rsi rdx rcx r8 r9
    u64 x[NCCL_NX];  // 7th and 8th arguments (stack), for the functions that have them
};

struct nccl_inflight {
    u64 start;
    u64 a[6];
    u64 x[NCCL_NX];
};

#endif
