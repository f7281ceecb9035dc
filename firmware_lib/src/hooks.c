/* The malloc-family hooks, compiled twice by the build:
 *   -DMBT_HOOKS_PRELOAD (libmembt.so): defines malloc, free, ... themselves; the real functions
 *     come from dlsym(RTLD_NEXT) (so ASan's allocator still works underneath), and what dlsym
 *     allocates before they are known is served from a static pool that free() recognises.
 *   -DMBT_HOOKS_WRAP (libmembt.a): defines __wrap_malloc, ... calling __real_malloc, ... for
 *     static firmware linked with -Wl,--wrap=<each name below>.
 * strdup, strndup, asprintf, vasprintf and realpath(p, NULL) are built on our malloc so their
 * caller is the recorded frame (armhf libc's own are CANTUNWIND: the stack would stop in libc).
 * In every hook the per-thread recursion guard comes first; then no stdio, no getenv, no malloc,
 * no lock that may allocate. */
#undef _FORTIFY_SOURCE /* we define asprintf & co ourselves */
#include "mbt_internal.h"

#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Hooks run before AddressSanitizer has set up its shadow memory (its own dlsym calls come here
 * during its start): nothing on the path through a hook may be instrumented. */
#define MBT_NO_ASAN __attribute__((no_sanitize_address))

#if defined(MBT_HOOKS_PRELOAD)
#include <dlfcn.h>
#define MBT_HOOK(name) name

#elif defined(MBT_HOOKS_WRAP)
#define MBT_HOOK(name) __wrap_##name

#else
#error "build hooks.c with -DMBT_HOOKS_PRELOAD (libmembt.so) or -DMBT_HOOKS_WRAP (libmembt.a)"
#endif

/* After the inner call: a tail call would drop the hook's frame that MBT_SITE() handed down. */
#define MBT_KEEP_FRAME(v) __asm__ volatile("" : : "r"(v) : "memory")


/* ---- the real functions ---- */

#if defined(MBT_HOOKS_PRELOAD)

static struct {
    void *(*malloc)(size_t);
    void *(*calloc)(size_t, size_t);
    void *(*realloc)(void *, size_t);
    void (*free)(void *);
    int (*posix_memalign)(void **, size_t, size_t);
    void *(*aligned_alloc)(size_t, size_t);
    void *(*memalign)(size_t, size_t);
    char *(*realpath)(const char *, char *);
    int (*munmap)(void *, size_t);
    int (*dlclose)(void *);
} mbt_real;
static int mbt_resolved;

/* dlsym may call calloc/malloc/free: with the guard set they come back here and are served from
 * this pool (never given back; only dlsym's bookkeeping lives here). */
#define MBT_POOL_SIZE (64u * 1024u)
static char mbt_pool[MBT_POOL_SIZE] __attribute__((aligned(64)));
static size_t mbt_pool_used;

