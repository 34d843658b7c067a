/*
 * Swiftlet guest agent: runs commands for the host over a stream socket.
 *
 * The guest init starts it (swiftlet.agent=PORT on the kernel command line)
 * listening on AF_VSOCK, any CID, that port. Each connection carries one
 * command, in the framed protocol of PROTOCOL.md (next to this file): the host
 * sends EXEC (argv, environment, working directory, flags), then STDIN and
 * SIGNAL frames; the agent answers STARTED, STDOUT/STDERR chunks and EXIT, or
 * ERROR. The agent forks a handler per connection, so commands run
 * concurrently and a bad connection only ends its own handler.
 *
 * Each handler: parses EXEC strictly (any malformed field: ERROR EPROTO);
 * forks the command in its own session (setsid, so SIGNAL and the kill on a
 * dropped connection reach its whole process group) with pipes for stdout and
 * stderr, a pipe or /dev/null for stdin; learns execvp's errno through a
 * close-on-exec status pipe (ERROR instead of STARTED); then polls the
 * connection, both output pipes, the stdin pipe and a SIGCHLD self-pipe. At
 * most one output frame is pending at a time (the socket is non-blocking),
 * and while it drains the handler keeps taking STDIN and SIGNAL frames. EXIT
 * goes out once the command was reaped and both pipes reached EOF. If the
 * connection closes first, the process group gets SIGKILL and is reaped.
 *
 * usage: swiftlet-agent [--listen vsock:PORT | --listen unix:PATH]
 *   vsock:PORT   (default vsock:1024) prints "SWIFTLET-AGENT port=PORT"
 *   unix:PATH    for host tests; prints "SWIFTLET-AGENT unix=PATH"; a stale
 *                socket at PATH is replaced, SIGTERM/SIGINT remove it
 * The line goes to stdout once bind() and listen() succeeded.
 *
 * Build: musl-gcc -static -Os -s -Wall -Wextra -o swiftlet-agent agent.c
 * (gcc -static works too; glibc makes it about 17 times larger).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

/* The AF_VSOCK address, as in the kernel's include/uapi/linux/vm_sockets.h.
 * musl ships no kernel headers, so with musl-gcc (the guest build: a static
 * binary of about 40 KB instead of 700 KB with glibc) it is spelled out here;
 * the layout is kernel ABI. */
#if __has_include(<linux/vm_sockets.h>)
#include <linux/vm_sockets.h>
#else
struct sockaddr_vm {
    sa_family_t svm_family;      /* AF_VSOCK */
    unsigned short svm_reserved1;
    unsigned int svm_port;
    unsigned int svm_cid;
    unsigned char svm_flags;
    unsigned char svm_zero[sizeof(struct sockaddr) - sizeof(sa_family_t) - sizeof(unsigned short) -
                           2 * sizeof(unsigned int) - sizeof(unsigned char)];
};
#define VMADDR_CID_ANY (-1U)
#define VMADDR_PORT_ANY (-1U)
#endif
_Static_assert(sizeof(struct sockaddr_vm) == 16, "struct sockaddr_vm is 16 bytes (kernel ABI)");

/* ---- protocol (PROTOCOL.md) ------------------------------------------------ */

enum {
    FRAME_EXEC = 1,
    FRAME_STDIN = 2,
    FRAME_SIGNAL = 3,
    FRAME_STARTED = 0x81,
    FRAME_STDOUT = 0x82,
    FRAME_STDERR = 0x83,
    FRAME_EXIT = 0x84,
    FRAME_ERROR = 0x85,
};

#define HEADER_SIZE 8
#define MAX_FRAME (1u << 20)     /* largest payload the agent accepts */
#define MAX_OUTPUT (64u << 10)   /* largest STDOUT/STDERR chunk it sends */
#define MAX_ARGC 4096
#define MAX_ENVC 4096
#define EXEC_FLAG_STDIN 1u
#define EXEC_FLAGS_KNOWN EXEC_FLAG_STDIN
#define EXIT_KIND_EXITED 0
#define EXIT_KIND_SIGNALED 1
#define DEFAULT_PORT 1024

static const char *const default_env[] = {
    "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "TERM=dumb",
};
#define DEFAULT_ENVC (sizeof default_env / sizeof default_env[0])

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---- small helpers ---------------------------------------------------------- */

