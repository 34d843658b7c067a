/*
 * agentexec: run one command through the Swiftlet guest agent (guest/agent/PROTOCOL.md) from a shell, for the
 * integration tests: the lab's QEMU peer reaches the agent over vhost-vsock with it.
 *
 * usage: agentexec [--stdin] [--cwd DIR] [--env KEY=VALUE]... [--wait SECONDS] TARGET -- CMD [ARG...]
 *   TARGET      vsock:CID:PORT or unix:PATH
 *   --stdin     forward this process's stdin as STDIN frames (else the command's stdin is /dev/null)
 *   --wait S    retry connecting for up to S seconds (the guest may not listen yet)
 * The command's stdout and stderr go to ours; the exit status is the command's, 128+N if killed by signal N.
 * An ERROR frame prints "agentexec: error errno=N: MESSAGE" and exits 125; a transport failure exits 124.
 *
 * Build: gcc -static -O2 -Wall -Wextra -o agentexec agentexec.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static void die(const char *what)
{
    fprintf(stderr, "agentexec: %s: %s\n", what, strerror(errno));
    exit(124);
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            die("write");
        p += w;
        len -= (size_t)w;
    }
}

static void read_all(int fd, void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t r = read(fd, p, len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            die("read from the agent");
        if (r == 0) {
            fprintf(stderr, "agentexec: the agent closed the connection before EXIT\n");
            exit(124);
        }
        p += r;
        len -= (size_t)r;
    }
}

static uint8_t *payload;
static size_t payload_len, payload_cap;

static void add(const void *data, size_t len)
{
    if (payload_len + len > payload_cap) {
        payload_cap = (payload_len + len) * 2 + 64;
        payload = realloc(payload, payload_cap);
        if (!payload)
            die("realloc");
    }
    memcpy(payload + payload_len, data, len);
    payload_len += len;
}

static void add_u32(uint32_t v)
{
    uint8_t b[4];
    put_u32(b, v);
    add(b, 4);
}

static void add_string(const char *s)
{
    add_u32((uint32_t)strlen(s));
    add(s, strlen(s));
}

static int connect_target(const char *target)
{
    int fd;
    if (strncmp(target, "unix:", 5) == 0) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        snprintf(a.sun_path, sizeof a.sun_path, "%s", target + 5);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
            close(fd);
            return -1;
        }
        return fd;
    }
    unsigned cid, port;
    if (sscanf(target, "vsock:%u:%u", &cid, &port) != 2) {
        fprintf(stderr, "agentexec: TARGET must be vsock:CID:PORT or unix:PATH, got %s\n", target);
        exit(2);
    }
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
    fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket(AF_VSOCK)");
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int main(int argc, char **argv)
{
    int use_stdin = 0, i;
    const char *cwd = "", *target = NULL;
    double wait_s = 0;
    const char *env[256];
    int envc = 0;
    for (i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (strcmp(argv[i], "--stdin") == 0)
            use_stdin = 1;
        else if (strcmp(argv[i], "--cwd") == 0 && i + 1 < argc)
            cwd = argv[++i];
        else if (strcmp(argv[i], "--env") == 0 && i + 1 < argc && envc < 256)
            env[envc++] = argv[++i];
        else if (strcmp(argv[i], "--wait") == 0 && i + 1 < argc)
            wait_s = atof(argv[++i]);
        else if (!target && argv[i][0] != '-')
            target = argv[i];
        else {
            fprintf(stderr, "usage: agentexec [--stdin] [--cwd DIR] [--env K=V]... [--wait S] TARGET -- CMD [ARG...]\n");
            return 2;
        }
    }
    if (!target || i + 1 >= argc) {
        fprintf(stderr, "usage: agentexec [--stdin] [--cwd DIR] [--env K=V]... [--wait S] TARGET -- CMD [ARG...]\n");
        return 2;
    }
    char **cmd = argv + i + 1;
    int cmdc = argc - i - 1;

    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    int fd;
    for (;;) {
        fd = connect_target(target);
        if (fd >= 0)
            break;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((double)(now.tv_sec - start.tv_sec) + (double)(now.tv_nsec - start.tv_nsec) / 1e9 >= wait_s)
            die("connect");
        usleep(200 * 1000);
    }

    add_u32(1); /* EXEC */
    add_u32(0); /* length, patched below */
    add_u32((uint32_t)cmdc);
    for (int k = 0; k < cmdc; k++)
        add_string(cmd[k]);
    add_u32((uint32_t)envc);
    for (int k = 0; k < envc; k++)
        add_string(env[k]);
    add_string(cwd);
    add_u32(use_stdin ? 1 : 0);
    put_u32(payload + 4, (uint32_t)(payload_len - 8));
    write_all(fd, payload, payload_len);

    static uint8_t buf[1 << 20];
    int stdin_open = use_stdin;
    for (;;) {
        struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = STDIN_FILENO, .events = POLLIN}};
        if (poll(p, stdin_open ? 2 : 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        if (stdin_open && p[1].revents) {
            ssize_t r = read(STDIN_FILENO, buf + 8, 65536);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0)
                die("read stdin");
            put_u32(buf, 2);
            put_u32(buf + 4, (uint32_t)r);
            write_all(fd, buf, 8 + (size_t)r);
            if (r == 0)
                stdin_open = 0;
        }
        if (!p[0].revents)
            continue;
        uint8_t h[8];
        read_all(fd, h, 8);
        uint32_t type = get_u32(h), len = get_u32(h + 4);
        if (len > sizeof buf) {
            fprintf(stderr, "agentexec: frame of %u bytes from the agent\n", len);
            return 124;
        }
        read_all(fd, buf, len);
        if (type == 0x82 || type == 0x83) {
            write_all(type == 0x82 ? STDOUT_FILENO : STDERR_FILENO, buf, len);
        } else if (type == 0x84 && len == 8) {
            uint32_t kind = get_u32(buf), value = get_u32(buf + 4);
            return kind == 1 ? 128 + (int)value : (int)value;
        } else if (type == 0x85 && len >= 4) {
            fprintf(stderr, "agentexec: error errno=%u: %.*s\n", get_u32(buf), (int)(len - 4), buf + 4);
            return 125;
        } else if (type != 0x81) {
            fprintf(stderr, "agentexec: unexpected frame type 0x%x length %u\n", type, len);
            return 124;
        }
    }
}
