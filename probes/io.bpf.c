// IO syscalls of the tracked tree (what a data loader does: open, stat, read,
// map, write, close) with latency, bytes and return code. Entry saves the
// arguments per thread; exit emits one event, or adds it to its thread's
// sums (summed.h) when it is IO on a non-data fd (pipes, sockets, /dev, ...):
// the fd's class comes from the syscall that made it (fd_class below).
// Paths are read from openat's own argument, never from kernel structs
// (headers do not match the kernel).
#include <linux/fs.h>  // rwf_t, in the preadv2 tracepoint's arguments
#include "io.h"

#ifndef IO_RING_PAGES
#define IO_RING_PAGES 256
#endif
#ifndef MAX_FDS
#define MAX_FDS 65536
#endif

BPF_RINGBUF_OUTPUT(io_events, IO_RING_PAGES);
// tid -> the syscall it is in (kind 0: none). Rewritten in place, not
// inserted at each entry and deleted at each exit: two hash updates fewer per
// traced syscall. LRU, so threads that exited age out.
BPF_TABLE("lru_hash", u32, struct io_inflight, io_inflight, 16384);
// LRU: entries of exited processes age out; an evicted fd is unknown, and
// unknown fds are shipped one by one (nothing is lost, it only costs more).
BPF_TABLE("lru_hash", struct fd_key, u32, fd_classes, MAX_FDS);

static __always_inline u32 fd_class(u32 tgid, s32 fd)
{
    struct fd_key k = {tgid, fd};
    u32 *c = fd_classes.lookup(&k);
    if (c)
        return *c;
    // A forked child has its parent's fds: take the parent's class (and keep
    // it as the child's own, so later changes in the parent do not leak in).
    u32 *parent = tracked.lookup(&tgid);
    if (!parent || !*parent)
        return CLS_UNKNOWN;
    struct fd_key pk = {*parent, fd};
    c = fd_classes.lookup(&pk);
    if (!c)
        return CLS_UNKNOWN;
    u32 v = *c;
    fd_classes.update(&k, &v);
    return v;
}

// CLS_UNKNOWN is stored too (not deleted): a closed fd of a forked child
// must not fall back to what its parent has behind the same number.
static __always_inline void set_class(u32 tgid, s64 fd, u32 cls)
{
    struct fd_key k = {tgid, (s32)fd};
    if (fd >= 0)
        fd_classes.update(&k, &cls);
}

// A path's class: /dev, /proc and /sys are not data; a relative path is
// taken as a file (its directory fd's class when that is not data).
static __always_inline u32 path_class(const char *p, u32 dir_cls)
{
    if (p[0] != '/')
        return dir_cls == CLS_OTHER ? CLS_OTHER : CLS_DATA;
    if ((p[1] == 'd' && p[2] == 'e' && p[3] == 'v' && (p[4] == '/' || p[4] == 0)) ||
        (p[1] == 'p' && p[2] == 'r' && p[3] == 'o' && p[4] == 'c' && (p[5] == '/' || p[5] == 0)) ||
        (p[1] == 's' && p[2] == 'y' && p[3] == 's' && (p[4] == '/' || p[4] == 0)))
        return CLS_OTHER;
    return CLS_DATA;
}

// The first CFG_IPC_LIFECYCLE_PER_S lifecycle calls on non-data fds of each
// thread in each second go one by one (a pipe made at start-up keeps its
// name on the timeline); the churn beyond (a DataLoader makes and closes a
// socket and a /dev/shm fd per shared tensor) is summed.
struct lifecycle_budget {
    u64 window;   // start of the current second
    u64 shipped;  // shipped one by one in it
};
BPF_TABLE("lru_hash", u32, struct lifecycle_budget, lifecycle_budgets, 16384);

// One more event shipped one by one in this second, if the budget has room.
static __always_inline int take_one(struct lifecycle_budget *b, u64 now, u64 limit)
{
    if (now - b->window >= 1000000000ULL) {
        b->window = now;
        b->shipped = 0;
    }
    if (b->shipped >= limit)
        return 0;
    b->shipped++;
    return 1;
}

static __always_inline int lifecycle_one_by_one(u32 tid, u64 now)
{
    u64 limit = config(CFG_IPC_LIFECYCLE_PER_S);
    if (!limit)
        return 0;
    struct lifecycle_budget zero = {now, 0};
    struct lifecycle_budget *b = lifecycle_budgets.lookup_or_try_init(&tid, &zero);
    if (!b)
        return 1;
    return take_one(b, now, limit);
}

