/*
 * rsswatch PID FIRST_KIB TARGET_KIB TIMEOUT_S: watches a process's resident set fall, for the balloon benchmark.
 * Reads /proc/PID/statm (resident pages) once as the baseline, prints "rsswatch: ready", then samples it every
 * millisecond. Prints, on CLOCK_MONOTONIC from the baseline,
 *   rsswatch: first_ms=T1 done_ms=T2 released_kib=K
 * when the drop reached FIRST_KIB (T1) and then TARGET_KIB (T2), and exits 0; after TIMEOUT_S seconds it prints
 * how far it got (done_ms=-1) and exits 1. A shell loop cannot sample this often without forking.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static long resident_kib(int fd) {
    char buf[256];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0) return -1;
    buf[n] = 0;
    long size, resident;
    if (sscanf(buf, "%ld %ld", &size, &resident) != 2) return -1;
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: rsswatch PID FIRST_KIB TARGET_KIB TIMEOUT_S\n");
        return 2;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/%s/statm", argv[1]);
    int fd = open(path, O_RDONLY);
    if (fd < 0) { perror(path); return 2; }
    long first = atol(argv[2]), target = atol(argv[3]);
    double timeout = atof(argv[4]) * 1e3;
    long base = resident_kib(fd);
    if (base < 0) { fprintf(stderr, "rsswatch: cannot read %s\n", path); return 2; }
    double start = now_ms(), first_at = -1;
    printf("rsswatch: ready baseline_kib=%ld\n", base);
    fflush(stdout);
    struct timespec pause = {0, 1000000};
    long released = 0;
    while (now_ms() - start < timeout) {
        long resident = resident_kib(fd);
        if (resident < 0) break; /* the process ended */
        released = base - resident;
        if (first_at < 0 && released >= first) first_at = now_ms() - start;
        if (released >= target) {
            printf("rsswatch: first_ms=%.1f done_ms=%.1f released_kib=%ld\n", first_at, now_ms() - start, released);
            return 0;
        }
        nanosleep(&pause, NULL);
    }
    printf("rsswatch: first_ms=%.1f done_ms=-1 released_kib=%ld\n", first_at, released);
    return 1;
}
