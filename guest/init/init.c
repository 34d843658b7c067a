/*
 * Swiftlet guest init (PID 1).
 *
 * Static C so that nothing runs before the ready marker: no shell start-up,
 * no dynamic loader. It
 *   - writes 123 to I/O port 0x440 (the Swiftlet boot-timer port: "userspace
 *     reached"), harmless where nothing listens there;
 *   - mounts /proc, /sys, /dev (devtmpfs), /dev/pts, /dev/shm, /tmp, /run;
 *   - puts stdin/stdout/stderr on /dev/console and prints SWIFTLET-READY;
 *   - with swiftlet.agent, starts the guest agent (/sbin/swiftlet-agent,
 *     guest/agent) listening on that vsock port; the agent itself prints
 *     SWIFTLET-AGENT port=N once it listens;
 *   - runs the scenario named by swiftlet.test=NAME (/scenarios/NAME.sh under
 *     busybox sh) and prints SWIFTLET-DONE test=NAME status=N, or, without
 *     swiftlet.test, an interactive shell on the console (not by default
 *     when the agent runs);
 *   - reaps every child, then sync()s and reboot()s (RB_AUTOBOOT, or
 *     RB_POWER_OFF with swiftlet.poweroff=1). With the agent and no
 *     swiftlet.test it never reboots by itself: it reaps children forever and
 *     the host stops the VM. PID 1 never exits.
 *
 * Kernel command line:
 *   swiftlet.test=NAME    run /scenarios/NAME.sh (NAME: [A-Za-z0-9_.-]+)
 *   swiftlet.shell=0|1    interactive shell; default 1 without swiftlet.test
 *                         and without swiftlet.agent, else 0 (1 then gives a
 *                         shell after the scenario, or beside the agent)
 *   swiftlet.poweroff=1   power off instead of reboot at the end
 *   swiftlet.agent=PORT   start the guest agent on vsock port PORT
 *                         (2..4294967294); 1 means the default port 1024,
 *                         0 means no agent (the default)
 *
 * Not PID 1 (a test run on a host): no port write, no mounts, no console
 * set-up, no agent, no reboot; the command line comes from $SWIFTLET_CMDLINE
 * if set and the scenario directory from $SWIFTLET_SCENARIOS; it exits with
 * the scenario's status.
 *
 * Build: gcc -static -Os -Wall -Wextra -o init init.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define BOOT_TIMER_PORT 0x440
#define BOOT_TIMER_VALUE 123
#define SCENARIO_DIR "/scenarios"
#define SHELL "/bin/sh"
#define AGENT "/sbin/swiftlet-agent"
#define AGENT_DEFAULT_PORT 1024

static int is_pid1;
/* One write(2) per line, so lines from init never interleave mid-line. */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
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
        ssize_t w = write(STDOUT_FILENO, p, (size_t)n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        p += w;
        n -= (int)w;
    }
}

static void boot_timer(void)
{
    if (ioperm(BOOT_TIMER_PORT, 1, 1) == 0) {
        outb(BOOT_TIMER_VALUE, BOOT_TIMER_PORT);
        ioperm(BOOT_TIMER_PORT, 1, 0);
    }
}

static void do_mount(const char *src, const char *dir, const char *type,
                     unsigned long flags, const char *data, mode_t mode)
{
    if (mkdir(dir, mode) != 0 && errno != EEXIST)
        say("init: mkdir %s: %s", dir, strerror(errno));
    if (mount(src, dir, type, flags, data) != 0 && errno != EBUSY)
        say("init: mount %s on %s: %s", type, dir, strerror(errno));
}

static void setup_console(void)
{
    /* No O_CLOEXEC: without a console from the kernel this may be fd 0,
     * and dup2(0, 0) would leave the flag on. */
    int fd = open("/dev/console", O_RDWR | O_NOCTTY);
    if (fd < 0) {
        mknod("/dev/console", S_IFCHR | 0600, makedev(5, 1));
        fd = open("/dev/console", O_RDWR | O_NOCTTY);
    }
    if (fd < 0)
        return; /* keep whatever the kernel gave us */
    for (int i = 0; i < 3; i++)
        dup2(fd, i);
    if (fd > 2)
        close(fd);
}

static void mount_all(void)
{
    const unsigned long nsnd = MS_NOSUID | MS_NODEV;
    do_mount("proc", "/proc", "proc", nsnd | MS_NOEXEC, NULL, 0555);
    do_mount("sysfs", "/sys", "sysfs", nsnd | MS_NOEXEC, NULL, 0555);
    do_mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755", 0755);
    do_mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
             "gid=5,mode=0620,ptmxmode=0666", 0755);
    do_mount("tmpfs", "/dev/shm", "tmpfs", nsnd, "mode=1777", 01777);
    do_mount("tmpfs", "/tmp", "tmpfs", nsnd, "mode=1777", 01777);
    do_mount("tmpfs", "/run", "tmpfs", nsnd, "mode=0755", 0755);
}

