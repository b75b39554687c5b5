// IO syscalls of the tracked tree (what a data loader does: open, stat, read,
// map, write, close) with latency, bytes and return code. Entry saves the
// arguments per thread; exit emits one event. Paths are read from openat's
// own argument, never from kernel structs (headers do not match the kernel).
#include <linux/fs.h>  // rwf_t, in the preadv2 tracepoint's arguments
#include "io.h"

#ifndef IO_RING_PAGES
#define IO_RING_PAGES 256
#endif

BPF_RINGBUF_OUTPUT(io_events, IO_RING_PAGES);
BPF_HASH(io_inflight, u32, struct io_inflight, 16384);

static __always_inline int io_enter_fds(u32 kind, s64 fd, u64 count, s64 offset,
                                        const char *path, const int *fdpair)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_tracked(id >> 32))
        return 0;
    u32 tid = (u32)id;
    struct io_inflight f = {};
    f.start = bpf_ktime_get_ns();
    f.kind = kind;
    f.fd = fd;
    f.count = count;
    f.offset = offset;
    f.path = path;
    f.fdpair = fdpair;
    io_inflight.update(&tid, &f);
    return 0;
}

static __always_inline int io_enter(u32 kind, s64 fd, u64 count, s64 offset, const char *path)
{
    return io_enter_fds(kind, fd, count, offset, path, 0);
}

static __always_inline int io_exit(u32 kind, s64 ret)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct io_inflight *f = io_inflight.lookup(&tid);
    if (!f)
        return 0;
    if (f->kind != kind) {  // a syscall whose exit we missed (attach race)
        io_inflight.delete(&tid);
        return 0;
    }
    struct io_event e = {};
    e.start = f->start;
    e.end = bpf_ktime_get_ns();
    e.pid = id >> 32;
    e.tid = tid;
    e.kind = kind;
    e.fd = f->fd;
    e.ret = ret;
    e.count = f->count;
    e.offset = f->offset;
    if (f->fdpair && ret == 0) {
        int pair[2] = {-1, -1};
        bpf_probe_read_user(pair, sizeof(pair), f->fdpair);
        e.count = pair[0];
        e.offset = pair[1];
    }
    u32 size = offsetof(struct io_event, path);
    if (f->path) {
        bpf_probe_read_user_str(e.path, sizeof(e.path), f->path);
        size = sizeof(e);
    }
    io_inflight.delete(&tid);
    if (io_events.ringbuf_output(&e, size, 0) != 0)
        count_drop(DROP_IO);
    return 0;
}

