#ifndef HOSTILE_BOOT_H
#define HOSTILE_BOOT_H
#include "lib.h"

#define BOOT_LINUX 0 /* entered by the Linux 64-bit boot protocol: info is struct boot_params */
#define BOOT_PVH 1   /* entered by PVH: info is struct hvm_start_info */

void paging_init(void);
void idt_init(void);
/* Reads the command line and the RAM map (sets ram_end); returns the command line, or NULL. */
const char *boot_info(int kind, u64 info);

#endif