/* ---- kernel command line ------------------------------------------------- */

static char cmdline[8192];

static void read_cmdline(void)
{
    const char *env = is_pid1 ? NULL : getenv("SWIFTLET_CMDLINE");
    if (env) {
        snprintf(cmdline, sizeof cmdline, "%s", env);
        return;
    }
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        say("init: /proc/cmdline: %s", strerror(errno));
        return;
    }
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, cmdline + len, sizeof cmdline - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        if (len == sizeof cmdline - 1)
            break;
    }
    cmdline[len] = '\0';
    close(fd);
}

/* Value of the last KEY=value word on the command line (copied into out), or
 * NULL when absent. Words are separated by blanks; quotes are not needed by
 * any swiftlet.* parameter and are not interpreted. */
static const char *param(const char *key, char *out, size_t outsz)
{
    size_t klen = strlen(key);
    const char *found = NULL;
    size_t flen = 0;
    for (const char *p = cmdline; *p;) {
        while (*p == ' ' || *p == '\t' || *p == '\n')
            p++;
        const char *w = p;
        while (*p && *p != ' ' && *p != '\t' && *p != '\n')
            p++;
        size_t wlen = (size_t)(p - w);
        if (wlen > klen && strncmp(w, key, klen) == 0 && w[klen] == '=') {
            found = w + klen + 1;
            flen = wlen - klen - 1;
        }
    }
    if (!found)
        return NULL;
    if (flen >= outsz)
        flen = outsz - 1;
    memcpy(out, found, flen);
    out[flen] = '\0';
    return out;
}

static int valid_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
}

static int valid_name(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!valid_char(*s))
            return 0;
    return 1;
}

/* ---- children ------------------------------------------------------------- */

static pid_t agent_pid = -1;

/* A child was reaped: say so if it was the agent (it should never end). */
static void reaped(pid_t pid, int st)
{
    if (pid != agent_pid || pid < 0)
        return;
    agent_pid = -1;
    if (WIFSIGNALED(st))
        say("SWIFTLET-AGENT-EXIT signal=%d", WTERMSIG(st));
    else
        say("SWIFTLET-AGENT-EXIT status=%d", WEXITSTATUS(st));
}
static const char *scenario_dir = SCENARIO_DIR;


/* Wait for `child`, reaping any other child (orphans re-parented to PID 1)
 * on the way. Returns its exit code, 128+N when killed by signal N. */
static int wait_for(pid_t child)
{
    for (;;) {
        int st;
        pid_t pid = waitpid(-1, &st, 0);
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            return 127; /* ECHILD: nothing left to wait for */
        }
        if (pid != child) {
            reaped(pid, st);
            continue;
        }
        if (WIFEXITED(st))
            return WEXITSTATUS(st);
        if (WIFSIGNALED(st))
            return 128 + WTERMSIG(st);
    }
}

static void child_defaults(void)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (chdir("/") != 0)
        _exit(127);
}

static int run_scenario(const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s.sh", scenario_dir, name);
    if (access(path, R_OK) != 0) {
        say("SWIFTLET-RESULT test=%s check=exists fail no such scenario", name);
        return 127;
    }
    pid_t pid = fork();
    if (pid < 0) {
        say("SWIFTLET-RESULT test=%s check=exists fail fork: %s", name, strerror(errno));
        return 127;
    }
    if (pid == 0) {
        child_defaults();
        setsid();
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0) {
            dup2(null, STDIN_FILENO);
            if (null != STDIN_FILENO)
                close(null);
        }
        setenv("SWIFTLET_TEST", name, 1);
        setenv("SWIFTLET_SCENARIOS", scenario_dir, 1);
        execl(SHELL, "sh", path, (char *)NULL);
        say("init: exec %s: %s", SHELL, strerror(errno));
        _exit(127);
    }
    return wait_for(pid);
}

/* The console's real device (e.g. /dev/ttyS0), like busybox cttyhack: job
 * control wants a controlling tty, and /dev/console is an alias. */
static int open_console_tty(void)
{
    char name[64] = "";
    int fd = open("/sys/class/tty/console/active", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, name, sizeof name - 1);
        close(fd);
        name[n > 0 ? n : 0] = '\0';
        name[strcspn(name, "\n")] = '\0';
        char *last = strrchr(name, ' '); /* the last one is /dev/console */
        if (last)
            memmove(name, last + 1, strlen(last + 1) + 1);
    }
    if (name[0] && valid_name(name)) {
        char path[80];
        snprintf(path, sizeof path, "/dev/%s", name);
        fd = open(path, O_RDWR);
        if (fd >= 0)
            return fd;
    }
    return open("/dev/console", O_RDWR);
}

