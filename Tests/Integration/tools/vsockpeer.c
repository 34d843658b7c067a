/*
 * vsockpeer: one end of a stream for the vsock tests and benchmarks, in the guest, in L1 or on a host.
 *
 *   vsockpeer connect ADDRESS ACTION      vsockpeer listen ADDRESS ACTION
 *
 * ADDRESS
 *   vsock:CID:PORT     AF_VSOCK connect (CID 2 is the host)      vsock:PORT   AF_VSOCK listen
 *   unix:PATH          AF_UNIX connect or listen (the listener's file is removed at exit)
 *   hybrid:PATH:PORT   connect to a Firecracker-style hybrid vsock socket: send "CONNECT PORT\n", expect "OK ..."
 * ACTION
 *   send BYTES   write BYTES of a fixed pseudo-random stream (suffixes K, M, G), then close
 *   recv         read until end of stream
 *   echo         write back what is read, until end of stream
 *   exec [-n N] -- CMD ARGS...   run CMD through the Swiftlet guest agent listening at ADDRESS
 *                (guest/agent/PROTOCOL.md): its stdout and stderr are copied here and vsockpeer exits with its
 *                status (128 + N for signal N). With -n N it runs CMD N times, one connection each, output
 *                discarded, and prints "vsockpeer: exec runs=N median_ms=M min_ms=M" (the agent round trip).
 * Both send and recv print one line on stdout:
 *   vsockpeer: bytes=N fnv=HEX ns=ELAPSED mbps=RATE
 * fnv is FNV-1a 64 of the bytes, so the two ends can be compared; ns runs from the connection to the end.
 * A refused connection prints "vsockpeer: refused" on stderr and exits 3; other failures exit 1.
 *
 * Build: gcc -static -O2 -Wall -Wextra -o vsockpeer vsockpeer.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static const char *unix_listener_path;

static void die(const char *what)
{
    fprintf(stderr, "vsockpeer: %s: %s\n", what, strerror(errno));
    if (unix_listener_path) unlink(unix_listener_path);
    exit(1);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t parse_size(const char *text)
{
    char *end;
    uint64_t value = strtoull(text, &end, 10);
    switch (*end) {
    case 'K': case 'k': value <<= 10; break;
    case 'M': case 'm': value <<= 20; break;
    case 'G': case 'g': value <<= 30; break;
    case 0: break;
    default: fprintf(stderr, "vsockpeer: bad size %s\n", text); exit(2);
    }
    return value;
}

static int unix_address(const char *path, struct sockaddr_un *address)
{
    memset(address, 0, sizeof(*address));
    address->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(address->sun_path)) { fprintf(stderr, "vsockpeer: path too long\n"); exit(2); }
    strcpy(address->sun_path, path);
    return sizeof(*address);
}

static void refused(void)
{
    fprintf(stderr, "vsockpeer: refused\n");
    exit(3);
}

static int open_connection(int listen_mode, const char *spec)
{
    int fd;
    if (strncmp(spec, "vsock:", 6) == 0) {
        struct sockaddr_vm address = { .svm_family = AF_VSOCK };
        unsigned cid = VMADDR_CID_ANY, port;
        if (listen_mode ? sscanf(spec + 6, "%u", &port) != 1 : sscanf(spec + 6, "%u:%u", &cid, &port) != 2) {
            fprintf(stderr, "vsockpeer: bad address %s\n", spec); exit(2);
        }
        address.svm_cid = cid;
        address.svm_port = port;
        if ((fd = socket(AF_VSOCK, SOCK_STREAM, 0)) < 0) die("socket(AF_VSOCK)");
        if (listen_mode) {
            if (bind(fd, (struct sockaddr *)&address, sizeof(address)) < 0) die("bind");
            if (listen(fd, 1) < 0) die("listen");
            int connection = accept(fd, NULL, NULL);
            if (connection < 0) die("accept");
            close(fd);
            return connection;
        }
        if (connect(fd, (struct sockaddr *)&address, sizeof(address)) < 0) {
            if (errno == ECONNREFUSED || errno == ECONNRESET) refused();
            die("connect");
        }
        return fd;
    }
    if (strncmp(spec, "unix:", 5) == 0 || strncmp(spec, "hybrid:", 7) == 0) {
        int hybrid = spec[0] == 'h';
        char path[256];
        unsigned port = 0;
        snprintf(path, sizeof(path), "%s", spec + (hybrid ? 7 : 5));
        if (hybrid) {
            char *colon = strrchr(path, ':');
            if (!colon || sscanf(colon + 1, "%u", &port) != 1) { fprintf(stderr, "vsockpeer: bad address %s\n", spec); exit(2); }
            *colon = 0;
        }
        struct sockaddr_un address;
        socklen_t length = unix_address(path, &address);
        if ((fd = socket(AF_UNIX, SOCK_STREAM, 0)) < 0) die("socket(AF_UNIX)");
        if (listen_mode) {
            unlink(path);
            if (bind(fd, (struct sockaddr *)&address, length) < 0) die("bind");
            unix_listener_path = strdup(path);
            if (listen(fd, 1) < 0) die("listen");
            int connection = accept(fd, NULL, NULL);
            if (connection < 0) die("accept");
            close(fd);
            return connection;
        }
        if (connect(fd, (struct sockaddr *)&address, length) < 0) die("connect");
        if (hybrid) {
            char line[64];
            int n = snprintf(line, sizeof(line), "CONNECT %u\n", port);
            if (write(fd, line, n) != n) die("write CONNECT");
            size_t used = 0;
            for (;;) { /* byte by byte: nothing after the newline is consumed */
                ssize_t got = read(fd, line + used, 1);
                if (got == 0) refused();
                if (got < 0) { if (errno == ECONNRESET) refused(); die("read OK"); }
                if (line[used] == '\n') break;
                if (++used >= sizeof(line) - 1) { fprintf(stderr, "vsockpeer: reply too long\n"); exit(1); }
            }
            line[used] = 0;
            if (strncmp(line, "OK ", 3) != 0) { fprintf(stderr, "vsockpeer: unexpected reply '%s'\n", line); exit(1); }
        }
        return fd;
    }
    fprintf(stderr, "vsockpeer: unknown address %s\n", spec);
    exit(2);
}

