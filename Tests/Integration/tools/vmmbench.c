// vmmbench: runs one VMM command and measures it the same way whichever VMM it is.
//
//   vmmbench [--marker STR] [--marker-file PATH] [--kill-on STR] [--kill-signal N] [--guest-mib N] [--timeout S]
//            -- CMD [ARG...]
//
// CMD's stdout (the guest console) and stderr are read through pipes; stdin is /dev/null.
// - marker_ms: from just before fork() to the first stdout line containing --marker (default SWIFTLET-READY);
// - rss_kib / guest_rss_kib: at that moment, CMD's resident memory from /proc/PID/smaps, split into the guest-RAM
//   mapping (an anonymous mapping of --guest-mib, up to 4 MiB more for alignment) and everything else;
// - exit_ms: until CMD exited;
// - start_ns: the CLOCK_MONOTONIC value just before fork(), for comparing with timestamps CMD prints itself;
// - marker-file: PATH is created (holding marker_ms) as soon as the marker is seen, so that a script can act on the
//   guest once it is ready without reading the console itself;
// - kill-on: SIGKILL CMD (or signal --kill-signal, then wait for it to exit) as soon as a stdout or stderr line
//   contains STR (for runs that cannot finish on this host).
// It prints one line: "vmmbench: marker_ms=… exit_ms=… rss_kib=… guest_rss_kib=… status=… start_ns=…" (-1 for
// what did not happen), and CMD's stderr lines prefixed with "vmmbench-stderr: ". Exit status: 0 if the marker was
// seen (or --kill-on fired), 1 otherwise.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

// Sums Rss over CMD's mappings, apart from the guest-RAM one(s).
static void sample_rss(pid_t pid, long long guest_bytes, long long *other_kib, long long *guest_kib) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/smaps", (int)pid);
    FILE *f = fopen(path, "r");
    *other_kib = *guest_kib = -1;
    if (!f) return;
    *other_kib = *guest_kib = 0;
    char line[512];
    int in_guest = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long long start, end;
        char perms[8];
        unsigned long long offset;
        char dev[16];
        unsigned long inode;
        int name_at = 0;
        if (sscanf(line, "%llx-%llx %7s %llx %15s %lu %n", &start, &end, perms, &offset, dev, &inode, &name_at) >= 6 &&
            strchr(line, '-') < strchr(line, ' ')) {
            long long size = (long long)(end - start);
            const char *name = line + name_at;
            int anonymous = inode == 0 && (name[0] == '\n' || name[0] == '\0');
            in_guest = anonymous && guest_bytes > 0 && size >= guest_bytes && size <= guest_bytes + (4 << 20);
            continue;
        }
        long long kib;
        if (sscanf(line, "Rss: %lld kB", &kib) == 1) {
            if (in_guest) *guest_kib += kib;
            else *other_kib += kib;
        }
    }
    fclose(f);
}

// Feeds bytes into a line buffer; returns 1 for each completed line in *line.
typedef struct { char buf[4096]; size_t len; } LineBuffer;

int main(int argc, char **argv) {
    const char *marker = "SWIFTLET-READY", *kill_on = NULL, *marker_file = NULL;
    long long guest_bytes = 0;
    int timeout_s = 120, kill_signal = SIGKILL;
    int i = 1;
    for (; i < argc; i++) {
        if (!strcmp(argv[i], "--")) { i++; break; }
        if (i + 1 >= argc) break;
        if (!strcmp(argv[i], "--marker")) marker = argv[++i];
        else if (!strcmp(argv[i], "--marker-file")) marker_file = argv[++i];
        else if (!strcmp(argv[i], "--kill-on")) kill_on = argv[++i];
        else if (!strcmp(argv[i], "--kill-signal")) kill_signal = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--guest-mib")) guest_bytes = atoll(argv[++i]) << 20;
        else if (!strcmp(argv[i], "--timeout")) timeout_s = atoi(argv[++i]);
        else { fprintf(stderr, "vmmbench: unknown option %s\n", argv[i]); return 2; }
    }
    if (i >= argc) {
        fprintf(stderr, "usage: vmmbench [--marker STR] [--marker-file PATH] [--kill-on STR] [--kill-signal N] [--guest-mib N] [--timeout S] -- CMD [ARG...]\n");
        return 2;
    }
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) { perror("vmmbench: pipe"); return 2; }
    long long start = now_ns();
    pid_t pid = fork();
    if (pid < 0) { perror("vmmbench: fork"); return 2; }
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY);
        dup2(null, 0);
        dup2(out[1], 1);
        dup2(err[1], 2);
        execvp(argv[i], argv + i);
        fprintf(stderr, "vmmbench: cannot run %s: %s\n", argv[i], strerror(errno));
        _exit(127);
    }
    close(out[1]);
    close(err[1]);

    long long marker_ms = -1, exit_ms = -1, rss = -1, guest_rss = -1;
    int killed = 0, open_fds = 2;
    LineBuffer lines[2] = { { .len = 0 }, { .len = 0 } };
    struct pollfd fds[2] = { { .fd = out[0], .events = POLLIN }, { .fd = err[0], .events = POLLIN } };
    long long deadline = start + (long long)timeout_s * 1000000000LL;
    while (open_fds > 0) {
        long long left_ms = (deadline - now_ns()) / 1000000;
        if (left_ms <= 0) {
            fprintf(stderr, "vmmbench: %s did not finish in %d s; killed\n", argv[i], timeout_s);
            kill(pid, SIGKILL);
            break;
        }
        if (poll(fds, 2, (int)left_ms) < 0) { if (errno == EINTR) continue; break; }
        for (int k = 0; k < 2; k++) {
            if (!fds[k].revents) continue;
            char chunk[4096];
            ssize_t n = read(fds[k].fd, chunk, sizeof chunk);
            if (n <= 0) { fds[k].fd = -1; open_fds--; continue; }
            for (ssize_t j = 0; j < n; j++) {
                LineBuffer *lb = &lines[k];
                if (chunk[j] != '\n' && lb->len < sizeof lb->buf - 1) { lb->buf[lb->len++] = chunk[j]; continue; }
                if (chunk[j] != '\n') continue; // overlong line: keep its start
                lb->buf[lb->len] = 0;
                if (k == 1) fprintf(stderr, "vmmbench-stderr: %s\n", lb->buf);
                if (k == 0 && marker_ms < 0 && strstr(lb->buf, marker)) {
                    marker_ms = (now_ns() - start) / 1000000;
                    sample_rss(pid, guest_bytes, &rss, &guest_rss);
                    if (marker_file) {
                        FILE *f = fopen(marker_file, "w");
                        if (f) { fprintf(f, "%lld\n", marker_ms); fclose(f); }
                    }
                }
                if (kill_on && !killed && strstr(lb->buf, kill_on)) { kill(pid, kill_signal); killed = 1; }
                lb->len = 0;
            }
        }
    }
    int status = 0;
    waitpid(pid, &status, 0);
    exit_ms = (now_ns() - start) / 1000000;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    printf("vmmbench: marker_ms=%lld exit_ms=%lld rss_kib=%lld guest_rss_kib=%lld status=%d start_ns=%lld\n",
           marker_ms, exit_ms, rss, guest_rss, code, start);
    return (marker_ms >= 0 || killed) ? 0 : 1;
}
