/* The module map of a dump, read with dl_iterate_phdr at dump time (objects dlopen'ed late are
 * covered): path, load bias, address range and GNU build-id of every object a frame falls into. */
#include "mbt_internal.h"

#include <elf.h>
#include <link.h>
#include <string.h>
#include <unistd.h>

#ifndef NT_GNU_BUILD_ID
#define NT_GNU_BUILD_ID 3
#endif

struct mbt_collect {
    mbt_module_wanted_fn wanted;
    void *arg;
    struct mbt_module *out;
    unsigned n, max;
    char *arena;
    size_t arena_used, arena_size;
    unsigned index;
};

int mbt_exe_path(char *out, size_t size)
{
    ssize_t n = readlink("/proc/self/exe", out, size - 1);
    if (n <= 0) {
        out[0] = 0;
        return -1;
    }
    out[n] = 0;
    return 0;
}

static const char *mbt_arena_copy(struct mbt_collect *c, const char *s)
{
    size_t n = strlen(s);
    if (c->arena_used + n + 1 > c->arena_size)
        return "";
    char *dst = c->arena + c->arena_used;
    memcpy(dst, s, n + 1);
    c->arena_used += n + 1;
    return dst;
}

static void mbt_build_id(const struct dl_phdr_info *info, char *hex, size_t hex_size)
{
    static const char digits[] = "0123456789abcdef";
    hex[0] = 0;
    for (unsigned i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_NOTE)
            continue;
        size_t align = ph->p_align == 8 ? 8 : 4;
        const char *p = (const char *)(info->dlpi_addr + ph->p_vaddr), *end = p + ph->p_memsz;
        while (p + sizeof(ElfW(Nhdr)) <= end) {
            const ElfW(Nhdr) *nh = (const ElfW(Nhdr) *)p;
            const char *name = p + sizeof *nh;
            const unsigned char *desc = (const unsigned char *)(name + ((nh->n_namesz + align - 1) & ~(align - 1)));
            const char *next = (const char *)desc + ((nh->n_descsz + align - 1) & ~(align - 1));
            if (next > end || next <= p)
                break;
            if (nh->n_type == NT_GNU_BUILD_ID && nh->n_namesz == 4 && !memcmp(name, "GNU", 4)) {
                size_t n = nh->n_descsz;
                if (n * 2 + 1 > hex_size)
                    n = (hex_size - 1) / 2;
                for (size_t k = 0; k < n; k++) {
                    hex[2 * k] = digits[desc[k] >> 4];
                    hex[2 * k + 1] = digits[desc[k] & 15];
                }
                hex[2 * n] = 0;
                return;
            }
            p = next;
        }
    }
}

static int mbt_collect_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
    struct mbt_collect *c = arg;
    unsigned index = c->index++;
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    (void)size;
    for (unsigned i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD)
            continue;
        uintptr_t a = info->dlpi_addr + ph->p_vaddr, b = a + ph->p_memsz;
        if (a < lo)
            lo = a;
        if (b > hi)
            hi = b;
    }
    if (lo >= hi || c->n >= c->max || !c->wanted(lo, hi, c->arg))
        return 0;
    struct mbt_module *m = &c->out[c->n++];
    m->bias = info->dlpi_addr;
    m->lo = lo;
    m->hi = hi;
    mbt_build_id(info, m->build_id, sizeof m->build_id);
    if (index > 0) {
        m->path = info->dlpi_name ? mbt_arena_copy(c, info->dlpi_name) : "";
    } else {
        /* the main program comes first, named "" (glibc) or argv[0] (musl): use its real path */
        char exe[1024];
        m->path = mbt_exe_path(exe, sizeof exe) == 0 ? mbt_arena_copy(c, exe) : "";
    }
    return 0;
}

unsigned mbt_modules_collect(mbt_module_wanted_fn wanted, void *arg, struct mbt_module *out, unsigned max,
                             char *arena, size_t arena_size)
{
    struct mbt_collect c = {wanted, arg, out, 0, max, arena, 0, arena_size, 0};
    dl_iterate_phdr(mbt_collect_cb, &c);
    return c.n;
}
