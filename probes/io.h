// IO syscall event, shared by io.bpf.c and (through BCC) io.py.
#ifndef GPUSCOPE_IO_H
#define GPUSCOPE_IO_H

// Syscall kinds; io.py names them from this list (IO_KINDS).
#define IO_OPENAT 1
#define IO_READ 2
#define IO_PREAD64 3
#define IO_READV 4
#define IO_PREADV 5
#define IO_WRITE 6
#define IO_PWRITE64 7
#define IO_WRITEV 8
#define IO_CLOSE 9
#define IO_MMAP 10
#define IO_STATX 11
#define IO_NEWFSTATAT 12
#define IO_GETDENTS64 13
#define IO_DUP 14
#define IO_PREADV2 15
#define IO_OPENAT2 16
// Syscalls that create fds without a path; traced so every fd is named from
// its creation (a guess from /proc at decode time could name a later file).
#define IO_PIPE2 17       // count, offset = the two fds
#define IO_SOCKET 18      // socket, accept, accept4: ret = the fd
#define IO_SOCKETPAIR 19  // count, offset = the two fds
#define IO_EVENTFD 20
#define IO_MEMFD 21       // path = the memfd's name

#define IO_PATH_LEN 256

struct io_event {
    u64 start;
    u64 end;
    u32 pid;
    u32 tid;
    u32 kind;
    s32 fd;          // the fd operated on (dirfd for openat/statx)
    s64 ret;         // return value: bytes, new fd, or -errno
    u64 count;       // bytes asked for (read/write), length (mmap), vector count (readv)
    s64 offset;      // pread/pwrite/preadv/mmap offset, -1 when none
    char path[IO_PATH_LEN];  // openat/statx/newfstatat only
};

// What a syscall's entry leaves for its exit, per thread.
struct io_inflight {
    u64 start;
    u64 count;
    s64 offset;
    const char *path;
    const int *fdpair;   // pipe2/socketpair: where the kernel writes the two fds
    s32 fd;
    u32 kind;
    u32 cls;             // class of fd at entry (summed.h CLS_*)
};

// fd -> class (summed.h CLS_*) of each tracked process's open fds: set where
// fds are made, copied by dup, deleted at close, seeded from /proc by io.py.
struct fd_key {
    u32 tgid;
    s32 fd;
};

#endif
