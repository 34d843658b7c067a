#include "lib.h"

void *memset(void *d, int c, usize n)
{
    u8 *p = d;
    /* rep stosb: one instruction, which matters where CPL0 code is emulated an instruction at a time (PVM). */
    __asm__ volatile("rep stosb" : "+D"(p), "+c"(n) : "a"(c) : "memory");
    return d;
}

void *memcpy(void *d, const void *s, usize n)
{
    void *r = d;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
    return r;
}

int memcmp(const void *a, const void *b, usize n)
{
    const u8 *x = a, *y = b;
    for (usize i = 0; i < n; i++)
        if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
    return 0;
}

usize strlen(const char *s)
{
    usize n = 0;
    while (s[n]) n++;
    return n;
}

int strncmp(const char *a, const char *b, usize n)
{
    for (usize i = 0; i < n; i++) {
        if (a[i] != b[i]) return (u8)a[i] < (u8)b[i] ? -1 : 1;
        if (!a[i]) return 0;
    }
    return 0;
}

bool starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

/* ---- Console ------------------------------------------------------------------------------------------------ */

#define COM1 0x3f8

void console_init(void)
{
    /* 8N1, FIFO on, no interrupts: what a VMM's 8250 model accepts; the divisor does not matter to a VMM. */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x80);
    outb(COM1 + 0, 0x01);
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);
    outb(COM1 + 2, 0x07);
}

/* One line goes out with one `rep outsb` (one VM exit for the whole string in Swiftlet and QEMU, instead of one per
 * character), after a bounded wait for the transmitter to be empty (LSR.THRE). */
static void console_write(const char *s, usize n)
{
    for (int i = 0; i < 100000 && !(inb(COM1 + 5) & 0x20); i++) cpu_relax();
    __asm__ volatile("rep outsb" : "+S"(s), "+c"(n) : "d"((u16)COM1) : "memory");
}

static void put(char *buf, usize size, usize *pos, char c)
{
    if (*pos + 1 < size) buf[*pos] = c;
    (*pos)++;
}

int vsnprintk(char *buf, usize size, const char *fmt, va_list ap)
{
    usize pos = 0;
    for (; *fmt; fmt++) {
        if (*fmt != '%') { put(buf, size, &pos, *fmt); continue; }
        fmt++;
        char pad = ' ';
        int width = 0, longs = 0;
        if (*fmt == '0') { pad = '0'; fmt++; }
        while (*fmt >= '0' && *fmt <= '9') width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l') { longs++; fmt++; }
        char digits[24];
        int n = 0;
        u64 value = 0;
        bool negative = false;
        switch (*fmt) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s) s = "(null)";
            int len = (int)strlen(s);
            for (int i = len; i < width; i++) put(buf, size, &pos, ' ');
            while (*s) put(buf, size, &pos, *s++);
            continue;
        }
        case 'c': put(buf, size, &pos, (char)va_arg(ap, int)); continue;
        case '%': put(buf, size, &pos, '%'); continue;
        case 'p': value = (u64)va_arg(ap, void *); put(buf, size, &pos, '0'); put(buf, size, &pos, 'x'); goto hex;
        case 'd': {
            s64 v = longs ? va_arg(ap, s64) : va_arg(ap, int);
            if (v < 0) { negative = true; value = (u64)(-v); } else value = (u64)v;
            goto decimal;
        }
        case 'u': value = longs ? va_arg(ap, u64) : va_arg(ap, u32); goto decimal;
        case 'x': value = longs ? va_arg(ap, u64) : va_arg(ap, u32); goto hex;
        default: put(buf, size, &pos, '?'); continue;
        }
    decimal:
        do { digits[n++] = (char)('0' + value % 10); value /= 10; } while (value);
        if (negative) digits[n++] = '-';
        goto emit;
    hex:
        do { digits[n++] = "0123456789abcdef"[value & 15]; value >>= 4; } while (value);
    emit:
        for (int i = n; i < width; i++) put(buf, size, &pos, pad);
        while (n) put(buf, size, &pos, digits[--n]);
    }
    if (size) buf[pos < size ? pos : size - 1] = 0;
    return (int)pos;
}

