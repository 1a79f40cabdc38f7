/* Large allocations: arena blocks, the parameter store, shard gradients. */
#define _DEFAULT_SOURCE /* madvise and MADV_HUGEPAGE */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

enum { TL_CACHE_LINE = 64, TL_HUGE_PAGE = 2 << 20 };

void *tl_alloc_large(size_t bytes, bool zero)
{
    size_t align = bytes >= TL_HUGE_PAGE ? TL_HUGE_PAGE : TL_CACHE_LINE;
    void *mem = NULL;
    if (posix_memalign(&mem, align, bytes ? bytes : 1) != 0)
        return NULL;
    /* Advice only: where transparent huge pages are off, or the kernel has
     * no huge page to give, the block keeps 4 KiB pages. */
    if (align == TL_HUGE_PAGE)
        (void)madvise(mem, bytes / TL_HUGE_PAGE * TL_HUGE_PAGE, MADV_HUGEPAGE);
    if (zero)
        memset(mem, 0, bytes);
    return mem;
}
