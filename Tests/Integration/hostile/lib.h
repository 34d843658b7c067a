/* The freestanding runtime of the hostile guest: integer types, port and MMIO access, the serial console, a small
 * formatter, the command line, a bump allocator, case reporting and the exit. No libc. */
#ifndef HOSTILE_LIB_H
#define HOSTILE_LIB_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long s64;
typedef unsigned long usize;
typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)
typedef __builtin_va_list va_list;
#define va_start __builtin_va_start
#define va_end __builtin_va_end
#define va_arg __builtin_va_arg

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define ALIGN_UP(x, a) (((x) + (a) - 1) & ~((u64)(a) - 1))

/* Port I/O. */
static inline void outb(u16 port, u8 value) { __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }

/* MMIO: one access of exactly the given width (volatile, so the compiler neither merges nor splits it). */
static inline u8 mmio_read8(u64 a) { return *(volatile u8 *)a; }
static inline u16 mmio_read16(u64 a) { return *(volatile u16 *)a; }
static inline u32 mmio_read32(u64 a) { return *(volatile u32 *)a; }
static inline u64 mmio_read64(u64 a) { return *(volatile u64 *)a; }
static inline void mmio_write8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline void mmio_write16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline void mmio_write32(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline void mmio_write64(u64 a, u64 v) { *(volatile u64 *)a = v; }

/* Ordering between ring memory and the device: a compiler barrier is enough on x86 for stores before a notify
 * (stores are not reordered with later stores, and the MMIO write is a store); mfence where a load must not pass
 * an earlier store. */
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void mfence(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

void *memset(void *d, int c, usize n);
void *memcpy(void *d, const void *s, usize n);
int memcmp(const void *a, const void *b, usize n);
usize strlen(const char *s);
int strncmp(const char *a, const char *b, usize n);
bool starts_with(const char *s, const char *prefix);

/* Console (COM1). printk: %s %c %d %u %x with l/ll, %p; a width like %08x. */
void console_init(void);
void printk(const char *fmt, ...);
int snprintk(char *buf, usize size, const char *fmt, ...);
int vsnprintk(char *buf, usize size, const char *fmt, va_list ap);

/* The command line (as the VMM passed it). */
void cmdline_set(const char *line);
const char *cmdline(void);
/* The value of `key=` on the command line as a number (K/M/G suffixes, 0x for hex), or `fallback`. */
u64 cmdline_number(const char *key, u64 fallback);
/* Copies the value of `key=` into buf; false when absent. */
bool cmdline_string(const char *key, char *buf, usize size);

/* Guest RAM as the boot information describes it: the end of the RAM region that holds 1 MiB. */
extern u64 ram_end;

/* A bump allocator over [arena_base, arena_limit): rings and buffers for one case are taken from it and given back
 * in one go (arena_mark / arena_release), so every case starts with the same layout. */
void arena_init(u64 base, u64 limit);
void *arena_alloc(u64 size, u64 align);
u64 arena_mark(void);
void arena_release(u64 mark);

/* Case results: one line each, counted for the summary. */
void report(const char *name, const char *expect, bool pass, const char *got_fmt, ...);
/* Lines for the harness that are not cases. */
void info(const char *fmt, ...);
extern int cases_passed, cases_failed;
/* Whether a case runs: hostile.only=PREFIX[,PREFIX] and hostile.skip=PREFIX[,PREFIX] on the command line. */
bool case_enabled(const char *name);

/* Ends the run the way Swiftlet takes as a clean guest exit (i8042 pulse reset), then with a triple fault for VMMs
 * without an i8042 (QEMU's microvm, which -no-reboot turns into an exit). */
__attribute__((noreturn)) void machine_reset(void);

#endif
