// The seccomp shim: libseccomp (Debian's libseccomp-dev, linked statically) and the SIGSYS reporter, which must be C:
// it runs in a signal handler, on the thread that made the forbidden call, and may only make async-signal-safe
// calls that every filter allows (prctl PR_GET_NAME, write, exit_group).
#ifndef CSECCOMP_H
#define CSECCOMP_H

#include <seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/prctl.h>

// The exit status after a forbidden system call: 128 + SIGSYS, as a shell reports a process killed by SIGSYS.
#define CSECCOMP_EXIT_STATUS 159

// Installs the process's SIGSYS handler (SA_SIGINFO). A system call a filter traps (SCMP_ACT_TRAP) makes it write
//   swiftlet: seccomp: thread NAME made a forbidden system call: CALL (NR)
// on stderr, NAME being the thread's name and CALL the name `names[NR]` (when NR < count and it is set), and end
// the process with CSECCOMP_EXIT_STATUS. `names` must stay valid for the life of the process. 0 or -errno.
int CSeccomp_install_reporter(const char *const *names, int count);

// Unblocks SIGSYS on the calling thread: a trapped call while SIGSYS is blocked kills the process without a word.
void CSeccomp_unblock_sigsys(void);

// Compiles `context` into classic BPF (seccomp_export_bpf, which writes to a file descriptor, through a pipe) into
// `buffer`: the number of bytes, or -errno (-E2BIG when it needs more than `capacity`).
long CSeccomp_export(scmp_filter_ctx context, void *buffer, size_t capacity);

// Loads a compiled filter (`count` BPF instructions, as seccomp_export_bpf writes them) on the calling thread, after
// setting PR_SET_NO_NEW_PRIVS; with `all_threads`, on every thread of the process (SECCOMP_FILTER_FLAG_TSYNC).
// 0, or -errno (with TSYNC, a positive thread id: that thread's filters are not an ancestor of the caller's).
long CSeccomp_load(const void *instructions, unsigned short count, int all_threads);

// The calling thread's seccomp mode (0: none, 2: filter), from prctl(PR_GET_SECCOMP).
int CSeccomp_current_mode(void);

#endif