/* The stream's bytes: xorshift64, so that a misplaced or repeated block changes the checksum. */
static void fill(unsigned char *buffer, size_t length, uint64_t *state)
{
    for (size_t i = 0; i + 8 <= length; i += 8) {
        uint64_t x = *state;
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        *state = x;
        memcpy(buffer + i, &x, 8);
    }
}

static uint64_t fnv(uint64_t hash, const unsigned char *bytes, size_t length)
{
    for (size_t i = 0; i < length; i++) { hash ^= bytes[i]; hash *= 0x100000001b3ull; }
    return hash;
}

static void report(uint64_t bytes, uint64_t hash, uint64_t started)
{
    uint64_t elapsed = now_ns() - started;
    printf("vsockpeer: bytes=%llu fnv=%016llx ns=%llu mbps=%.1f\n", (unsigned long long)bytes, (unsigned long long)hash,
           (unsigned long long)elapsed, elapsed ? (double)bytes * 8 / 1e6 / ((double)elapsed / 1e9) : 0.0);
    fflush(stdout);
}

static void put32(unsigned char *p, uint32_t v) { p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24; }
static uint32_t get32(const unsigned char *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }

static void write_all(int fd, const void *data, size_t length)
{
    const unsigned char *p = data;
    while (length > 0) {
        ssize_t n = write(fd, p, length);
        if (n < 0) { if (errno == EINTR) continue; die("write"); }
        p += n;
        length -= n;
    }
}

static int read_exactly(int fd, unsigned char *data, size_t length)
{
    while (length > 0) {
        ssize_t n = read(fd, data, length);
        if (n < 0) { if (errno == EINTR) continue; return -1; }
        if (n == 0) return -1;
        data += n;
        length -= n;
    }
    return 0;
}