/* One write(2) per line, so lines never interleave mid-line on the console. */
static void say(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(int fd, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof buf - 2)
        n = sizeof buf - 2;
    buf[n++] = '\n';
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, (size_t)n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        p += w;
        n -= (int)w;
    }
}

/* Blocking full write to a descriptor that may be non-blocking (waits with
 * poll). Only for the short frames of the start-up path. */
static int write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                struct pollfd pfd = {.fd = fd, .events = POLLOUT};
                if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
                    return -1;
                continue;
            }
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Blocking full read; returns 1 on success, 0 on EOF before len bytes, -1 on error. */
static int read_all(int fd, void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t r = read(fd, p, len);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0)
            return 0;
        p += r;
        len -= (size_t)r;
    }
    return 1;
}

static int set_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* ---- the connection handler ---------------------------------------------------- */

static int sigchld_pipe[2] = {-1, -1};

static void on_sigchld(int sig)
{
    (void)sig;
    int saved = errno;
    ssize_t r = write(sigchld_pipe[1], "c", 1); /* full pipe: a wake-up is already pending */
    (void)r;
    errno = saved;
}

/* Send ERROR errno + message on the (blocking-capable) connection. */
static void send_error(int conn, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void send_error(int conn, int err, const char *fmt, ...)
{
    uint8_t frame[HEADER_SIZE + 4 + 400];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf((char *)frame + HEADER_SIZE + 4, sizeof frame - HEADER_SIZE - 4, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n > sizeof frame - HEADER_SIZE - 4 - 1)
        n = (int)(sizeof frame - HEADER_SIZE - 4 - 1);
    put_u32(frame, FRAME_ERROR);
    put_u32(frame + 4, 4 + (uint32_t)n);
    put_u32(frame + HEADER_SIZE, (uint32_t)err);
    write_all(conn, frame, HEADER_SIZE + 4 + (size_t)n);
}

struct exec_request {
    char **argv;          /* argc + 1 entries, NULL-terminated */
    char **envp;          /* defaults merged with the given entries, NULL-terminated */
    const char *cwd;
    uint32_t flags;
};

/* A cursor over the EXEC payload; every read is bounds-checked. */
struct cursor {
    uint8_t *p;
    size_t left;
};

static int take_u32(struct cursor *c, uint32_t *v)
{
    if (c->left < 4)
        return -1;
    *v = get_u32(c->p);
    c->p += 4;
    c->left -= 4;
    return 0;
}

/* A string is u32 length + bytes without NUL. It is NUL-terminated in place
 * by moving it 4 bytes back over its own length field (the payload buffer is
 * ours), so no copy and no allocation per string. */
static int take_string(struct cursor *c, char **out)
{
    uint32_t len;
    if (take_u32(c, &len) != 0 || len > c->left)
        return -1;
    if (memchr(c->p, '\0', len) != NULL)
        return -1;
    char *s = (char *)c->p - 4;
    memmove(s, c->p, len);
    s[len] = '\0';
    c->p += len;
    c->left -= len;
    *out = s;
    return 0;
}

static size_t key_length(const char *entry)
{
    return (size_t)(strchr(entry, '=') - entry);
}

/* Parse EXEC. Returns 0, or -1 with *why set (a protocol error: EPROTO). */
static int parse_exec(uint8_t *payload, size_t len, struct exec_request *req, const char **why)
{
    struct cursor c = {payload, len};
    uint32_t argc, envc;
    if (take_u32(&c, &argc) != 0) {
        *why = "EXEC: payload too short for argc";
        return -1;
    }
    if (argc < 1 || argc > MAX_ARGC) {
        *why = "EXEC: argc must be 1..4096";
        return -1;
    }
    /* Each string takes at least 4 bytes: a count larger than the payload can
     * hold is rejected before any allocation. */
    if ((size_t)argc * 4 > c.left) {
        *why = "EXEC: argc larger than the payload holds";
        return -1;
    }
    req->argv = calloc((size_t)argc + 1, sizeof *req->argv);
    if (!req->argv) {
        *why = "EXEC: out of memory";
        return -1;
    }
    for (uint32_t i = 0; i < argc; i++) {
        if (take_string(&c, &req->argv[i]) != 0) {
            *why = "EXEC: argument string overruns the payload or contains NUL";
            return -1;
        }
    }
    if (take_u32(&c, &envc) != 0) {
        *why = "EXEC: payload too short for envc";
        return -1;
    }
    if (envc > MAX_ENVC) {
        *why = "EXEC: envc must be 0..4096";
        return -1;
    }
    if ((size_t)envc * 4 > c.left) {
        *why = "EXEC: envc larger than the payload holds";
        return -1;
    }
    req->envp = calloc(DEFAULT_ENVC + envc + 1, sizeof *req->envp);
    if (!req->envp) {
        *why = "EXEC: out of memory";
        return -1;
    }
    size_t n = 0;
    for (size_t i = 0; i < DEFAULT_ENVC; i++)
        req->envp[n++] = (char *)default_env[i];
    for (uint32_t i = 0; i < envc; i++) {
        char *entry;
        if (take_string(&c, &entry) != 0) {
            *why = "EXEC: environment string overruns the payload or contains NUL";
            return -1;
        }
        char *eq = strchr(entry, '=');
        if (eq == NULL || eq == entry) {
            *why = "EXEC: environment entry is not KEY=VALUE";
            return -1;
        }
        /* A given KEY replaces a default or an earlier entry with that KEY. */
        size_t klen = (size_t)(eq - entry), j;
        for (j = 0; j < n; j++)
            if (key_length(req->envp[j]) == klen && memcmp(req->envp[j], entry, klen) == 0)
                break;
        req->envp[j] = entry;
        if (j == n)
            n++;
    }
    char *cwd;
    if (take_string(&c, &cwd) != 0) {
        *why = "EXEC: working directory overruns the payload or contains NUL";
        return -1;
    }
    req->cwd = cwd[0] ? cwd : "/";
    if (take_u32(&c, &req->flags) != 0) {
        *why = "EXEC: payload too short for flags";
        return -1;
    }
    if (req->flags & ~EXEC_FLAGS_KNOWN) {
        *why = "EXEC: unknown flag bits";
        return -1;
    }
    if (c.left != 0) {
        *why = "EXEC: trailing bytes after flags";
        return -1;
    }
    return 0;
}

/* What the command's child reports through the status pipe when it fails
 * before or in execvp (the pipe is close-on-exec: EOF means exec succeeded). */
enum { STAGE_CHDIR = 1, STAGE_STDIO = 2, STAGE_EXEC = 3, STAGE_SESSION = 4 };

static void __attribute__((noreturn)) child_fail(int status_fd, uint32_t stage)
{
    uint8_t msg[8];
    put_u32(msg, stage);
    put_u32(msg + 4, (uint32_t)errno);
    ssize_t w = write(status_fd, msg, sizeof msg);
    (void)w;
    _exit(127);
}

static void __attribute__((noreturn))
run_child(const struct exec_request *req, int stdin_fd, int stdout_fd, int stderr_fd, int status_fd)
{
    /* Dispositions set to SIG_IGN survive exec: the command gets defaults. */
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    for (int sig = 1; sig < NSIG; sig++)
        sigaction(sig, &dfl, NULL); /* fails harmlessly for SIGKILL, SIGSTOP, invalid */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (setsid() < 0)
        child_fail(status_fd, STAGE_SESSION);
    /* The pipes are all >= 3 (main() keeps 0-2 open), so dup2 order is safe;
     * dup2 clears close-on-exec on the copies. */
    if (dup2(stdin_fd, STDIN_FILENO) < 0 || dup2(stdout_fd, STDOUT_FILENO) < 0 ||
        dup2(stderr_fd, STDERR_FILENO) < 0)
        child_fail(status_fd, STAGE_STDIO);
    if (chdir(req->cwd) != 0)
        child_fail(status_fd, STAGE_CHDIR);
    /* execvp searches the PATH of the environment it runs in: the command's. */
    environ = req->envp;
    execvp(req->argv[0], req->argv);
    child_fail(status_fd, STAGE_EXEC);
}

/* Connection state of the poll loop. */
struct session {
    int conn;
    pid_t pid;             /* the command, leader of its process group */
    int stdin_fd;          /* -1: closed (end of input, EPIPE, or not requested) */
    int out_fd[2];         /* stdout, stderr pipes; -1 at EOF */
    int reaped;
    int status;
    int stdin_wanted;      /* the host announced STDIN frames (flag bit 0) */
    int stdin_ended;       /* the host sent STDIN of length 0 */
    int first_output;      /* which pipe is read first next round (fairness) */
    /* input: the header being read, then the payload of the current frame */
    uint8_t in_header[HEADER_SIZE];
    size_t in_header_have;
    uint32_t in_type, in_left;     /* payload bytes still to read */
    uint8_t in_small[4];           /* SIGNAL payload */
    size_t in_small_have;
    uint8_t stdin_buf[64 << 10];   /* STDIN bytes read, not yet in the pipe */
    size_t stdin_have, stdin_off;
    /* output: one frame at a time */
    uint8_t out_buf[HEADER_SIZE + MAX_OUTPUT];
    size_t out_len, out_off;
};

static void kill_group(struct session *s, int sig)
{
    if (!s->reaped || s->out_fd[0] >= 0 || s->out_fd[1] >= 0)
        kill(-s->pid, sig); /* ESRCH when the group is gone: nothing to do */
}

static void reap(struct session *s, int block)
{
    while (!s->reaped) {
        int st;
        pid_t r = waitpid(s->pid, &st, block ? 0 : WNOHANG);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == s->pid) {
            s->reaped = 1;
            s->status = st;
        } else if (r < 0) {
            s->reaped = 1; /* ECHILD: cannot happen for our own child; do not spin */
            s->status = 0;
        }
        return;
    }
}

