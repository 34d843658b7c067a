// The jail's C part (SwiftletConfinement.Jail): the child between clone(2) and execve(2), which must be C because it
// runs in a copy of a multithreaded process where only async-signal-safe calls are allowed, and the system calls
// glibc has no wrapper for.
#ifndef CJAIL_H
#define CJAIL_H

#include <stdint.h>
#include <sched.h>

// What a failed child reports on `error_fd` before it exits with status 127: the stage and the errno.
enum {
    CJail_stage_release = 1,   // reading the release pipe (the parent went away)
    CJail_stage_netns = 2,     // setns(netns_fd, CLONE_NEWNET)
    CJail_stage_exec = 3,      // execve
    CJail_stage_setup = 4,     // the signal mask, the parent-death signal, NO_NEW_PRIVS
};

// Starts a child in the namespaces `flags` names (CLONE_NEW*; fork semantics: the child is a copy of the calling
// thread only). The child:
//   1. closes `release_write_fd` and waits for a byte on `release_read_fd` (the parent writes it once the child is in
//      its cgroup; end of file means the parent is gone, and the child exits);
//   2. joins the network namespace `netns_fd` when it is >= 0;
//   3. empties its signal mask, asks for SIGKILL when its parent dies, sets NO_NEW_PRIVS (inherited by every thread
//      the new program starts);
//   4. execs `path` with `argv` and `envp`.
// A failure writes two ints (stage, errno) to `error_fd` (close-on-exec: a successful execve closes it unwritten)
// and exits with 127. Returns the child's pid, or -errno.
int CJail_spawn(unsigned long flags, int release_read_fd, int release_write_fd, int netns_fd, int error_fd,
                const char *path, char *const argv[], char *const envp[]);

// pivot_root(2).
int CJail_pivot_root(const char *new_root, const char *put_old);

// The effective, permitted and inheritable capability sets of thread `tid` (0: the calling thread; capget(2),
// version 3); 0 or -errno.
int CJail_capabilities(int tid, uint64_t *effective, uint64_t *permitted, uint64_t *inheritable);

// Makes thread `tid` of this process drop to uid:gid with no supplementary groups (and ask again for SIGKILL when
// the parent dies, which a change of credentials clears), from a handler for `signal` that runs on that thread.
// For a thread glibc's set*id broadcast skips: glibc marks a thread that called pthread_exit as exiting and leaves
// it out, and libdispatch parks the main thread of an async Swift program inside pthread_exit, alive in
// sigsuspend. Waits up to 2 s for the handler; 0 or -errno (-ETIMEDOUT when the thread did not run it).
int CJail_drop_thread(int tid, uint32_t uid, uint32_t gid, int signal);

// The namespace type of an nsfs file (ioctl NS_GET_NSTYPE: CLONE_NEWNET, ...), or -errno.
int CJail_namespace_type(int fd);

// The filesystem type (statfs(2) f_type: CJail_NSFS_MAGIC, ...) of `path`, or of `fd` when `path` is NULL; or -errno.
long CJail_filesystem_type(const char *path, int fd);

// pipe2(2) with O_CLOEXEC (hidden from Swift's Glibc module); 0 or -errno.
int CJail_pipe(int fds[2]);

// setresuid(2) and setresgid(2) (GNU extensions hidden from Swift's Glibc module); 0 or -errno. glibc applies them
// to every thread of the process.
int CJail_setresuid(uint32_t uid);
int CJail_setresgid(uint32_t gid);

// prctl(PR_SET_PDEATHSIG, signal); 0 or -errno.
int CJail_set_parent_death_signal(int signal);

// setrlimit(2) with the soft and hard limit both `value`; 0 or -errno. `resource` is one of the CJail_RLIMIT_*.
int CJail_set_limit(int resource, uint64_t value);
extern const int CJail_RLIMIT_NOFILE;
extern const int CJail_RLIMIT_FSIZE;
extern const int CJail_RLIMIT_NPROC;

// CLONE_NEW* and the nsfs magic, which Swift's Glibc module does not import.
extern const unsigned long CJail_CLONE_NEWNS;
extern const unsigned long CJail_CLONE_NEWPID;
extern const unsigned long CJail_CLONE_NEWIPC;
extern const unsigned long CJail_CLONE_NEWUTS;
extern const unsigned long CJail_CLONE_NEWNET;
extern const long CJail_NSFS_MAGIC;
extern const long CJail_CGROUP2_SUPER_MAGIC;

#endif
