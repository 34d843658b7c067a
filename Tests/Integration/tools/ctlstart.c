// ctlstart: starts a VMM's guest through its control socket and says when, for `make bench BENCH=api`.
//
//   ctlstart --firecracker SOCKET   PUT /actions {"action_type": "InstanceStart"} (Swiftlet's Firecracker API)
//   ctlstart --qmp SOCKET           {"execute": "cont"} on a QEMU started with -S (after the QMP handshake)
//
// It waits up to 30 s for SOCKET to accept, does what must come before (QMP's greeting and qmp_capabilities), then
// takes CLOCK_MONOTONIC just before it writes the start request and again when the whole answer is in. It prints
// "ctlstart: sent_ns=N answered_ns=M answer=..." (the HTTP status line, or QMP's reply) and exits 0 if the VMM
// accepted (HTTP 204, QMP "return"), 1 otherwise.
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int connect_socket(const char *path) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) {
        fprintf(stderr, "ctlstart: socket path too long: %s\n", path);
        exit(2);
    }
    strcpy(addr.sun_path, path);
    for (int i = 0; i < 30000; i++) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) { perror("ctlstart: socket"); exit(2); }
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) return fd;
        close(fd);
        usleep(1000);
    }
    fprintf(stderr, "ctlstart: %s did not accept within 30 s\n", path);
    exit(1);
}

// Reads into buf until it holds `until` (or the peer closes); returns the length.
static size_t read_until(int fd, char *buf, size_t size, size_t have, const char *until) {
    while (have + 1 < size) {
        buf[have] = 0;
        if (strstr(buf, until)) break;
        ssize_t n = read(fd, buf + have, size - 1 - have);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        have += (size_t)n;
    }
    buf[have] = 0;
    return have;
}

static void write_all(int fd, const char *s) {
    size_t left = strlen(s);
    while (left) {
        ssize_t n = write(fd, s, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) { perror("ctlstart: write"); exit(1); }
        s += n;
        left -= (size_t)n;
    }
}

int main(int argc, char **argv) {
    if (argc != 3 || (strcmp(argv[1], "--firecracker") && strcmp(argv[1], "--qmp"))) {
        fprintf(stderr, "usage: ctlstart --firecracker|--qmp SOCKET\n");
        return 2;
    }
    int qmp = strcmp(argv[1], "--qmp") == 0;
    int fd = connect_socket(argv[2]);
    static char buf[65536];
    const char *request, *until;
    if (qmp) {
        read_until(fd, buf, sizeof buf, 0, "\n");
        write_all(fd, "{\"execute\": \"qmp_capabilities\"}\n");
        read_until(fd, buf, sizeof buf, 0, "\n");
        request = "{\"execute\": \"cont\"}\n";
        until = "\n";
    } else {
        static const char body[] = "{\"action_type\": \"InstanceStart\"}";
        static char http[256];
        snprintf(http, sizeof http, "PUT /actions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 "Content-Length: %zu\r\n\r\n%s", strlen(body), body);
        request = http;
        until = "\r\n\r\n";
    }
    long long sent = now_ns();
    write_all(fd, request);
    size_t n = read_until(fd, buf, sizeof buf, 0, until);
    long long answered = now_ns();
    char *end = strpbrk(buf, "\r\n");
    if (end) *end = 0;
    int ok = n > 0 && (qmp ? strstr(buf, "\"return\"") != NULL : strncmp(buf, "HTTP/1.1 204", 12) == 0);
    printf("ctlstart: sent_ns=%lld answered_ns=%lld answer=%s\n", sent, answered, buf);
    close(fd);
    return ok ? 0 : 1;
}
