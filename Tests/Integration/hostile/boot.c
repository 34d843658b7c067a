/* What the guest needs from the machine before any case runs: its own page tables and IDT, and the boot
 * information of either entry (the zero page of the Linux boot protocol, or PVH's hvm_start_info). */
#include "boot.h"

/* ---- Page tables -------------------------------------------------------------------------------------------- */

/* 0..4 GiB identity-mapped with 2 MiB pages: guest RAM below the MMIO hole and the hole itself (Swiftlet's virtio-mmio
 * windows at 0xd0000000, QEMU microvm's at 0xfeb00000). The hole is mapped uncached (PCD|PWT), as device memory must
 * be. Four page directories, one PDPT, one PML4, in this image's bss: no dependence on what the entry tables map. */
static u64 pml4[512] __attribute__((aligned(4096)));
static u64 pdpt[512] __attribute__((aligned(4096)));
static u64 pd[4][512] __attribute__((aligned(4096)));

enum { PTE_P = 1, PTE_W = 2, PTE_PWT = 8, PTE_PCD = 16, PTE_PS = 128 };

void paging_init(void)
{
    for (int g = 0; g < 4; g++) {
        for (int i = 0; i < 512; i++) {
            u64 address = ((u64)g << 30) | ((u64)i << 21);
            u64 flags = PTE_P | PTE_W | PTE_PS;
            if (address >= 0xc0000000ull) flags |= PTE_PCD | PTE_PWT;
            pd[g][i] = address | flags;
        }
        pdpt[g] = (u64)pd[g] | PTE_P | PTE_W;
    }
    pml4[0] = (u64)pdpt | PTE_P | PTE_W;
    __asm__ volatile("mov %0, %%cr3" : : "r"((u64)pml4) : "memory");
}

/* ---- Exceptions --------------------------------------------------------------------------------------------- */

struct idt_entry { u16 offset_low, selector; u8 ist, type; u16 offset_mid; u32 offset_high, zero; };
static struct idt_entry idt[32] __attribute__((aligned(16)));
extern const u64 exception_stubs[32];

void idt_init(void)
{
    for (int v = 0; v < 32; v++) {
        u64 handler = exception_stubs[v];
        idt[v] = (struct idt_entry){ (u16)handler, 0x08, 0, 0x8e, (u16)(handler >> 16), (u32)(handler >> 32), 0 };
    }
    struct __attribute__((packed)) { u16 limit; u64 base; } pointer = { sizeof idt - 1, (u64)idt };
    __asm__ volatile("lidt %0" : : "m"(pointer));
}

/* Called by entry.S with the frame: vector, error code, then what the CPU pushed (rip, cs, rflags, rsp, ss). */
void exception_report(u64 *frame)
{
    u64 cr2;
    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
    printk("HOSTILE fatal exception vector=%llu error=0x%llx rip=0x%llx rsp=0x%llx cr2=0x%llx\r\n",
           frame[0], frame[1], frame[2], frame[5], cr2);
    printk("HOSTILE done passed=%d failed=%d\r\n", cases_passed, cases_failed + 1);
    machine_reset();
}

/* ---- Boot information --------------------------------------------------------------------------------------- */

/* struct boot_params (arch/x86/include/uapi/asm/bootparam.h) offsets, as Swiftlet's ZeroPage.swift writes them. */
enum { BP_EXT_CMD_LINE_PTR = 0x0c8, BP_E820_ENTRIES = 0x1e8, BP_CMD_LINE_PTR = 0x228, BP_E820_TABLE = 0x2d0 };
/* struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h). */
enum { HVM_MAGIC = 0x336ec578, HVM_VERSION = 4, HVM_CMDLINE = 24, HVM_MEMMAP = 40, HVM_MEMMAP_ENTRIES = 48 };

/* The end of the RAM region that contains 1 MiB (where this image and its arena live). */
static void note_ram(u64 start, u64 size, u32 type)
{
    if (type == 1 && start <= 0x100000 && start + size > 0x100000 && start + size > ram_end) ram_end = start + size;
}

const char *boot_info(int kind, u64 info)
{
    const char *line = NULL;
    if (kind == BOOT_LINUX) {
        const u8 *zero_page = (const u8 *)info;
        u64 cmd = *(const u32 *)(zero_page + BP_CMD_LINE_PTR) | (u64)*(const u32 *)(zero_page + BP_EXT_CMD_LINE_PTR) << 32;
        line = (const char *)cmd;
        u8 entries = zero_page[BP_E820_ENTRIES];
        for (int i = 0; i < entries && i < 128; i++) {
            const u8 *e = zero_page + BP_E820_TABLE + 20 * i;
            note_ram(*(const u64 *)e, *(const u64 *)(e + 8), *(const u32 *)(e + 16));
        }
    } else {
        const u8 *start = (const u8 *)info;
        if (*(const u32 *)start != HVM_MAGIC) return NULL;
        line = (const char *)*(const u64 *)(start + HVM_CMDLINE);
        if (*(const u32 *)(start + HVM_VERSION) >= 1) {
            const u8 *map = (const u8 *)*(const u64 *)(start + HVM_MEMMAP);
            u32 entries = *(const u32 *)(start + HVM_MEMMAP_ENTRIES);
            for (u32 i = 0; map && i < entries && i < 128; i++)
                note_ram(*(const u64 *)(map + 24 * i), *(const u64 *)(map + 24 * i + 8), *(const u32 *)(map + 24 * i + 16));
        }
    }
    return line;
}