int snprintk(char *buf, usize size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintk(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

void printk(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintk(line, sizeof line, fmt, ap);
    va_end(ap);
    console_write(line, n < (int)sizeof line ? (usize)n : sizeof line - 1);
}

/* ---- Command line ------------------------------------------------------------------------------------------- */

static char command_line[4096];

void cmdline_set(const char *line)
{
    usize i = 0;
    if (line)
        for (; line[i] && i + 1 < sizeof command_line; i++) command_line[i] = line[i];
    command_line[i] = 0;
}

const char *cmdline(void) { return command_line; }

/* Finds `key=` at the start of a word; returns the value's start. */
static const char *cmdline_find(const char *key)
{
    usize k = strlen(key);
    for (const char *p = command_line; *p; p++) {
        if ((p == command_line || p[-1] == ' ') && strncmp(p, key, k) == 0 && p[k] == '=') return p + k + 1;
    }
    return NULL;
}

bool cmdline_string(const char *key, char *buf, usize size)
{
    const char *v = cmdline_find(key);
    if (!v || !size) return false;
    usize i = 0;
    while (v[i] && v[i] != ' ' && i + 1 < size) { buf[i] = v[i]; i++; }
    buf[i] = 0;
    return true;
}

u64 cmdline_number(const char *key, u64 fallback)
{
    const char *v = cmdline_find(key);
    if (!v || !*v || *v == ' ') return fallback;
    u64 value = 0;
    if (v[0] == '0' && (v[1] == 'x' || v[1] == 'X')) {
        for (v += 2; ; v++) {
            int d = *v >= '0' && *v <= '9' ? *v - '0' : *v >= 'a' && *v <= 'f' ? *v - 'a' + 10
                  : *v >= 'A' && *v <= 'F' ? *v - 'A' + 10 : -1;
            if (d < 0) break;
            value = value * 16 + (u64)d;
        }
    } else {
        for (; *v >= '0' && *v <= '9'; v++) value = value * 10 + (u64)(*v - '0');
    }
    switch (*v) {
    case 'k': case 'K': value <<= 10; break;
    case 'm': case 'M': value <<= 20; break;
    case 'g': case 'G': value <<= 30; break;
    }
    return value;
}

/* ---- Memory ------------------------------------------------------------------------------------------------- */

u64 ram_end;
static u64 arena_next, arena_limit;

void arena_init(u64 base, u64 limit)
{
    arena_next = base;
    arena_limit = limit;
}

void *arena_alloc(u64 size, u64 align)
{
    u64 at = ALIGN_UP(arena_next, align);
    if (at + size > arena_limit) {
        printk("HOSTILE fatal arena exhausted (want %llu bytes at 0x%llx, limit 0x%llx)\r\n", size, at, arena_limit);
        machine_reset();
    }
    arena_next = at + size;
    memset((void *)at, 0, size);
    return (void *)at;
}

u64 arena_mark(void) { return arena_next; }
void arena_release(u64 mark) { arena_next = mark; }

/* ---- Results ------------------------------------------------------------------------------------------------ */

int cases_passed, cases_failed;

/* Matches NAME against a comma-separated list of prefixes. */
static bool matches_list(const char *name, const char *list)
{
    while (*list) {
        usize n = 0;
        while (list[n] && list[n] != ',') n++;
        if (n && strncmp(name, list, n) == 0) return true;
        list += n;
        if (*list == ',') list++;
    }
    return false;
}

bool case_enabled(const char *name)
{
    char list[2048];
    if (cmdline_string("hostile.only", list, sizeof list) && !matches_list(name, list)) return false;
    if (cmdline_string("hostile.skip", list, sizeof list) && matches_list(name, list)) return false;
    /* hostile.trace=1: a line before each case, so that a VMM that dies in one (QEMU exits on some malformed rings)
     * shows which. */
    if (cmdline_number("hostile.trace", 0)) printk("HOSTILE begin %s\r\n", name);
    return true;
}

void report(const char *name, const char *expect, bool pass, const char *got_fmt, ...)
{
    char got[200];
    va_list ap;
    va_start(ap, got_fmt);
    vsnprintk(got, sizeof got, got_fmt, ap);
    va_end(ap);
    /* The harness splits on spaces: the fields themselves use '_' and ',' instead. */
    for (char *p = got; *p; p++) if (*p == ' ') *p = '_';
    if (pass) cases_passed++; else cases_failed++;
    printk("HOSTILE case=%s expect=%s got=%s result=%s\r\n", name, expect, got, pass ? "pass" : "fail");
}

void info(const char *fmt, ...)
{
    char line[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintk(line, sizeof line, fmt, ap);
    va_end(ap);
    printk("HOSTILE %s\r\n", line);
}

void machine_reset(void)
{
    /* i8042 "pulse reset line" (0xfe to the command port): Swiftlet's I8042 turns it into exit status 0. */
    outb(0x64, 0xfe);
    /* No i8042 (QEMU microvm): a triple fault. An IDT with limit 0 makes the next exception a double and then a
     * triple fault; ud2 raises it (never int3: this host's PVM KVM stops at int3). */
    static const struct __attribute__((packed)) { u16 limit; u64 base; } empty = { 0, 0 };
    __asm__ volatile("lidt %0; ud2" : : "m"(empty));
    for (;;) __asm__ volatile("cli; hlt");
}