/* Connection lost or protocol error: kill the command's group and reap it. */
static void __attribute__((noreturn)) abandon(struct session *s)
{
    kill(-s->pid, SIGKILL);
    reap(s, 1);
    _exit(0);
}

static void __attribute__((noreturn)) protocol_error(struct session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void __attribute__((noreturn)) protocol_error(struct session *s, const char *fmt, ...)
{
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* Whatever output frame was half sent must be finished first, or the
     * ERROR would land in the middle of it. */
    if (s->out_off < s->out_len)
        write_all(s->conn, s->out_buf + s->out_off, s->out_len - s->out_off);
    send_error(s->conn, EPROTO, "%s", msg);
    abandon(s);
}

/* A whole frame from the host was read: act on it. */
static void frame_done(struct session *s)
{
    if (s->in_type == FRAME_SIGNAL) {
        uint32_t sig = get_u32(s->in_small);
        if (sig < 1 || sig >= NSIG)
            protocol_error(s, "SIGNAL: %u is not a signal number (1..%d)", sig, NSIG - 1);
        kill_group(s, (int)sig);
    }
}

/* Read what is available from the connection, as far as the input state lets. */
static void read_connection(struct session *s)
{
    for (;;) {
        if (s->in_header_have < HEADER_SIZE) {
            ssize_t r = read(s->conn, s->in_header + s->in_header_have, HEADER_SIZE - s->in_header_have);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0 && errno == EAGAIN)
                return;
            if (r <= 0)
                abandon(s); /* EOF or error before EXIT: the host is gone */
            s->in_header_have += (size_t)r;
            if (s->in_header_have < HEADER_SIZE)
                continue;
            s->in_type = get_u32(s->in_header);
            s->in_left = get_u32(s->in_header + 4);
            s->in_small_have = 0;
            switch (s->in_type) {
            case FRAME_STDIN:
                if (!s->stdin_wanted)
                    protocol_error(s, "STDIN: the EXEC flags did not announce stdin");
                if (s->stdin_ended)
                    protocol_error(s, "STDIN: after the end of input");
                if (s->in_left > MAX_FRAME)
                    protocol_error(s, "frame length %u exceeds 1 MiB", s->in_left);
                if (s->in_left == 0) {
                    s->stdin_ended = 1;
                    if (s->stdin_have == s->stdin_off)
                        close_fd(&s->stdin_fd);
                }
                break;
            case FRAME_SIGNAL:
                if (s->in_left != 4)
                    protocol_error(s, "SIGNAL: payload must be 4 bytes, got %u", s->in_left);
                break;
            case FRAME_EXEC:
                protocol_error(s, "EXEC: a second EXEC on one connection");
            default:
                protocol_error(s, "unknown frame type 0x%x", s->in_type);
            }
            if (s->in_left == 0) {
                s->in_header_have = 0;
                frame_done(s);
            }
            continue;
        }
        /* payload */
        ssize_t r;
        if (s->in_type == FRAME_STDIN) {
            if (s->stdin_have != s->stdin_off)
                return; /* the pipe must take what we have first */
            size_t want = s->in_left < sizeof s->stdin_buf ? s->in_left : sizeof s->stdin_buf;
            r = read(s->conn, s->stdin_buf, want);
            if (r > 0) {
                s->stdin_have = (size_t)r;
                s->stdin_off = 0;
                if (s->stdin_fd < 0)
                    s->stdin_have = 0; /* the command closed its stdin: drop */
            }
        } else {
            r = read(s->conn, s->in_small + s->in_small_have, s->in_left);
            if (r > 0)
                s->in_small_have += (size_t)r;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return;
        if (r <= 0)
            abandon(s);
        s->in_left -= (uint32_t)r;
        if (s->in_left == 0) {
            s->in_header_have = 0;
            frame_done(s);
        }
    }
}

static void write_stdin(struct session *s)
{
    while (s->stdin_off < s->stdin_have) {
        ssize_t w = write(s->stdin_fd, s->stdin_buf + s->stdin_off, s->stdin_have - s->stdin_off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            return;
        if (w < 0) {
            /* EPIPE: the command closed its stdin. Later STDIN bytes are dropped. */
            close_fd(&s->stdin_fd);
            break;
        }
        s->stdin_off += (size_t)w;
    }
    s->stdin_have = s->stdin_off = 0;
    if (s->stdin_ended)
        close_fd(&s->stdin_fd);
}

/* Push the pending output frame; returns when done or the socket is full. */
static void flush_output(struct session *s)
{
    while (s->out_off < s->out_len) {
        ssize_t w = write(s->conn, s->out_buf + s->out_off, s->out_len - s->out_off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            return;
        if (w < 0)
            abandon(s); /* EPIPE, ECONNRESET: the host is gone */
        s->out_off += (size_t)w;
    }
    s->out_len = s->out_off = 0;
}

/* Read one chunk from an output pipe into a new frame (the buffer is empty). */
static void read_output(struct session *s, int which)
{
    for (;;) {
        ssize_t r = read(s->out_fd[which], s->out_buf + HEADER_SIZE, MAX_OUTPUT);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return;
        if (r <= 0) {
            close_fd(&s->out_fd[which]);
            return;
        }
        put_u32(s->out_buf, which == 0 ? FRAME_STDOUT : FRAME_STDERR);
        put_u32(s->out_buf + 4, (uint32_t)r);
        s->out_len = HEADER_SIZE + (size_t)r;
        s->out_off = 0;
        return;
    }
}

static void drain_sigchld_pipe(void)
{
    char buf[64];
    while (read(sigchld_pipe[0], buf, sizeof buf) > 0)
        ;
}

static void __attribute__((noreturn)) handle_connection(int conn)
{
    /* The frame header and EXEC payload are read blocking. */
    uint8_t header[HEADER_SIZE];
    int r = read_all(conn, header, sizeof header);
    if (r <= 0)
        _exit(0);
    uint32_t type = get_u32(header), len = get_u32(header + 4);
    if (type != FRAME_EXEC) {
        send_error(conn, EPROTO, "the first frame must be EXEC (type 1), got type 0x%x", type);
        _exit(0);
    }
    if (len > MAX_FRAME) {
        send_error(conn, EPROTO, "frame length %u exceeds 1 MiB", len);
        _exit(0);
    }
    uint8_t *payload = malloc(len ? len : 1);
    if (!payload) {
        send_error(conn, ENOMEM, "no memory for a %u-byte EXEC", len);
        _exit(0);
    }
    if (read_all(conn, payload, len) <= 0)
        _exit(0);
    struct exec_request req = {0};
    const char *why = NULL;
    if (parse_exec(payload, len, &req, &why) != 0) {
        send_error(conn, EPROTO, "%s", why);
        _exit(0);
    }

    int in_pipe[2] = {-1, -1}, out_pipe[2], err_pipe[2], status_pipe[2];
    if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0 ||
        pipe2(status_pipe, O_CLOEXEC) != 0 || pipe2(sigchld_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        send_error(conn, errno, "pipe: %s", strerror(errno));
        _exit(0);
    }
    if (req.flags & EXEC_FLAG_STDIN) {
        if (pipe2(in_pipe, O_CLOEXEC) != 0) {
            send_error(conn, errno, "pipe: %s", strerror(errno));
            _exit(0);
        }
    } else {
        in_pipe[0] = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (in_pipe[0] < 0) {
            send_error(conn, errno, "open /dev/null: %s", strerror(errno));
            _exit(0);
        }
    }
    struct sigaction sa = {.sa_handler = on_sigchld, .sa_flags = SA_RESTART | SA_NOCLDSTOP};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGCHLD, &sa, NULL);

    pid_t pid = fork();
    if (pid < 0) {
        send_error(conn, errno, "fork: %s", strerror(errno));
        _exit(0);
    }
    if (pid == 0)
        run_child(&req, in_pipe[0], out_pipe[1], err_pipe[1], status_pipe[1]);

    close(status_pipe[1]);
    close(out_pipe[1]);
    close(err_pipe[1]);
    close(in_pipe[0]);
    uint8_t failure[8];
    r = read_all(status_pipe[0], failure, sizeof failure);
    close(status_pipe[0]);
    if (r != 0) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        if (r < 0) {
            send_error(conn, errno, "reading the command's start-up status: %s", strerror(errno));
            _exit(0);
        }
        uint32_t stage = get_u32(failure);
        int err = (int)get_u32(failure + 4);
        if (stage == STAGE_CHDIR)
            send_error(conn, err, "chdir %s: %s", req.cwd, strerror(err));
        else if (stage == STAGE_EXEC)
            send_error(conn, err, "exec %s: %s", req.argv[0], strerror(err));
        else if (stage == STAGE_STDIO)
            send_error(conn, err, "dup2: %s", strerror(err));
        else
            send_error(conn, err, "setsid: %s", strerror(err));
        _exit(0);
    }

    static struct session s; /* large buffers: not on the stack */
    s.conn = conn;
    s.pid = pid;
    s.stdin_fd = in_pipe[1];
    s.out_fd[0] = out_pipe[0];
    s.out_fd[1] = err_pipe[0];
    s.stdin_wanted = (req.flags & EXEC_FLAG_STDIN) != 0;
    uint8_t started[HEADER_SIZE + 4];
    put_u32(started, FRAME_STARTED);
    put_u32(started + 4, 4);
    put_u32(started + HEADER_SIZE, (uint32_t)pid);
    if (write_all(conn, started, sizeof started) != 0)
        abandon(&s);

    if (set_nonblocking(conn) != 0 || set_nonblocking(s.out_fd[0]) != 0 || set_nonblocking(s.out_fd[1]) != 0 ||
        (s.stdin_fd >= 0 && set_nonblocking(s.stdin_fd) != 0))
        abandon(&s);

    for (;;) {
        reap(&s, 0);
        if (s.reaped && s.out_fd[0] < 0 && s.out_fd[1] < 0 && s.out_len == 0)
            break;
        struct pollfd pfd[5];
        int n = 0, i_conn = -1, i_out[2] = {-1, -1}, i_in = -1;
        /* The connection: frames in (unless stdin bytes wait for the pipe),
         * room for the pending output frame. POLLRDHUP sees a host that
         * closed while we are not reading. */
        short ev = POLLRDHUP;
        int stdin_blocked = s.in_type == FRAME_STDIN && s.in_header_have == HEADER_SIZE &&
                            s.stdin_have != s.stdin_off;
        if (!stdin_blocked)
            ev |= POLLIN;
        if (s.out_len)
            ev |= POLLOUT;
        pfd[i_conn = n++] = (struct pollfd){.fd = conn, .events = ev};
        for (int k = 0; k < 2; k++)
            if (s.out_fd[k] >= 0 && s.out_len == 0)
                pfd[i_out[k] = n++] = (struct pollfd){.fd = s.out_fd[k], .events = POLLIN};
        if (s.stdin_fd >= 0 && s.stdin_have != s.stdin_off)
            pfd[i_in = n++] = (struct pollfd){.fd = s.stdin_fd, .events = POLLOUT};
        pfd[n++] = (struct pollfd){.fd = sigchld_pipe[0], .events = POLLIN};

        /* While output waits for room, try the write once a second anyway: a
         * host that shut down its reading end (SHUT_RD) never makes room and
         * never shows in poll, but the write then fails with EPIPE. */
        int ready = poll(pfd, (nfds_t)n, s.out_len ? 1000 : -1);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            abandon(&s);
        }
        if (ready == 0) {
            flush_output(&s);
            continue;
        }
        drain_sigchld_pipe();
        short re = pfd[i_conn].revents;
        if (re & (POLLERR | POLLNVAL))
            abandon(&s);
        if (re & (POLLIN | POLLHUP | POLLRDHUP)) {
            if (ev & POLLIN)
                read_connection(&s); /* reads the EOF and abandons if the host is gone */
            else
                abandon(&s);         /* closed while stdin data was pending */
        }
        if (s.out_len && (re & POLLOUT))
            flush_output(&s);
        if (i_in >= 0 && pfd[i_in].revents)
            write_stdin(&s);
        /* Alternate which pipe goes first so neither starves the other. */
        for (int j = 0; j < 2; j++) {
            int k = (s.first_output + j) & 1;
            if (i_out[k] >= 0 && pfd[i_out[k]].revents && s.out_len == 0 && s.out_fd[k] >= 0) {
                read_output(&s, k);
                if (s.out_len)
                    flush_output(&s);
            }
        }
        s.first_output ^= 1;
    }

    uint8_t exit_frame[HEADER_SIZE + 8];
    put_u32(exit_frame, FRAME_EXIT);
    put_u32(exit_frame + 4, 8);
    if (WIFSIGNALED(s.status)) {
        put_u32(exit_frame + HEADER_SIZE, EXIT_KIND_SIGNALED);
        put_u32(exit_frame + HEADER_SIZE + 4, (uint32_t)WTERMSIG(s.status));
    } else {
        put_u32(exit_frame + HEADER_SIZE, EXIT_KIND_EXITED);
        put_u32(exit_frame + HEADER_SIZE + 4, (uint32_t)WEXITSTATUS(s.status));
    }
    write_all(conn, exit_frame, sizeof exit_frame);
    _exit(0);
}

