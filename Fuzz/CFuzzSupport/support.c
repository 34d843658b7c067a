#include "CFuzzSupport.h"
#include <sanitizer/allocator_interface.h>
#include <sanitizer/common_interface_defs.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

int swiftlet_fuzz_run(int argc, char **argv, swiftlet_fuzz_callback callback)
{
    return LLVMFuzzerRunDriver(&argc, &argv, callback);
}

/* The targets run inputs on one thread, but a device may free on another (none does in the targets today):
 * relaxed atomics keep the counters exact either way. */
static size_t live, peak, baseline;
/* SWIFTLET_FUZZ_SHOW_ALLOCATIONS=N prints the stack of every allocation of N bytes or more (to find what a
 * memory-bound failure allocated). */
static size_t show_from;
static int showing;

static void on_malloc(const volatile void *pointer, size_t size)
{
    (void)pointer;
    if (show_from && size >= show_from && !showing) {
        showing = 1;
        fprintf(stderr, "allocation of %zu bytes:\n", size);
        __sanitizer_print_stack_trace();
        showing = 0;
    }
    size_t now = __atomic_add_fetch(&live, size, __ATOMIC_RELAXED);
    if (now > __atomic_load_n(&peak, __ATOMIC_RELAXED))
        __atomic_store_n(&peak, now, __ATOMIC_RELAXED);
}

static void on_free(const volatile void *pointer)
{
    if (pointer == NULL)
        return;
    __atomic_sub_fetch(&live, __sanitizer_get_allocated_size((const void *)pointer), __ATOMIC_RELAXED);
}

__attribute__((constructor)) static void install_hooks(void)
{
    const char *show = getenv("SWIFTLET_FUZZ_SHOW_ALLOCATIONS");
    if (show)
        show_from = strtoul(show, NULL, 0);
    __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
}

void swiftlet_fuzz_memory_begin(void)
{
    baseline = __atomic_load_n(&live, __ATOMIC_RELAXED);
    __atomic_store_n(&peak, baseline, __ATOMIC_RELAXED);
}

size_t swiftlet_fuzz_memory_growth(void)
{
    size_t top = __atomic_load_n(&peak, __ATOMIC_RELAXED);
    return top > baseline ? top - baseline : 0;
}

size_t swiftlet_fuzz_memory_live(void) { return __atomic_load_n(&live, __ATOMIC_RELAXED); }