#define IO_EXIT(name, KIND) \
    TRACEPOINT_PROBE(syscalls, sys_exit_##name) { return io_exit(KIND, args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_openat)
{ return io_enter(IO_OPENAT, (s32)args->dfd, 0, -1, args->filename); }
IO_EXIT(openat, IO_OPENAT)

#ifdef HAVE_OPENAT2
TRACEPOINT_PROBE(syscalls, sys_enter_openat2)
{ return io_enter(IO_OPENAT2, (s32)args->dfd, 0, -1, args->filename); }
IO_EXIT(openat2, IO_OPENAT2)
#endif

TRACEPOINT_PROBE(syscalls, sys_enter_read)
{ return io_enter(IO_READ, args->fd, args->count, -1, 0); }
IO_EXIT(read, IO_READ)

TRACEPOINT_PROBE(syscalls, sys_enter_pread64)
{ return io_enter(IO_PREAD64, args->fd, args->count, args->pos, 0); }
IO_EXIT(pread64, IO_PREAD64)

TRACEPOINT_PROBE(syscalls, sys_enter_readv)
{ return io_enter(IO_READV, args->fd, args->vlen, -1, 0); }
IO_EXIT(readv, IO_READV)

TRACEPOINT_PROBE(syscalls, sys_enter_preadv)
{ return io_enter(IO_PREADV, args->fd, args->vlen, args->pos_l, 0); }
IO_EXIT(preadv, IO_PREADV)

TRACEPOINT_PROBE(syscalls, sys_enter_preadv2)
{ return io_enter(IO_PREADV2, args->fd, args->vlen, args->pos_l, 0); }
IO_EXIT(preadv2, IO_PREADV2)

TRACEPOINT_PROBE(syscalls, sys_enter_write)
{ return io_enter(IO_WRITE, args->fd, args->count, -1, 0); }
IO_EXIT(write, IO_WRITE)

TRACEPOINT_PROBE(syscalls, sys_enter_pwrite64)
{ return io_enter(IO_PWRITE64, args->fd, args->count, args->pos, 0); }
IO_EXIT(pwrite64, IO_PWRITE64)

TRACEPOINT_PROBE(syscalls, sys_enter_writev)
{ return io_enter(IO_WRITEV, args->fd, args->vlen, -1, 0); }
IO_EXIT(writev, IO_WRITEV)

TRACEPOINT_PROBE(syscalls, sys_enter_close)
{ return io_enter(IO_CLOSE, args->fd, 0, -1, 0); }
IO_EXIT(close, IO_CLOSE)

TRACEPOINT_PROBE(syscalls, sys_enter_mmap)
{
    // Anonymous mappings (fd -1) are allocator noise, not IO.
    if ((s32)args->fd < 0)
        return 0;
    return io_enter(IO_MMAP, (s32)args->fd, args->len, args->off, 0);
}
IO_EXIT(mmap, IO_MMAP)

TRACEPOINT_PROBE(syscalls, sys_enter_statx)
{ return io_enter(IO_STATX, (s32)args->dfd, 0, -1, args->filename); }
IO_EXIT(statx, IO_STATX)

TRACEPOINT_PROBE(syscalls, sys_enter_newfstatat)
{ return io_enter(IO_NEWFSTATAT, (s32)args->dfd, 0, -1, args->filename); }
IO_EXIT(newfstatat, IO_NEWFSTATAT)

TRACEPOINT_PROBE(syscalls, sys_enter_getdents64)
{ return io_enter(IO_GETDENTS64, args->fd, args->count, -1, 0); }
IO_EXIT(getdents64, IO_GETDENTS64)

TRACEPOINT_PROBE(syscalls, sys_enter_dup)
{ return io_enter(IO_DUP, args->fildes, 0, -1, 0); }
IO_EXIT(dup, IO_DUP)

TRACEPOINT_PROBE(syscalls, sys_enter_dup2)
{ return io_enter(IO_DUP, args->oldfd, 0, -1, 0); }
IO_EXIT(dup2, IO_DUP)

TRACEPOINT_PROBE(syscalls, sys_enter_dup3)
{ return io_enter(IO_DUP, args->oldfd, 0, -1, 0); }
IO_EXIT(dup3, IO_DUP)

TRACEPOINT_PROBE(syscalls, sys_enter_pipe2)
{ return io_enter_fds(IO_PIPE2, -1, 0, -1, 0, args->fildes); }
IO_EXIT(pipe2, IO_PIPE2)

TRACEPOINT_PROBE(syscalls, sys_enter_socketpair)
{ return io_enter_fds(IO_SOCKETPAIR, -1, 0, -1, 0, args->usockvec); }
IO_EXIT(socketpair, IO_SOCKETPAIR)

TRACEPOINT_PROBE(syscalls, sys_enter_socket)
{ return io_enter(IO_SOCKET, -1, 0, -1, 0); }
IO_EXIT(socket, IO_SOCKET)

TRACEPOINT_PROBE(syscalls, sys_enter_accept4)
{ return io_enter(IO_SOCKET, args->fd, 0, -1, 0); }
IO_EXIT(accept4, IO_SOCKET)

TRACEPOINT_PROBE(syscalls, sys_enter_accept)
{ return io_enter(IO_SOCKET, args->fd, 0, -1, 0); }
IO_EXIT(accept, IO_SOCKET)

TRACEPOINT_PROBE(syscalls, sys_enter_eventfd2)
{ return io_enter(IO_EVENTFD, -1, 0, -1, 0); }
IO_EXIT(eventfd2, IO_EVENTFD)

TRACEPOINT_PROBE(syscalls, sys_enter_memfd_create)
{ return io_enter(IO_MEMFD, -1, 0, -1, args->uname); }
IO_EXIT(memfd_create, IO_MEMFD)
