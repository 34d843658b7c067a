// libfdt's API as Swift sees it, plus what Swift cannot import: libfdt.h spells some calls as function-like macros
// (fdt_property_string), which become static inline functions here. No logic lives here.
#ifndef CLIBFDT_H
#define CLIBFDT_H

#include <libfdt.h>
#include <string.h>

// fdt_property_string(fdt, name, str): a NUL-terminated string property. The corresponding C macro is
// `fdt_property_string`.
static inline int CLibFDT_property_string(void *fdt, const char *name, const char *value) {
    return fdt_property_string(fdt, name, value);
}

// An empty (boolean) property such as `interrupt-controller`. The corresponding C call is
// `fdt_property(fdt, name, NULL, 0)`.
static inline int CLibFDT_property_empty(void *fdt, const char *name) { return fdt_property(fdt, name, NULL, 0); }

// fdt_totalsize(fdt): the header's totalsize field. The corresponding C macro is `fdt_totalsize`.
static inline uint32_t CLibFDT_totalsize(const void *fdt) { return fdt_totalsize(fdt); }

#endif