/* ---- the listener -------------------------------------------------------------- */

static const char *volatile unix_path;

/* SIGTERM, SIGINT: remove the Unix socket and go. Handlers of open
 * connections run on until their commands end. (unlink and _exit are
 * async-signal-safe; doing it here has no window in which a signal arriving
 * just before accept() would be missed.) */
static void on_stop(int sig)
{
    (void)sig;
    if (unix_path)
        unlink(unix_path);
    _exit(0);
}

static void on_listener_sigchld(int sig)
{
    (void)sig;
    int saved = errno;
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
    errno = saved;
}

static void __attribute__((noreturn)) usage(int status)
{
    say(status ? STDERR_FILENO : STDOUT_FILENO,
        "usage: swiftlet-agent [--listen vsock:PORT | --listen unix:PATH]\n"
        "Runs commands for the host (protocol: guest/agent/PROTOCOL.md).\n"
        "  vsock:PORT  AF_VSOCK, any CID, PORT 1..4294967294 (default vsock:%d)\n"
        "  unix:PATH   an AF_UNIX socket, for tests on a host", DEFAULT_PORT);
    exit(status);
}

static int listen_vsock(const char *spec)
{
    char *end;
    errno = 0;
    unsigned long long port = strtoull(spec, &end, 10);
    if (!*spec || *end || errno || port < 1 || port >= VMADDR_PORT_ANY) {
        say(STDERR_FILENO, "swiftlet-agent: vsock port must be 1..%u, got '%s'", VMADDR_PORT_ANY - 1, spec);
        exit(2);
    }
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        say(STDERR_FILENO, "swiftlet-agent: socket(AF_VSOCK): %s (the kernel needs CONFIG_VSOCKETS and a "
            "vsock transport such as CONFIG_VIRTIO_VSOCKETS)", strerror(errno));
        exit(1);
    }
    struct sockaddr_vm addr = {
        .svm_family = AF_VSOCK,
        .svm_port = (unsigned int)port,
        .svm_cid = VMADDR_CID_ANY,
    };
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        say(STDERR_FILENO, "swiftlet-agent: bind vsock port %llu: %s%s", port, strerror(errno),
            errno == EADDRINUSE ? " (is another agent running?)" : "");
        exit(1);
    }
    if (listen(fd, 64) != 0) {
        say(STDERR_FILENO, "swiftlet-agent: listen on vsock port %llu: %s", port, strerror(errno));
        exit(1);
    }
    say(STDOUT_FILENO, "SWIFTLET-AGENT port=%llu", port);
    return fd;
}

