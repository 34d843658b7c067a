/*
 * Entry points of the hostile guest.
 *
 * _start:     the Linux 64-bit boot protocol (Documentation/arch/x86/boot.rst, "64-bit BOOT PROTOCOL"), which is how
 *             Swiftlet enters an ELF kernel: long mode, paging on with some identity map, RSI = struct boot_params.
 * pvh_start:  the PVH entry (XEN_ELFNOTE_PHYS32_ENTRY), which is how QEMU enters an ELF kernel that carries the note:
 *             32-bit protected mode, paging off, EBX = struct hvm_start_info. It turns on long mode with a boot map
 *             of the first GiB (where this image is) and joins the 64-bit path.
 * Both end in hostile_main(kind, info) on our own stack and GDT; hostile_main then builds the page tables it really
 * uses (paging.c), so nothing depends on the tables the VMM happened to build.
 */
#define BOOT_LINUX 0
#define BOOT_PVH 1

    .section .note.pvh, "a"
    .balign 4
    .long 4                 /* n_namesz: "Xen\0" */
    .long 8                 /* n_descsz: QEMU reads a 64-bit entry address from an ELF64 note */
    .long 18                /* n_type: XEN_ELFNOTE_PHYS32_ENTRY (xen/include/public/elfnote.h) */
    .asciz "Xen"
    .quad pvh_start

    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    cli
    mov %rsi, %r12                  /* boot_params */
    lgdt gdt_pointer(%rip)
    /* Reload CS with our 64-bit code selector (a far return: there is no far jump to an absolute 64-bit target). */
    pushq $0x08
    lea 1f(%rip), %rax
    pushq %rax
    lretq
1:  mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    lea stack_top(%rip), %rsp
    mov $BOOT_LINUX, %edi
    mov %r12, %rsi
    call hostile_main
2:  jmp 2b                          /* hostile_main does not return */

    .code32
    .globl pvh_start
pvh_start:
    cli
    mov %ebx, %esi                  /* hvm_start_info, kept in ESI (below 4 GiB) */
    /* Boot page tables: PML4[0] -> PDPT[0] -> one page directory of 512 2-MiB pages: 0..1 GiB identity. */
    mov $boot_pdpt, %eax
    or $3, %eax
    mov %eax, boot_pml4
    mov $boot_pd, %eax
    or $3, %eax
    mov %eax, boot_pdpt
    xor %ecx, %ecx
3:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax                  /* present, writable, 2 MiB page */
    mov %eax, boot_pd(,%ecx,8)
    movl $0, boot_pd+4(,%ecx,8)
    inc %ecx
    cmp $512, %ecx
    jne 3b
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax                  /* CR4.PAE */
    mov %eax, %cr4
    mov $0xc0000080, %ecx           /* IA32_EFER */
    rdmsr
    or $0x100, %eax                 /* LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax            /* PG | PE */
    mov %eax, %cr0
    lgdt gdt_pointer
    ljmp $0x08, $pvh_long
    .code64
pvh_long:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    lea stack_top(%rip), %rsp
    mov %esi, %esi                  /* zero-extend the start_info address */
    mov $BOOT_PVH, %edi
    call hostile_main
4:  jmp 4b

/*
 * Exception stubs: every vector 0-31 lands in exception_common with (vector, error code) on the stack, which calls
 * exception_report(frame) in C: it prints what happened and ends the run, so a guest bug shows up as a failure
 * instead of a triple fault (which Swiftlet would count as a clean exit).
 */
    .macro stub vector, has_error
    .globl exception_stub_\vector
exception_stub_\vector:
    .if \has_error == 0
    pushq $0
    .endif
    pushq $\vector
    jmp exception_common
    .endm

    stub 0,0; stub 1,0; stub 2,0; stub 3,0; stub 4,0; stub 5,0; stub 6,0; stub 7,0
    stub 8,1; stub 9,0; stub 10,1; stub 11,1; stub 12,1; stub 13,1; stub 14,1; stub 15,0
    stub 16,0; stub 17,1; stub 18,0; stub 19,0; stub 20,0; stub 21,1; stub 22,0; stub 23,0
    stub 24,0; stub 25,0; stub 26,0; stub 27,0; stub 28,0; stub 29,1; stub 30,1; stub 31,0

exception_common:
    mov %rsp, %rdi                  /* -> vector, error, rip, cs, rflags, rsp, ss */
    and $-16, %rsp
    call exception_report
5:  jmp 5b

    .section .rodata
    .globl exception_stubs
    .balign 8
exception_stubs:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exception_stub_\v
    .endr

    .section .data
    .balign 16
/* null, 64-bit code (0x08), data (0x10) */
gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
gdt_end:
gdt_pointer:
    .word gdt_end - gdt - 1
    .quad gdt

    .section .bss
    .balign 4096
boot_pml4: .skip 4096
boot_pdpt: .skip 4096
boot_pd: .skip 4096
    .balign 16
stack: .skip 65536
stack_top:
