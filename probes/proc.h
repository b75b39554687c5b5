// Process lifecycle event, shared by proc.bpf.c and (through BCC) proc.py.
#ifndef GPUSCOPE_PROC_H
#define GPUSCOPE_PROC_H

#define PROC_FORK 1      // a new process (DataLoader worker, DDP rank)
#define PROC_THREAD 2    // a new thread in a tracked process
#define PROC_EXEC 3
#define PROC_EXIT 4      // a thread exited; tid == pid means the process
#define PROC_RENAME 5    // prctl(PR_SET_NAME) or a write to /proc/.../comm

#define PROC_FILENAME_LEN 256

struct proc_event {
    u64 ts;
    u32 kind;
    u32 pid;        // tgid of the process concerned
    u32 tid;        // thread concerned
    u32 ppid;       // for PROC_FORK: the parent tgid
    char comm[16];
    char filename[PROC_FILENAME_LEN];  // PROC_EXEC only
};

#endif