MBT_NO_ASAN static void *mbt_pool_alloc(size_t n, size_t align)
{
    if (align < 16)
        align = 16;
    if (n > MBT_POOL_SIZE || align > MBT_POOL_SIZE / 4)
        return NULL;
    size_t used = __atomic_load_n(&mbt_pool_used, __ATOMIC_RELAXED), start, end;
    do {
        start = (used + sizeof(size_t) + align - 1) & ~(align - 1);
        end = start + ((n + 15) & ~(size_t)15);
        if (end > MBT_POOL_SIZE) {
            errno = ENOMEM;
            return NULL;
        }
    } while (!__atomic_compare_exchange_n(&mbt_pool_used, &used, end, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    memcpy(mbt_pool + start - sizeof(size_t), &n, sizeof n); /* the size, for realloc */
    return mbt_pool + start;
}

MBT_NO_ASAN static inline int mbt_in_pool(const void *p)
{
    return (const char *)p >= mbt_pool && (const char *)p < mbt_pool + MBT_POOL_SIZE;
}

MBT_NO_ASAN static size_t mbt_pool_size(const void *p)
{
    size_t n;
    memcpy(&n, (const char *)p - sizeof n, sizeof n);
    return n;
}

MBT_NO_ASAN static void mbt_resolve(void)
{
    mbt_in_recorder++;
    mbt_real.calloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "calloc");
    mbt_real.malloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
    mbt_real.realloc = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
    mbt_real.free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
    mbt_real.posix_memalign = (int (*)(void **, size_t, size_t))dlsym(RTLD_NEXT, "posix_memalign");
    mbt_real.aligned_alloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "aligned_alloc");
    mbt_real.memalign = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "memalign");
    mbt_real.realpath = (char *(*)(const char *, char *))dlsym(RTLD_NEXT, "realpath");
    mbt_real.munmap = (int (*)(void *, size_t))dlsym(RTLD_NEXT, "munmap");
    mbt_real.dlclose = (int (*)(void *))dlsym(RTLD_NEXT, "dlclose");
    mbt_in_recorder--;
    __atomic_store_n(&mbt_resolved, 1, __ATOMIC_RELEASE);
}

/* Before recording a block the real functions must be known (not served from the pool). */
MBT_NO_ASAN static inline void mbt_ensure(void)
{
    if (__builtin_expect(!__atomic_load_n(&mbt_resolved, __ATOMIC_ACQUIRE), 0))
        mbt_resolve();
}

/* Each libc call resolves on first use, unless we are inside dlsym already (guard set). */
#define MBT_LIBC(fn) (mbt_real.fn ? 1 : mbt_in_recorder ? 0 : (mbt_resolve(), mbt_real.fn != NULL))

MBT_NO_ASAN static void *mbt_libc_malloc(size_t n)
{
    return MBT_LIBC(malloc) ? mbt_real.malloc(n) : mbt_pool_alloc(n, 16);
}

MBT_NO_ASAN static void *mbt_libc_calloc(size_t n, size_t size)
{
    if (MBT_LIBC(calloc))
        return mbt_real.calloc(n, size);
    if (size && n > SIZE_MAX / size)
        return NULL;
    return mbt_pool_alloc(n * size, 16); /* the static pool is zero and never reused */
}

MBT_NO_ASAN static void *mbt_libc_realloc(void *p, size_t n)
{
    return MBT_LIBC(realloc) ? mbt_real.realloc(p, n) : NULL;
}

MBT_NO_ASAN static void mbt_libc_free(void *p)
{
    if (MBT_LIBC(free))
        mbt_real.free(p);
}

MBT_NO_ASAN static int mbt_libc_posix_memalign(void **out, size_t align, size_t n)
{
    if (MBT_LIBC(posix_memalign))
        return mbt_real.posix_memalign(out, align, n);
    return (*out = mbt_pool_alloc(n, align)) ? 0 : ENOMEM;
}

MBT_NO_ASAN static void *mbt_libc_aligned_alloc(size_t align, size_t n)
{
    return MBT_LIBC(aligned_alloc) ? mbt_real.aligned_alloc(align, n) : mbt_pool_alloc(n, align);
}

MBT_NO_ASAN static void *mbt_libc_memalign(size_t align, size_t n)
{
    return MBT_LIBC(memalign) ? mbt_real.memalign(align, n) : mbt_pool_alloc(n, align);
}

MBT_NO_ASAN static char *mbt_libc_realpath(const char *path, char *out)
{
    if (MBT_LIBC(realpath))
        return mbt_real.realpath(path, out);
    errno = ENOSYS;
    return NULL;
}

MBT_NO_ASAN static int mbt_libc_munmap(void *addr, size_t len)
{
    if (MBT_LIBC(munmap))
        return mbt_real.munmap(addr, len);
    return (int)syscall(SYS_munmap, addr, len); /* inside dlsym, before the real one is known */
}