// A GPU library's file name (.../libcu*, .../libnccl*): its open wakes the
// collector at once, so the CUDA/NCCL uprobes go on before the loader has
// finished with it (libprobes.py); io.py applies the same test.
#define GPU_LIB_TAIL 40
static __always_inline int gpu_library(const char *p, long len)
{
    // len counts the NUL. The basename's '/' is looked for in the last
    // GPU_LIB_TAIL characters, copied out so every index is a constant.
    char b[GPU_LIB_TAIL + 8] = {};
    long start = len - 1 - GPU_LIB_TAIL;
    if (start < 0)
        start = 0;
    if (start > IO_PATH_LEN - GPU_LIB_TAIL)
        return 0;
    bpf_probe_read_kernel(b, GPU_LIB_TAIL, p + start);
#pragma unroll
    for (int k = GPU_LIB_TAIL - 1; k >= 0; k--) {
        if (b[k] == '/')
            return b[k + 1] == 'l' && b[k + 2] == 'i' && b[k + 3] == 'b' &&
                   ((b[k + 4] == 'c' && b[k + 5] == 'u') ||
                    (b[k + 4] == 'n' && b[k + 5] == 'c' && b[k + 6] == 'c'));
    }
    return 0;
}

// Flood control: at most CFG_IO_ONEBY_PER_CPU_S data-file transfers per
// CPU per second go one by one; beyond that they are summed like short ones
// (IO (summed) slices: calls, bytes, time; no path) and counted in
// io_flooded, so a loader hammering a file costs a counter per call, not a
// ring record and ~6 µs of collector CPU, and nothing is lost.
BPF_PERCPU_ARRAY(io_flood, struct lifecycle_budget, 1);
BPF_PERCPU_ARRAY(io_flooded, u64, 1);

static __always_inline int flooded(u64 now)
{
    u64 limit = config(CFG_IO_ONEBY_PER_CPU_S);
    if (!limit)
        return 0;
    int zero = 0;
    struct lifecycle_budget *b = io_flood.lookup(&zero);
    if (!b || take_one(b, now, limit))
        return 0;
    u64 *n = io_flooded.lookup(&zero);
    if (n)
        (*n)++;
    return 1;
}

static __always_inline int is_lifecycle(u32 kind)
{
    return kind == IO_OPENAT || kind == IO_OPENAT2 || kind == IO_CLOSE || kind == IO_DUP ||
           kind == IO_PIPE2 || kind == IO_SOCKET || kind == IO_SOCKETPAIR || kind == IO_EVENTFD ||
           kind == IO_MEMFD || kind == IO_STATX || kind == IO_NEWFSTATAT || kind == IO_GETDENTS64;
}

static __always_inline int moves_bytes(u32 kind)
{
    return (kind >= IO_READ && kind <= IO_WRITEV) || kind == IO_PREADV2;
}

