/*
 * monotime: millisecond timing on CLOCK_MONOTONIC, for busybox systems whose
 * `date` has no %N (the Swiftlet nested lab's L1, and tiny guests).
 *
 * Build (static, no dependencies):
 *   gcc -static -O2 -Wall -Wextra -o monotime monotime.c
 *
 * Usage:
 *   monotime                print CLOCK_MONOTONIC in milliseconds ("12345")
 *   monotime -s             print CLOCK_MONOTONIC in seconds ("12.345")
 *   monotime since T0_MS    print milliseconds elapsed since T0_MS (from `monotime`)
 *   monotime stamp [T0_MS]  copy stdin to stdout line by line, prefixing each line
 *                           with "[+S.mmm] ", the time since T0_MS (default: start
 *                           of `monotime stamp`); output is flushed per line.
 *                           Exits 0 at end of input.
 *   monotime run CMD...     run CMD, then print "monotime: <ms> ms CMD" on stderr;
 *                           exits with CMD's status (128+N if killed by signal N).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        perror("monotime: clock_gettime");
        exit(2);
    }
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long long parse_ms(const char *s)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end) {
        fprintf(stderr, "monotime: not a millisecond count: '%s'\n", s);
        exit(2);
    }
    return v;
}

static void usage(void)
{
    fputs("usage: monotime [-s] | since T0_MS | stamp [T0_MS] | run CMD...\n", stderr);
    exit(2);
}

static int stamp(long long t0)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        long long d = now_ms() - t0;
        printf("[+%lld.%03lld] ", d / 1000, (d < 0 ? -d : d) % 1000);
        fwrite(line, 1, (size_t)n, stdout);
        if (line[n - 1] != '\n')
            putchar('\n');
        fflush(stdout);
    }
    free(line);
    return 0;
}

static int run(char **argv)
{
    long long t0 = now_ms();
    pid_t pid = fork();
    if (pid < 0) {
        perror("monotime: fork");
        return 125;
    }
    if (pid == 0) {
        execvp(argv[0], argv);
        fprintf(stderr, "monotime: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR) {
            perror("monotime: waitpid");
            return 125;
        }
    }
    fprintf(stderr, "monotime: %lld ms %s\n", now_ms() - t0, argv[0]);
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    return 128 + WTERMSIG(st);
}

int main(int argc, char **argv)
{
    if (argc == 1) {
        printf("%lld\n", now_ms());
        return 0;
    }
    if (!strcmp(argv[1], "-s") && argc == 2) {
        long long t = now_ms();
        printf("%lld.%03lld\n", t / 1000, t % 1000);
        return 0;
    }
    if (!strcmp(argv[1], "since") && argc == 3) {
        printf("%lld\n", now_ms() - parse_ms(argv[2]));
        return 0;
    }
    if (!strcmp(argv[1], "stamp") && argc <= 3)
        return stamp(argc == 3 ? parse_ms(argv[2]) : now_ms());
    if (!strcmp(argv[1], "run") && argc >= 3)
        return run(argv + 2);
    usage();
    return 2;
}