MBT_NO_ASAN static int mbt_libc_dlclose(void *handle)
{
    if (MBT_LIBC(dlclose))
        return mbt_real.dlclose(handle);
    errno = ENOSYS;
    return -1;
}

#else /* MBT_HOOKS_WRAP */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
int __real_posix_memalign(void **out, size_t align, size_t n);
void *__real_aligned_alloc(size_t align, size_t n);
void *__real_memalign(size_t align, size_t n);
char *__real_realpath(const char *path, char *out);
int __real_munmap(void *addr, size_t len);
int __real_dlclose(void *handle);

MBT_NO_ASAN static inline int mbt_in_pool(const void *p) { (void)p; return 0; }
MBT_NO_ASAN static inline size_t mbt_pool_size(const void *p) { (void)p; return 0; }
MBT_NO_ASAN static inline void mbt_ensure(void) {}
#define mbt_libc_malloc __real_malloc
#define mbt_libc_calloc __real_calloc
#define mbt_libc_realloc __real_realloc
#define mbt_libc_free __real_free
#define mbt_libc_posix_memalign __real_posix_memalign
#define mbt_libc_aligned_alloc __real_aligned_alloc
#define mbt_libc_memalign __real_memalign
#define mbt_libc_realpath __real_realpath
#define mbt_libc_munmap __real_munmap
#define mbt_libc_dlclose __real_dlclose

#endif

/* ---- shared implementations (site = where the program called the hook) ---- */

MBT_NO_ASAN __attribute__((noinline)) static void *mbt_malloc_impl(size_t n, struct mbt_site site)
{
    if (mbt_in_recorder || !mbt_recording())
        return mbt_libc_malloc(n);
    mbt_ensure();
    mbt_in_recorder++;
    void *p = mbt_libc_malloc(n);
    if (p)
        mbt_on_alloc(p, n, &site);
    mbt_in_recorder--;
    return p;
}

MBT_NO_ASAN __attribute__((noinline)) static void *mbt_realloc_impl(void *p, size_t n, struct mbt_site site)
{
    if (mbt_in_pool(p)) { /* dlsym's early block moves to the real heap */
        void *q = mbt_malloc_impl(n, site);
        if (q) {
            size_t old = mbt_pool_size(p);
            memcpy(q, p, old < n ? old : n);
        }
        return q;
    }
    if (mbt_in_recorder || !mbt_recording())
        return mbt_libc_realloc(p, n);
    if (!p)
        return mbt_malloc_impl(n, site);
    mbt_ensure();
    mbt_in_recorder++;
    /* forget p before libc frees it: another thread may get the same address at once */
    struct mbt_block old;
    int known = mbt_on_free(p, &old);
    void *q = mbt_libc_realloc(p, n);
    if (q)
        mbt_on_alloc(q, n, &site); /* moved or not, the block now belongs to this caller */
    else if (n && known)
        mbt_on_restore(&old); /* failed: p is still the caller's */
    mbt_in_recorder--;
    return q;
}

enum mbt_align_kind { MBT_POSIX_MEMALIGN, MBT_ALIGNED_ALLOC, MBT_MEMALIGN };

MBT_NO_ASAN __attribute__((noinline)) static int mbt_memalign_impl(enum mbt_align_kind kind, void **out, size_t align,
                                                                   size_t n, struct mbt_site site)
{
    int guarded = mbt_in_recorder || !mbt_recording();
    int rc = 0;
    if (!guarded) {
        mbt_ensure();
        mbt_in_recorder++;
    }
    switch (kind) {
    case MBT_POSIX_MEMALIGN: rc = mbt_libc_posix_memalign(out, align, n); break;
    case MBT_ALIGNED_ALLOC: *out = mbt_libc_aligned_alloc(align, n); break;
    case MBT_MEMALIGN: *out = mbt_libc_memalign(align, n); break;
    }
    if (!guarded) {
        if (!rc && *out)
            mbt_on_alloc(*out, n, &site);
        mbt_in_recorder--;
    }
    return rc;
}