static int run_shell(void)
{
    pid_t pid = fork();
    if (pid < 0) {
        say("init: fork: %s", strerror(errno));
        return 127;
    }
    if (pid == 0) {
        child_defaults();
        setsid();
        int fd = open_console_tty();
        if (fd >= 0) {
            ioctl(fd, TIOCSCTTY, 1);
            for (int i = 0; i < 3; i++)
                dup2(fd, i);
            if (fd > 2)
                close(fd);
            tcsetpgrp(STDIN_FILENO, getpid());
        }
        execl(SHELL, "-sh", (char *)NULL);
        say("init: exec %s: %s", SHELL, strerror(errno));
        _exit(127);
    }
    return wait_for(pid);
}

/* swiftlet.agent: 0 when absent or 0, the port otherwise (1 -> 1024);
 * -1 when the value is not a port (reported on the console). */
static long long agent_port(void)
{
    char value[32];
    if (!param("swiftlet.agent", value, sizeof value))
        return 0;
    char *end;
    errno = 0;
    unsigned long long port = strtoull(value, &end, 10);
    /* 0xffffffff is VMADDR_PORT_ANY (include/uapi/linux/vm_sockets.h). */
    if (!value[0] || *end || errno || port > 0xfffffffeULL || value[0] == '-') {
        say("SWIFTLET-AGENT-ERROR swiftlet.agent=%s is not a vsock port (use 1 for the default %d, or 2..4294967294)",
            value, AGENT_DEFAULT_PORT);
        return -1;
    }
    return port == 1 ? AGENT_DEFAULT_PORT : (long long)port;
}

/* Start the agent; it prints SWIFTLET-AGENT port=N itself once it listens.
 * PID 1 reaps it like any child; it is not restarted (a failed bind would
 * only fail again). */
static pid_t start_agent(long long port)
{
    pid_t pid = fork();
    if (pid < 0) {
        say("SWIFTLET-AGENT-ERROR fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        child_defaults();
        setsid();
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0) {
            dup2(null, STDIN_FILENO);
            if (null != STDIN_FILENO)
                close(null);
        }
        char listen[32];
        snprintf(listen, sizeof listen, "vsock:%lld", port);
        execl(AGENT, "swiftlet-agent", "--listen", listen, (char *)NULL);
        say("SWIFTLET-AGENT-ERROR exec %s: %s", AGENT, strerror(errno));
        _exit(127);
    }
    return pid;
}

/* PID 1 must never exit: reap forever. */
static void __attribute__((noreturn)) idle_forever(void)
{
    for (;;) {
        int st;
        pid_t pid = waitpid(-1, &st, 0);
        if (pid > 0)
            reaped(pid, st);
        else if (errno == ECHILD)
            pause();
    }
}

int main(void)
{
    is_pid1 = getpid() == 1;
    if (is_pid1) {
        boot_timer();
        umask(022);
        mount_all();
        setup_console();
    } else {
        const char *dir = getenv("SWIFTLET_SCENARIOS");
        if (dir && *dir)
            scenario_dir = dir;
    }
    setenv("PATH", "/bin:/sbin:/usr/bin:/usr/sbin", 1);
    setenv("HOME", "/root", 1);
    setenv("TERM", "linux", 1);
    if (is_pid1 && chdir("/") != 0)
        say("init: chdir /: %s", strerror(errno));

    say("SWIFTLET-READY");

    read_cmdline();
    char test[256], shell[16], poweroff[16];
    const char *name = param("swiftlet.test", test, sizeof test);
    const char *sh = param("swiftlet.shell", shell, sizeof shell);
    long long port = agent_port();
    int want_shell = sh ? strcmp(sh, "0") != 0 : name == NULL && port == 0;
    int status = 0;

    if (port > 0 && is_pid1)
        agent_pid = start_agent(port);

    if (name) {
        if (valid_name(name)) {
            status = run_scenario(name);
        } else {
            for (char *c = test; *c; c++) /* keep the line parseable */
                if (!valid_char(*c))
                    *c = '?';
            say("SWIFTLET-RESULT test=%s check=name fail invalid test name (allowed: A-Z a-z 0-9 _ . -)", test);
            status = 2;
        }
        say("SWIFTLET-DONE test=%s status=%d", test, status);
    }
    if (want_shell)
        status = run_shell();

    if (!is_pid1)
        return status;
    if (port > 0 && !name)
        idle_forever(); /* the agent serves; the host stops the VM */

    sync();
    const char *po = param("swiftlet.poweroff", poweroff, sizeof poweroff);
    int how = po && strcmp(po, "1") == 0 ? RB_POWER_OFF : RB_AUTOBOOT;
    reboot(how);
    say("init: reboot: %s", strerror(errno));
    idle_forever();
}
