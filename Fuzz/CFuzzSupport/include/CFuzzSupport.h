#ifndef CFUZZSUPPORT_H
#define CFUZZSUPPORT_H
#include <stddef.h>
#include <stdint.h>

/* libFuzzer's entry for a program with its own main (the targets are Swift executables). */
typedef int (*swiftlet_fuzz_callback)(const uint8_t *data, size_t size);
int swiftlet_fuzz_run(int argc, char **argv, swiftlet_fuzz_callback callback);

/* Heap accounting through AddressSanitizer's malloc hooks: the bytes live now, and the most live since the last
 * swiftlet_fuzz_memory_begin(), so a target can check that what one input made the host allocate stays under a
 * bound that does not grow with the input. */
void swiftlet_fuzz_memory_begin(void);
size_t swiftlet_fuzz_memory_growth(void);
size_t swiftlet_fuzz_memory_live(void);

#endif