MBT_NO_ASAN static size_t mbt_page_size(void)
{
    long n = sysconf(_SC_PAGESIZE);
    return n > 0 ? (size_t)n : 4096u;
}

/* ---- the hooks ---- */

MBT_NO_ASAN MBT_EXPORT void *MBT_HOOK(malloc)(size_t n)
{
    void *p = mbt_malloc_impl(n, MBT_SITE());
    MBT_KEEP_FRAME(p);
    return p;
}

MBT_NO_ASAN MBT_EXPORT void *MBT_HOOK(calloc)(size_t n, size_t size)
{
    if (mbt_in_recorder || !mbt_recording())
        return mbt_libc_calloc(n, size);
    mbt_ensure();
    mbt_in_recorder++;
    void *p = mbt_libc_calloc(n, size);
    if (p) {
        struct mbt_site site = MBT_SITE();
        mbt_on_alloc(p, n * size, &site);
    }
    mbt_in_recorder--;
    return p;
}

MBT_NO_ASAN MBT_EXPORT void *MBT_HOOK(realloc)(void *p, size_t n)
{
    void *q = mbt_realloc_impl(p, n, MBT_SITE());
    MBT_KEEP_FRAME(q);
    return q;
}

MBT_NO_ASAN MBT_EXPORT void *MBT_HOOK(reallocarray)(void *p, size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size) {
        errno = ENOMEM;
        return NULL;
    }
    void *q = mbt_realloc_impl(p, n * size, MBT_SITE());
    MBT_KEEP_FRAME(q);
    return q;
}

MBT_NO_ASAN MBT_EXPORT void MBT_HOOK(free)(void *p)
{
    if (mbt_in_pool(p))
        return;
    if (mbt_in_recorder || !mbt_recording() || !p) {
        if (p)
            mbt_libc_free(p);
        return;
    }
    mbt_ensure();
    mbt_in_recorder++;
    /* libc reads the chunk header next to p: start that miss now, it overlaps with ours */
    __builtin_prefetch((const char *)p - 2 * sizeof(size_t));
    mbt_on_free(p, NULL); /* before libc: the address may be reused at once */
    mbt_libc_free(p);
    mbt_in_recorder--;
}

MBT_NO_ASAN MBT_EXPORT int MBT_HOOK(posix_memalign)(void **out, size_t align, size_t n)
{
    int rc = mbt_memalign_impl(MBT_POSIX_MEMALIGN, out, align, n, MBT_SITE());
    MBT_KEEP_FRAME(rc);
    return rc;
}

MBT_NO_ASAN MBT_EXPORT void *MBT_HOOK(aligned_alloc)(size_t align, size_t n)
{
    void *p = NULL;
    mbt_memalign_impl(MBT_ALIGNED_ALLOC, &p, align, n, MBT_SITE());
    return p;
}

MBT_NO_ASAN MBT_EXPORT void *MBT_HOOK(memalign)(size_t align, size_t n)
{
    void *p = NULL;
    mbt_memalign_impl(MBT_MEMALIGN, &p, align, n, MBT_SITE());
    return p;
}

/* valloc/pvalloc through memalign: not every libc has them (musl has no pvalloc). */
MBT_NO_ASAN MBT_EXPORT void *MBT_HOOK(valloc)(size_t n)
{
    void *p = NULL;
    mbt_memalign_impl(MBT_MEMALIGN, &p, mbt_page_size(), n, MBT_SITE());
    return p;
}

MBT_NO_ASAN MBT_EXPORT void *MBT_HOOK(pvalloc)(size_t n)
{
    size_t page = mbt_page_size(), rounded = n ? (n + page - 1) & ~(page - 1) : page;
    void *p = NULL;
    if (rounded < n) {
        errno = ENOMEM;
        return NULL;
    }
    mbt_memalign_impl(MBT_MEMALIGN, &p, page, rounded, MBT_SITE());
    return p;
}

