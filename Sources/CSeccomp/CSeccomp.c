#define _GNU_SOURCE
#include "CSeccomp.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ucontext.h>
#include <sys/syscall.h>
#include <unistd.h>

static const char *const *reporter_names;
static int reporter_count;

// Appends the NUL-terminated `text` to `buffer` at `*length`, within `capacity`.
static void append(char *buffer, size_t capacity, size_t *length, const char *text) {
    while (*text && *length + 1 < capacity) buffer[(*length)++] = *text++;
}

static void append_number(char *buffer, size_t capacity, size_t *length, long value) {
    char digits[24];
    int count = 0;
    unsigned long magnitude = value < 0 ? -(unsigned long)value : (unsigned long)value;
    do { digits[count++] = (char)('0' + magnitude % 10); magnitude /= 10; } while (magnitude && count < 23);
    if (value < 0 && *length + 1 < capacity) buffer[(*length)++] = '-';
    while (count > 0 && *length + 1 < capacity) buffer[(*length)++] = digits[--count];
}

static void append_hex(char *buffer, size_t capacity, size_t *length, unsigned long value) {
    char digits[17];
    int count = 0;
    do { digits[count++] = "0123456789abcdef"[value & 15]; value >>= 4; } while (value && count < 16);
    append(buffer, capacity, length, "0x");
    while (count > 0 && *length + 1 < capacity) buffer[(*length)++] = digits[--count];
}

// The executable's code (a static, non-PIE executable: these are the addresses addr2line takes).
extern char __executable_start[];
extern char etext[];

// Where the forbidden call came from, for `addr2line -f -e swiftlet ADDRESS...`: the instruction, and the words on
// the stack just above the interrupted stack pointer that point into the executable's code (return addresses, and
// perhaps a few stale ones). Reading 512 bytes above the stack pointer stays inside the thread's stack, which holds
// at least the frames of the thread's start routine and its callers above it.
static void append_origin(char *buffer, size_t capacity, size_t *length, void *context) {
#if defined(__x86_64__)
    ucontext_t *uc = context;
    unsigned long rip = (unsigned long)uc->uc_mcontext.gregs[REG_RIP];
    const unsigned long *rsp = (const unsigned long *)uc->uc_mcontext.gregs[REG_RSP];
    append(buffer, capacity, length, "swiftlet: seccomp: at ");
    append_hex(buffer, capacity, length, rip);
    append(buffer, capacity, length, ", called from");
    int found = 0;
    for (int index = 0; index < 64 && found < 16; index++) {
        unsigned long word = rsp[index];
        if (word >= (unsigned long)__executable_start && word < (unsigned long)etext) {
            append(buffer, capacity, length, " ");
            append_hex(buffer, capacity, length, word);
            found++;
        }
    }
    append(buffer, capacity, length, "\n");
#else
    (void)buffer; (void)capacity; (void)length; (void)context;
#endif
}

static void report(int signal, siginfo_t *info, void *context) {
    (void)signal;
    char thread[17] = {0};
    if (prctl(PR_GET_NAME, thread, 0, 0, 0) != 0) strcpy(thread, "?");
    int number = info->si_syscall;
    const char *name = number >= 0 && number < reporter_count && reporter_names[number] ? reporter_names[number]
                                                                                          : "unknown";
    char message[640];
    size_t length = 0;
    append(message, sizeof message, &length, "swiftlet: seccomp: thread ");
    append(message, sizeof message, &length, thread);
    append(message, sizeof message, &length, " made a forbidden system call: ");
    append(message, sizeof message, &length, name);
    append(message, sizeof message, &length, " (");
    append_number(message, sizeof message, &length, number);
    append(message, sizeof message, &length, ")\n");
    append_origin(message, sizeof message, &length, context);
    ssize_t ignored = write(STDERR_FILENO, message, length);
    (void)ignored;
    syscall(SYS_exit_group, CSECCOMP_EXIT_STATUS);
}

int CSeccomp_install_reporter(const char *const *names, int count) {
    reporter_names = names;
    reporter_count = count;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = report;
    action.sa_flags = SA_SIGINFO;
    sigfillset(&action.sa_mask);
    return sigaction(SIGSYS, &action, NULL) == 0 ? 0 : -errno;
}

void CSeccomp_unblock_sigsys(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGSYS);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

int CSeccomp_current_mode(void) { return prctl(PR_GET_SECCOMP, 0, 0, 0, 0); }

long CSeccomp_load(const void *instructions, unsigned short count, int all_threads) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -errno;
    struct sock_fprog program = {.len = count, .filter = (struct sock_filter *)instructions};
    long result = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, all_threads ? SECCOMP_FILTER_FLAG_TSYNC : 0, &program);
    return result < 0 ? -errno : result;
}

long CSeccomp_export(scmp_filter_ctx context, void *buffer, size_t capacity) {
    int ends[2];
    // A BPF program has at most 4096 instructions of 8 bytes: 32 KiB, within a pipe's default 64 KiB.
    if (pipe2(ends, O_CLOEXEC | O_NONBLOCK) != 0) return -errno;
    int result = seccomp_export_bpf(context, ends[1]);
    close(ends[1]);
    long total = 0;
    if (result == 0) {
        for (;;) {
            ssize_t count = read(ends[0], (char *)buffer + total, capacity - (size_t)total);
            if (count <= 0) break;
            total += count;
            if ((size_t)total == capacity) {
                char extra;
                if (read(ends[0], &extra, 1) > 0) result = -E2BIG;
                break;
            }
        }
    }
    close(ends[0]);
    return result < 0 ? result : total;
}