static int listen_unix(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (!*path || strlen(path) >= sizeof addr.sun_path) {
        say(STDERR_FILENO, "swiftlet-agent: unix socket path must be 1..%zu bytes", sizeof addr.sun_path - 1);
        exit(2);
    }
    memcpy(addr.sun_path, path, strlen(path));
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            say(STDERR_FILENO, "swiftlet-agent: %s exists and is not a socket; choose another path", path);
            exit(1);
        }
        unlink(path); /* a stale socket from an earlier run */
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        say(STDERR_FILENO, "swiftlet-agent: socket(AF_UNIX): %s", strerror(errno));
        exit(1);
    }
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        say(STDERR_FILENO, "swiftlet-agent: bind %s: %s", path, strerror(errno));
        exit(1);
    }
    unix_path = path;
    if (listen(fd, 64) != 0) {
        say(STDERR_FILENO, "swiftlet-agent: listen on %s: %s", path, strerror(errno));
        unlink(path);
        exit(1);
    }
    say(STDOUT_FILENO, "SWIFTLET-AGENT unix=%s", path);
    return fd;
}

int main(int argc, char **argv)
{
    const char *listen_spec = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)
            usage(0);
        else if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc)
            listen_spec = argv[++i];
        else if (strncmp(argv[i], "--listen=", 9) == 0)
            listen_spec = argv[i] + 9;
        else {
            say(STDERR_FILENO, "swiftlet-agent: unknown argument '%s'", argv[i]);
            usage(2);
        }
    }

    /* Keep 0-2 open so that no socket or pipe ever lands there (the child's
     * dup2 onto 0-2 relies on it). */
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) < 0)
            return 1;

    /* A host that goes away mid-write must cost an EPIPE, not the agent. */
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_listener_sigchld, .sa_flags = SA_RESTART | SA_NOCLDSTOP};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGCHLD, &sa, NULL);
    struct sigaction stop = {.sa_handler = on_stop};
    sigemptyset(&stop.sa_mask);
    sigaction(SIGTERM, &stop, NULL);
    sigaction(SIGINT, &stop, NULL);
    /* The mask is inherited: a parent that started the agent with SIGCHLD
     * blocked (a thread of a program that blocks signals, as Swift's thread
     * pool does) would leave every exited command unreaped and its connection
     * waiting for ever. */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    int lfd;
    if (!listen_spec)
        listen_spec = "vsock:1024";
    if (strncmp(listen_spec, "vsock:", 6) == 0)
        lfd = listen_vsock(listen_spec + 6);
    else if (strncmp(listen_spec, "unix:", 5) == 0)
        lfd = listen_unix(listen_spec + 5);
    else {
        say(STDERR_FILENO, "swiftlet-agent: --listen takes vsock:PORT or unix:PATH, got '%s'", listen_spec);
        return 2;
    }

    for (;;) {
        int conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (conn < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            say(STDERR_FILENO, "swiftlet-agent: accept: %s", strerror(errno));
            if (errno == EMFILE || errno == ENFILE || errno == ENOMEM || errno == ENOBUFS)
                usleep(100 * 1000); /* out of resources: retry later, do not spin */
            else if (errno == EBADF || errno == EINVAL || errno == ENOTSOCK)
                break;
            continue;
        }
        pid_t pid = fork();
        if (pid == 0) {
            close(lfd);
            struct sigaction dfl = {.sa_handler = SIG_DFL};
            sigaction(SIGTERM, &dfl, NULL);
            sigaction(SIGINT, &dfl, NULL);
            handle_connection(conn);
        }
        if (pid < 0) {
            send_error(conn, errno, "agent cannot fork a handler: %s", strerror(errno));
            say(STDERR_FILENO, "swiftlet-agent: fork: %s", strerror(errno));
        }
        close(conn);
    }
    if (unix_path)
        unlink(unix_path);
    return 1;
}