static __always_inline int io_enter_fds(u32 kind, s64 fd, u64 count, s64 offset,
                                        const char *path, const int *fdpair)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!is_tracked(tgid))
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
    // Made by the call: not data. Otherwise the class of the fd it acts on
    // (the directory fd for *at calls).
    if (kind == IO_PIPE2 || kind == IO_SOCKET || kind == IO_SOCKETPAIR || kind == IO_EVENTFD ||
        kind == IO_MEMFD)
        f.cls = CLS_OTHER;
    else if (fd >= 0)
        f.cls = fd_class(tgid, fd);
    struct io_inflight *old = io_inflight.lookup(&tid);
    if (old)
        __builtin_memcpy(old, &f, sizeof(f));
    else
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
    u32 tid = (u32)id, tgid = id >> 32;
    struct io_inflight *f = io_inflight.lookup(&tid);
    if (!f || !f->kind)
        return 0;
    if (f->kind != kind) {  // a syscall whose exit we missed (attach race)
        f->kind = 0;
        return 0;
    }
    struct io_event e = {};
    e.start = f->start;
    e.end = bpf_ktime_get_ns();
    e.pid = tgid;
    e.tid = tid;
    e.kind = kind;
    e.fd = f->fd;
    e.ret = ret;
    e.count = f->count;
    e.offset = f->offset;
    u32 cls = f->cls;
    // kind is a constant in each inlined copy: branches on it cost nothing
    // (and keep each program, and its verification, small).
    if ((kind == IO_PIPE2 || kind == IO_SOCKETPAIR) && f->fdpair && ret == 0) {
        int pair[2] = {-1, -1};
        bpf_probe_read_user(pair, sizeof(pair), f->fdpair);
        e.count = pair[0];
        e.offset = pair[1];
        set_class(tgid, pair[0], CLS_OTHER);
        set_class(tgid, pair[1], CLS_OTHER);
    }
    u32 size = offsetof(struct io_event, path);
    long plen = 0;
    if ((kind == IO_OPENAT || kind == IO_OPENAT2 || kind == IO_STATX || kind == IO_NEWFSTATAT ||
         kind == IO_MEMFD) && f->path) {
        plen = bpf_probe_read_user_str(e.path, sizeof(e.path), f->path);
        size = sizeof(e);
        // fstat(fd) is newfstatat(fd, "", AT_EMPTY_PATH): the fd's class.
        // A memfd's name is not a path: it stays not data.
        if (kind != IO_MEMFD && (e.path[0] || (kind != IO_STATX && kind != IO_NEWFSTATAT)))
            cls = path_class(e.path, f->fd == -100 ? CLS_DATA : cls);
    }
    f->kind = 0;
    if (ret >= 0) {
        if (kind == IO_OPENAT || kind == IO_OPENAT2 || kind == IO_SOCKET || kind == IO_EVENTFD ||
            kind == IO_MEMFD || kind == IO_DUP)
            set_class(tgid, ret, cls);
        else if (kind == IO_CLOSE)
            set_class(tgid, e.fd, CLS_UNKNOWN);
    }
    // One by one: data files, unknown fds. Summed: short IO on other fds
    // (their creation and closing beyond a per-thread budget), data-file
    // transfers shorter than the level's threshold, and those beyond the
    // per-CPU rate (flooded).
    // A call on a non-data fd that waited long (a pipe read blocked on a
    // DataLoader worker) is shipped like a long off-CPU wait.
    int sum = 0;
    if (cls == CLS_OTHER)
        sum = e.end - e.start < config(CFG_ONEBY_WAIT_NS) &&
              (!is_lifecycle(kind) || !lifecycle_one_by_one(tid, e.end));
    else if (cls == CLS_DATA && moves_bytes(kind))
        sum = e.end - e.start < config(CFG_FILE_SUMMED_NS) || flooded(e.end);
    if (sum && sum_add(tgid, tid, kind, cls, moves_bytes(kind) && ret > 0 ? ret : 0,
                       e.end - e.start, ret < 0) == 0)
        return 0;
    u64 flags = ring_flags(DROP_IO, size, IO_RING_PAGES * 4096);
    if ((kind == IO_OPENAT || kind == IO_OPENAT2) && ret >= 0 && gpu_library(e.path, plen))
        flags = BPF_RB_FORCE_WAKEUP;
    if (io_events.ringbuf_output(&e, size, flags) != 0)
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

// fds received over a unix socket (SCM_RIGHTS: how torch and multiprocessing
// pass shared-memory fds between a DataLoader's workers and its main process)
// are not data. Read from the caller's own msghdr, whose layout is user ABI.
BPF_HASH(recvmsg_inflight, u32, u64, 16384);
#define SOL_SOCKET_ 1
#define SCM_RIGHTS_ 1
#define MAX_PASSED_FDS 8

TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_tracked(id >> 32))
        return 0;
    u32 tid = (u32)id;
    u64 msg = (u64)args->msg;
    recvmsg_inflight.update(&tid, &msg);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_recvmsg)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id, tgid = id >> 32;
    u64 *msgp = recvmsg_inflight.lookup(&tid);
    if (!msgp)
        return 0;
    const char *msg = (const char *)*msgp;
    recvmsg_inflight.delete(&tid);
    if (args->ret < 0 || !msg)
        return 0;
    struct { u64 control; u64 controllen; } c = {};
    bpf_probe_read_user(&c, sizeof(c), msg + 32);  // msg_control, msg_controllen (x86-64)
    if (!c.control || c.controllen < 20)
        return 0;
    struct { u64 len; s32 level; s32 type; s32 fds[MAX_PASSED_FDS]; } h = {};
    bpf_probe_read_user(&h, sizeof(h), (const void *)c.control);
    if (h.level != SOL_SOCKET_ || h.type != SCM_RIGHTS_)
        return 0;
#pragma unroll
    for (int i = 0; i < MAX_PASSED_FDS; i++) {
        if (16 + 4 * (i + 1) > h.len)
            break;
        set_class(tgid, h.fds[i], CLS_OTHER);
    }
    return 0;
}

// fcntl(F_DUPFD / F_DUPFD_CLOEXEC) is how CPython's os.dup() duplicates.
TRACEPOINT_PROBE(syscalls, sys_enter_fcntl)
{
    if (args->cmd != 0 && args->cmd != 1030)
        return 0;
    return io_enter(IO_DUP, args->fd, 0, -1, 0);
}

TRACEPOINT_PROBE(syscalls, sys_exit_fcntl)
{
    // Only a dup's entry was saved; an fcntl whose exit finds another kind
    // (none saved) is left alone by io_exit.
    return io_exit(IO_DUP, args->ret);
}

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
