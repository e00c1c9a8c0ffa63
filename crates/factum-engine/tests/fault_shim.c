/*
 * An LD_PRELOAD shim that injects one I/O fault at the system-call boundary
 * (ADR 12). It hooks what Rust's std calls on glibc: fdatasync (sync_data),
 * fsync (sync_all), pwrite64 (write_all_at) and ftruncate64 (set_len).
 * Built by the tests with `cc -shared -fPIC` (tests/common/shim.rs).
 *
 * Configuration (environment):
 *   FACTUM_FAULT_CALL    fdatasync | fsync | pwrite64 | rename: the call to fail
 *   FACTUM_FAULT_NTH     fail the Nth matching call (1-based), once
 *   FACTUM_FAULT_ERRNO   the errno to fail with (default 5, EIO)
 *   FACTUM_FAULT_THREAD  count only calls from threads whose name contains
 *                        this (prctl PR_GET_NAME); any thread when unset
 *   FACTUM_FAULT_PATH    count only calls on files whose path contains this
 *                        (for rename: the source path)
 *   FACTUM_FAULT_ARM     CALL:TEXT (CALL rename or fsync): count only calls
 *                        made after a successful CALL on a path containing
 *                        TEXT (the source, for rename). "rename:.rewrite":
 *                        the directory's fsync right after a rewritten
 *                        segment is renamed in; "fsync:.rewrite": the index
 *                        commit after the new version is durable
 *   FACTUM_FAULT_ACTION  "kill": instead of failing the call, the process
 *                        SIGKILLs itself at it (the call is not made): a
 *                        kill -9 at exactly that step
 *   FACTUM_FAULT_DEAD    "1": after the fault every ftruncate of a matching
 *                        file fails with EIO too (a disk that died)
 *
 * The failed fdatasync/fsync does not reach the kernel: the data stays
 * dirty in the page cache, readable by any process, though the caller was
 * told it is not durable. The failed pwrite64 writes the first half of its
 * buffer for real and returns that short count; the next pwrite64 on that
 * thread (the rest) then fails: a partial write. The call after the fault
 * succeeds again, as a real kernel reports a writeback error only once.
 * A failed rename renames nothing. On the fault it prints
 * `FAULT-INJECTED <call> thread=<name> path=<path>` to stderr.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <unistd.h>

static atomic_long matched;
static atomic_int fired;
static atomic_int armed;
static __thread int fail_next_pwrite;

static const char *env(const char *name) {
    const char *v = getenv(name);
    return (v && *v) ? v : NULL;
}

static void fd_path(int fd, char *out, size_t len) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, len - 1);
    out[n < 0 ? 0 : n] = 0;
}

static int path_matches(int fd) {
    const char *want = env("FACTUM_FAULT_PATH");
    if (!want)
        return 1;
    char path[4096];
    fd_path(fd, path, sizeof path);
    return strstr(path, want) != NULL;
}

/* Counting starts once armed (always, without FACTUM_FAULT_ARM). */
static int is_armed(void) {
    return !env("FACTUM_FAULT_ARM") || atomic_load(&armed);
}

/* Arms the shim when `call` on `path` is what FACTUM_FAULT_ARM names. */
static void maybe_arm(const char *call, const char *path) {
    const char *arm = env("FACTUM_FAULT_ARM");
    size_t n = strlen(call);
    if (arm && strncmp(arm, call, n) == 0 && arm[n] == ':' && strstr(path, arm + n + 1) != NULL)
        atomic_store(&armed, 1);
}

/* FACTUM_FAULT_ACTION=kill: die by SIGKILL right here. */
static void maybe_kill(void) {
    const char *action = env("FACTUM_FAULT_ACTION");
    if (action && strcmp(action, "kill") == 0) {
        fflush(stderr);
        kill(getpid(), SIGKILL);
    }
}

static int thread_matches(char *name) {
    name[0] = 0;
    prctl(PR_GET_NAME, name, 0, 0, 0);
    const char *want = env("FACTUM_FAULT_THREAD");
    return !want || strstr(name, want) != NULL;
}

static int fault_errno(void) {
    const char *e = env("FACTUM_FAULT_ERRNO");
    return e ? atoi(e) : EIO;
}

/* Is this call the one to fail? Counts matching calls. */
static int should_fail(const char *call, int fd) {
    const char *want = env("FACTUM_FAULT_CALL");
    const char *nth = env("FACTUM_FAULT_NTH");
    if (!want || !nth || strcmp(want, call) != 0 || atomic_load(&fired) || !is_armed())
        return 0;
    char name[17];
    if (!thread_matches(name) || !path_matches(fd))
        return 0;
    if (atomic_fetch_add(&matched, 1) + 1 != atol(nth))
        return 0;
    atomic_store(&fired, 1);
    char path[4096];
    fd_path(fd, path, sizeof path);
    fprintf(stderr, "FAULT-INJECTED %s thread=%s path=%s errno=%d\n", call, name, path,
            fault_errno());
    maybe_kill();
    return 1;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (should_fail("fdatasync", fd)) {
        errno = fault_errno();
        return -1;
    }
    return real(fd);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    if (should_fail("fsync", fd)) {
        errno = fault_errno();
        return -1;
    }
    int r = real(fd);
    if (r == 0 && env("FACTUM_FAULT_ARM")) {
        char path[4096];
        fd_path(fd, path, sizeof path);
        maybe_arm("fsync", path);
    }
    return r;
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    static ssize_t (*real)(int, const void *, size_t, off_t);
    if (!real)
        real = (ssize_t(*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite64");
    if (fail_next_pwrite) {
        fail_next_pwrite = 0;
        errno = fault_errno();
        return -1;
    }
    if (should_fail("pwrite64", fd)) {
        if (count < 2) {
            errno = fault_errno();
            return -1;
        }
        fail_next_pwrite = 1;
        return real(fd, buf, count / 2, offset);
    }
    return real(fd, buf, count, offset);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    return pwrite64(fd, buf, count, offset);
}

static int dead_truncate(int fd) {
    const char *dead = env("FACTUM_FAULT_DEAD");
    return dead && strcmp(dead, "1") == 0 && atomic_load(&fired) && path_matches(fd);
}

int ftruncate64(int fd, off_t length) {
    static int (*real)(int, off_t);
    if (!real)
        real = (int (*)(int, off_t))dlsym(RTLD_NEXT, "ftruncate64");
    if (dead_truncate(fd)) {
        errno = EIO;
        return -1;
    }
    return real(fd, length);
}

int ftruncate(int fd, off_t length) {
    return ftruncate64(fd, length);
}

int rename(const char *from, const char *to) {
    static int (*real)(const char *, const char *);
    if (!real)
        real = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
    const char *want = env("FACTUM_FAULT_CALL");
    const char *nth = env("FACTUM_FAULT_NTH");
    const char *want_path = env("FACTUM_FAULT_PATH");
    char name[17];
    if (want && nth && strcmp(want, "rename") == 0 && !atomic_load(&fired) && is_armed() &&
        thread_matches(name) && (!want_path || strstr(from, want_path) != NULL) &&
        atomic_fetch_add(&matched, 1) + 1 == atol(nth)) {
        atomic_store(&fired, 1);
        fprintf(stderr, "FAULT-INJECTED rename thread=%s path=%s errno=%d\n", name, from,
                fault_errno());
        maybe_kill();
        errno = fault_errno();
        return -1;
    }
    int r = real(from, to);
    if (r == 0)
        maybe_arm("rename", from);
    return r;
}