/* One command on the agent: EXEC, then frames until EXIT. The shell-style status, or -1 when the agent failed. */
static int agent_exec(int fd, char **command, int count, int quiet)
{
    static unsigned char frame[(1 << 20) + 8];
    size_t length = 8;
    put32(frame + length, count); length += 4;
    for (int i = 0; i < count; i++) {
        size_t n = strlen(command[i]);
        if (length + n + 64 > sizeof(frame)) { fprintf(stderr, "vsockpeer: command too long\n"); exit(2); }
        put32(frame + length, n); length += 4;
        memcpy(frame + length, command[i], n); length += n;
    }
    put32(frame + length, 0); length += 4; /* no environment */
    put32(frame + length, 0); length += 4; /* working directory: the default */
    put32(frame + length, 0); length += 4; /* flags: stdin is /dev/null */
    put32(frame, 1);
    put32(frame + 4, length - 8);
    write_all(fd, frame, length);
    for (;;) {
        unsigned char header[8];
        if (read_exactly(fd, header, 8) < 0) { fprintf(stderr, "vsockpeer: the agent closed the connection\n"); return -1; }
        uint32_t type = get32(header), size = get32(header + 4);
        if (size > 1 << 20) { fprintf(stderr, "vsockpeer: oversize frame\n"); return -1; }
        if (read_exactly(fd, frame, size) < 0) { fprintf(stderr, "vsockpeer: truncated frame\n"); return -1; }
        switch (type) {
        case 0x81: break;
        case 0x82: if (!quiet) write_all(1, frame, size); break;
        case 0x83: if (!quiet) write_all(2, frame, size); break;
        case 0x84: if (size != 8) return -1; return get32(frame) == 0 ? (int)get32(frame + 4) : 128 + (int)get32(frame + 4);
        case 0x85: fprintf(stderr, "vsockpeer: agent error %u: %.*s\n", size >= 4 ? get32(frame) : 0,
                           size >= 4 ? (int)size - 4 : 0, (char *)frame + 4); return -1;
        default: fprintf(stderr, "vsockpeer: unknown frame 0x%x\n", type); return -1;
        }
    }
}

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int exec_main(int argc, char **argv)
{
    /* argv: connect ADDRESS exec [-n N] -- CMD... */
    int i = 4, repeat = 0;
    if (i + 1 < argc && strcmp(argv[i], "-n") == 0) { repeat = atoi(argv[i + 1]); i += 2; }
    if (i < argc && strcmp(argv[i], "--") == 0) i++;
    if (i >= argc) { fprintf(stderr, "vsockpeer: exec needs a command\n"); return 2; }
    if (repeat <= 0) {
        int fd = open_connection(0, argv[2]);
        int status = agent_exec(fd, argv + i, argc - i, 0);
        close(fd);
        return status < 0 ? 125 : status;
    }
    uint64_t *times = calloc(repeat, sizeof(*times));
    for (int run = 0; run < repeat; run++) {
        uint64_t started = now_ns();
        int fd = open_connection(0, argv[2]);
        int status = agent_exec(fd, argv + i, argc - i, 1);
        close(fd);
        times[run] = now_ns() - started;
        if (status != 0) { fprintf(stderr, "vsockpeer: run %d: status %d\n", run, status); return 1; }
    }
    qsort(times, repeat, sizeof(*times), compare_u64);
    printf("vsockpeer: exec runs=%d median_ms=%.3f min_ms=%.3f\n", repeat, times[repeat / 2] / 1e6, times[0] / 1e6);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 4 || (strcmp(argv[1], "connect") && strcmp(argv[1], "listen"))) {
        fprintf(stderr, "usage: vsockpeer connect|listen ADDRESS send BYTES|recv|echo, or vsockpeer connect ADDRESS exec [-n N] -- CMD...\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (strcmp(argv[3], "exec") == 0) return exec_main(argc, argv);
    int fd = open_connection(strcmp(argv[1], "listen") == 0, argv[2]);
    if (unix_listener_path) { unlink(unix_listener_path); unix_listener_path = NULL; }
    static unsigned char buffer[1 << 16];
    uint64_t started = now_ns(), total = 0, hash = 0xcbf29ce484222325ull;
    if (strcmp(argv[3], "send") == 0 && argc == 5) {
        uint64_t remaining = parse_size(argv[4]), state = 0x9e3779b97f4a7c15ull;
        while (remaining > 0) {
            size_t chunk = remaining < sizeof(buffer) ? remaining : sizeof(buffer);
            fill(buffer, sizeof(buffer), &state);
            hash = fnv(hash, buffer, chunk);
            for (size_t done = 0; done < chunk;) {
                ssize_t n = write(fd, buffer + done, chunk - done);
                if (n < 0) { if (errno == EINTR) continue; die("write"); }
                done += n;
            }
            remaining -= chunk;
            total += chunk;
        }
        shutdown(fd, SHUT_WR);
        /* Wait for the peer to close, so the time covers delivery, not just queueing. */
        while (read(fd, buffer, sizeof(buffer)) > 0) {}
        report(total, hash, started);
    } else if (strcmp(argv[3], "recv") == 0) {
        for (;;) {
            ssize_t n = read(fd, buffer, sizeof(buffer));
            if (n < 0) { if (errno == EINTR) continue; die("read"); }
            if (n == 0) break;
            hash = fnv(hash, buffer, n);
            total += n;
        }
        report(total, hash, started);
    } else if (strcmp(argv[3], "echo") == 0) {
        for (;;) {
            ssize_t n = read(fd, buffer, sizeof(buffer));
            if (n < 0) { if (errno == EINTR) continue; die("read"); }
            if (n == 0) break;
            for (ssize_t done = 0; done < n;) {
                ssize_t w = write(fd, buffer + done, n - done);
                if (w < 0) die("write");
                done += w;
            }
        }
    } else {
        fprintf(stderr, "vsockpeer: unknown action %s\n", argv[3]);
        return 2;
    }
    close(fd);
    return 0;
}