MBT_NO_ASAN MBT_EXPORT char *MBT_HOOK(strdup)(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = mbt_malloc_impl(n, MBT_SITE());
    if (p)
        memcpy(p, s, n);
    return p;
}

MBT_NO_ASAN MBT_EXPORT char *MBT_HOOK(strndup)(const char *s, size_t max)
{
    size_t n = strnlen(s, max);
    char *p = mbt_malloc_impl(n + 1, MBT_SITE());
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

MBT_NO_ASAN __attribute__((noinline)) static int mbt_vasprintf_impl(char **out, const char *fmt, va_list ap,
                                                                    struct mbt_site site)
{
    char small[256];
    va_list again;
    va_copy(again, ap);
    int len = vsnprintf(small, sizeof small, fmt, again);
    va_end(again);
    if (len < 0)
        return -1;
    char *p = mbt_malloc_impl((size_t)len + 1, site);
    if (!p)
        return -1;
    if ((size_t)len < sizeof small)
        memcpy(p, small, (size_t)len + 1);
    else
        vsnprintf(p, (size_t)len + 1, fmt, ap);
    *out = p;
    return len;
}

MBT_NO_ASAN MBT_EXPORT int MBT_HOOK(vasprintf)(char **out, const char *fmt, va_list ap)
{
    int len = mbt_vasprintf_impl(out, fmt, ap, MBT_SITE());
    MBT_KEEP_FRAME(len);
    return len;
}

MBT_NO_ASAN MBT_EXPORT int MBT_HOOK(asprintf)(char **out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int len = mbt_vasprintf_impl(out, fmt, ap, MBT_SITE());
    va_end(ap);
    return len;
}

MBT_NO_ASAN MBT_EXPORT char *MBT_HOOK(realpath)(const char *path, char *resolved)
{
    if (resolved || mbt_in_recorder || !mbt_recording())
        return mbt_libc_realpath(path, resolved);
    char buf[PATH_MAX];
    if (!mbt_libc_realpath(path, buf))
        return NULL;
    size_t n = strlen(buf) + 1;
    char *p = mbt_malloc_impl(n, MBT_SITE());
    if (!p) {
        errno = ENOMEM;
        return NULL;
    }
    memcpy(p, buf, n);
    return p;
}

/* Code or a stack may leave the address space, and other code or a smaller stack come at its
 * address: the capture cache must not trust what it learned before (threads.c). glibc's own
 * unmapping (large free()d blocks, thread stacks it drops) does not come through here; neither
 * allocates nor records, so no guard. */
MBT_NO_ASAN MBT_EXPORT int MBT_HOOK(munmap)(void *addr, size_t len)
{
    int rc = mbt_libc_munmap(addr, len);
    mbt_threads_forget();
    return rc;
}

MBT_NO_ASAN MBT_EXPORT int MBT_HOOK(dlclose)(void *handle)
{
    int rc = mbt_libc_dlclose(handle);
    mbt_threads_forget();
    return rc;
}

/* ---- start ---- */

__attribute__((constructor)) static void mbt_hooks_start(void)
{
#if defined(MBT_HOOKS_PRELOAD)
    mbt_ensure();
    /* Start only when our malloc is the one the process uses (LD_PRELOAD, or linked in); a
     * program that merely dlopen()s libmembt.so calls membt_init itself. */
    Dl_info used, self;
    mbt_in_recorder++;
    int ours = dladdr(dlsym(RTLD_DEFAULT, "malloc"), &used) && dladdr((void *)mbt_hooks_start, &self) &&
               used.dli_fbase == self.dli_fbase;
    mbt_in_recorder--;
    if (!ours)
        return;
#endif
    mbt_hooks_interposed = 1;
    mbt_autostart();
}
