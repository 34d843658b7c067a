#define _GNU_SOURCE
#include "CJail.h"
#include <errno.h>
#include <linux/capability.h>
#include <linux/magic.h>
#include <linux/nsfs.h>
#include <signal.h>
#include <time.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/vfs.h>
#include <sys/syscall.h>
#include <unistd.h>

const unsigned long CJail_CLONE_NEWNS = CLONE_NEWNS;
const unsigned long CJail_CLONE_NEWPID = CLONE_NEWPID;
const unsigned long CJail_CLONE_NEWIPC = CLONE_NEWIPC;
const unsigned long CJail_CLONE_NEWUTS = CLONE_NEWUTS;
const unsigned long CJail_CLONE_NEWNET = CLONE_NEWNET;
const long CJail_NSFS_MAGIC = NSFS_MAGIC;
const long CJail_CGROUP2_SUPER_MAGIC = CGROUP2_SUPER_MAGIC;

const int CJail_RLIMIT_NOFILE = RLIMIT_NOFILE;
const int CJail_RLIMIT_FSIZE = RLIMIT_FSIZE;
const int CJail_RLIMIT_NPROC = RLIMIT_NPROC;

long CJail_filesystem_type(const char *path, int fd) {
    struct statfs filesystem;
    int result = path ? statfs(path, &filesystem) : fstatfs(fd, &filesystem);
    return result == 0 ? (long)filesystem.f_type : -errno;
}
int CJail_pipe(int fds[2]) { return pipe2(fds, O_CLOEXEC) == 0 ? 0 : -errno; }

int CJail_setresuid(uint32_t uid) { return setresuid(uid, uid, uid) == 0 ? 0 : -errno; }
int CJail_setresgid(uint32_t gid) { return setresgid(gid, gid, gid) == 0 ? 0 : -errno; }
int CJail_set_parent_death_signal(int signal) { return prctl(PR_SET_PDEATHSIG, signal, 0, 0, 0) == 0 ? 0 : -errno; }
int CJail_set_limit(int resource, uint64_t value) {
    struct rlimit limit = {value, value};
    return setrlimit(resource, &limit) == 0 ? 0 : -errno;
}

static void fail(int error_fd, int stage) {
    int report[2] = {stage, errno};
    (void)!write(error_fd, report, sizeof report);
    _exit(127);
}

int CJail_spawn(unsigned long flags, int release_read_fd, int release_write_fd, int netns_fd, int error_fd,
                const char *path, char *const argv[], char *const envp[]) {
    // The raw system call, not glibc's fork(): no atfork handlers run in a child that only waits and execs.
    long pid = syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, NULL);
    if (pid < 0) return -errno;
    if (pid > 0) return (int)pid;
    // The child: async-signal-safe calls only from here to execve.
    close(release_write_fd);
    char go = 0;
    ssize_t got;
    do { got = read(release_read_fd, &go, 1); } while (got < 0 && errno == EINTR);
    if (got != 1) { if (got == 0) errno = EPIPE; fail(error_fd, CJail_stage_release); }
    close(release_read_fd);
    if (netns_fd >= 0 && setns(netns_fd, CLONE_NEWNET) != 0) fail(error_fd, CJail_stage_netns);
    sigset_t none;
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) != 0) fail(error_fd, CJail_stage_setup);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) fail(error_fd, CJail_stage_setup);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail(error_fd, CJail_stage_setup);
    execve(path, argv, envp);
    fail(error_fd, CJail_stage_exec);
    return -1;
}

int CJail_pivot_root(const char *new_root, const char *put_old) {
    return (int)syscall(SYS_pivot_root, new_root, put_old);
}

int CJail_capabilities(int tid, uint64_t *effective, uint64_t *permitted, uint64_t *inheritable) {
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, tid};
    struct __user_cap_data_struct data[2] = {{0}};
    if (syscall(SYS_capget, &header, data) != 0) return -errno;
    *effective = (uint64_t)data[1].effective << 32 | data[0].effective;
    *permitted = (uint64_t)data[1].permitted << 32 | data[0].permitted;
    *inheritable = (uint64_t)data[1].inheritable << 32 | data[0].inheritable;
    return 0;
}

int CJail_namespace_type(int fd) {
    int type = ioctl(fd, NS_GET_NSTYPE);
    return type < 0 ? -errno : type;
}

static uint32_t drop_uid, drop_gid;
static volatile int drop_result; // 1: not yet; 0: done; < 0: -errno

static void drop_handler(int signal) {
    (void)signal;
    int saved = errno;
    long result = 0;
    // Raw system calls: they change this thread's credentials only, which is the point.
    if (syscall(SYS_geteuid) == 0) {
        if (syscall(SYS_setgroups, 0, NULL) != 0
            || syscall(SYS_setresgid, drop_gid, drop_gid, drop_gid) != 0
            || syscall(SYS_setresuid, drop_uid, drop_uid, drop_uid) != 0) result = -errno;
    } else if ((uint32_t)syscall(SYS_geteuid) != drop_uid || (uint32_t)syscall(SYS_getegid) != drop_gid) {
        result = -EPERM;
    }
    if (result == 0 && prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) result = -errno;
    __atomic_store_n(&drop_result, (int)result, __ATOMIC_RELEASE);
    errno = saved;
}

int CJail_drop_thread(int tid, uint32_t uid, uint32_t gid, int signal) {
    drop_uid = uid;
    drop_gid = gid;
    __atomic_store_n(&drop_result, 1, __ATOMIC_RELEASE);
    struct sigaction action = {0}, previous;
    action.sa_handler = drop_handler;
    sigemptyset(&action.sa_mask);
    if (sigaction(signal, &action, &previous) != 0) return -errno;
    int result = 1;
    if (syscall(SYS_tgkill, getpid(), tid, signal) != 0) {
        result = -errno;
    } else {
        struct timespec pause = {0, 1000000};
        for (int waited = 0; waited < 2000 && (result = __atomic_load_n(&drop_result, __ATOMIC_ACQUIRE)) == 1; waited++) {
            nanosleep(&pause, NULL);
        }
        if (result == 1) result = -ETIMEDOUT;
    }
    sigaction(signal, &previous, NULL);
    return result;
}
