/* Stack capture: raw return addresses only, through one of four backends, with the recorder's
 * own frames cut off. Every architecture #if of the recorder lives in this file.
 *   fp     frame-pointer walk (x86, aarch64, ARM-mode code built -marm), with sanity checks
 *   unwind libgcc _Unwind_Backtrace: DWARF CFI, or ARM EHABI tables (-funwind-tables) on armhf
 *   glibc  backtrace() (glibc only; it also uses libgcc underneath)
 *   cached unwind behind a per-thread cache of validated captures (threads.c; x86_64, aarch64):
 *          this file captures and says where on the stack each return address was read
 * "auto" is the per-target choice the build passes as -DMBT_UNWIND_AUTO=<name>, else "unwind".
 * -DMBT_NO_LIBGCC_UNWIND leaves the libgcc backend out (a toolchain whose libgcc_eh does not
 * fit its C library, like Debian's musl-gcc wrapper around the glibc-built libgcc).
 * The recorder's own frames are those before the return address of the hook or API function the
 * program called (struct mbt_site); when the unwinder never reaches it, the frames inside
 * libmembt.so's own code are cut instead. */
#include "mbt_internal.h"

#include <link.h>
#include <string.h>

#ifndef MBT_NO_LIBGCC_UNWIND
#include <unwind.h>
#define MBT_HAVE_LIBGCC_UNWIND 1
#endif

#if defined(__GLIBC__)
#include <execinfo.h>
#define MBT_HAVE_GLIBC_BACKTRACE 1
#endif

/* The cache needs the CFA of every frame and return addresses saved in the frame below it. */
#if defined(MBT_HAVE_LIBGCC_UNWIND) && (defined(__x86_64__) || defined(__aarch64__))
#define MBT_HAVE_CACHE 1
#if defined(__x86_64__)
#define MBT_FP_REG 6 /* DWARF number of rbp */
#else
#define MBT_FP_REG 29 /* x29 */
#endif
#endif

#if defined(__x86_64__) || defined(__i386__) || defined(__aarch64__)
#define MBT_HAVE_FP 1
#define MBT_FP_ARM 0
#elif defined(__arm__) && !defined(__thumb__)
/* gcc's ARM-mode frame: fp points at the saved lr, the caller's fp is one word below */
#define MBT_HAVE_FP 1
#define MBT_FP_ARM 1
#endif

/* A frame bigger than this stops the frame-pointer walk: the pointer is probably not one. */
#define MBT_FP_MAX_FRAME (4u << 20)

#define MBT_STR2(x) #x
#define MBT_STR(x) MBT_STR2(x)
#ifdef MBT_UNWIND_AUTO
static const char mbt_auto_raw[] = MBT_STR(MBT_UNWIND_AUTO);
#else
static const char mbt_auto_raw[] = "unwind";
#endif

enum mbt_backend { MBT_UW_UNWIND, MBT_UW_FP, MBT_UW_GLIBC, MBT_UW_CACHED };
static enum mbt_backend mbt_backend = MBT_UW_UNWIND;
static uintptr_t mbt_own_lo, mbt_own_hi;

static const char *const mbt_backend_names[] = {"unwind", "fp", "glibc", "cached"};

const char *mbt_unwind_name(void) { return mbt_backend_names[mbt_backend]; }

int mbt_unwind_cached(void) { return mbt_backend == MBT_UW_CACHED; }

/* -DMBT_UNWIND_AUTO=fp and -DMBT_UNWIND_AUTO=\"fp\" both mean "fp". */
static void mbt_auto_name(char *out, size_t size)
{
    size_t n = 0;
    for (const char *p = mbt_auto_raw; *p && n + 1 < size; p++)
        if (*p != '"' && *p != '\\')
            out[n++] = *p;
    out[n] = 0;
}

static int mbt_backend_available(enum mbt_backend b, const char **why)
{
    (void)why; /* set only where a backend is missing */
    switch (b) {
    case MBT_UW_UNWIND:
#ifdef MBT_HAVE_LIBGCC_UNWIND
        return 1;
#else
        *why = "MEMBT_UNWIND=unwind: this build of membt has no libgcc unwinder";
        return 0;
#endif
    case MBT_UW_FP:
#ifdef MBT_HAVE_FP
        return 1;
#else
        *why = "MEMBT_UNWIND=fp needs x86, aarch64 or an ARM-mode (-marm) build of membt";
        return 0;
#endif
    case MBT_UW_GLIBC:
#ifdef MBT_HAVE_GLIBC_BACKTRACE
        return 1;
#else
        *why = "MEMBT_UNWIND=glibc: this C library has no backtrace()";
        return 0;
#endif
    case MBT_UW_CACHED:
#ifdef MBT_HAVE_CACHE
        return 1;
#else
        *why = "MEMBT_UNWIND=cached needs an x86_64 or aarch64 build of membt with the libgcc unwinder";
        return 0;
#endif
    }
    return 0;
}

/* "auto" when the build's choice is not there: the first backend this build has. */
static int mbt_first_available(const char **why)
{
    static const enum mbt_backend order[] = {MBT_UW_UNWIND, MBT_UW_FP, MBT_UW_GLIBC, MBT_UW_CACHED};
    for (unsigned i = 0; i < sizeof order / sizeof order[0]; i++) {
        if (mbt_backend_available(order[i], why)) {
            mbt_backend = order[i];
            return 0;
        }
    }
    *why = "no stack unwinder in this build of membt";
    return -1;
}

int mbt_unwind_select(const char *name, const char **why)
{
    char autoname[16];
    int is_auto = !strcmp(name, "auto");
    if (is_auto) {
        mbt_auto_name(autoname, sizeof autoname);
        name = autoname;
    }
    for (unsigned b = 0; b < sizeof mbt_backend_names / sizeof mbt_backend_names[0]; b++) {
        if (strcmp(name, mbt_backend_names[b]))
            continue;
        if (mbt_backend_available((enum mbt_backend)b, why)) {
            mbt_backend = (enum mbt_backend)b;
            return 0;
        }
        return is_auto ? mbt_first_available(why) : -1;
    }
    if (is_auto)
        return mbt_first_available(why);
    *why = "MEMBT_UNWIND must be auto, fp, unwind, glibc or cached";
    return -1;
}

/* ---- fp ---- */

#ifdef MBT_HAVE_FP
__attribute__((no_sanitize_address)) static unsigned mbt_fp_walk(uintptr_t *out, unsigned max, void *frame)
{
    uintptr_t here = (uintptr_t)__builtin_frame_address(0); /* callers' frames lie above */
    uintptr_t fp = (uintptr_t)(frame ? frame : __builtin_frame_address(0));
    unsigned n = 0;
    while (n < max) {
        if (fp < here || (fp & (sizeof(uintptr_t) - 1)))
            break;
        const uintptr_t *f = (const uintptr_t *)fp;
#if MBT_FP_ARM
        uintptr_t ret = f[0], next = f[-1];
#else
        uintptr_t ret = f[1], next = f[0];
#endif
#if defined(__aarch64__)
        ret &= (1ull << 48) - 1; /* pointer-authentication bits, if any */
#endif
        if (!ret)
            break;
        out[n++] = ret;
        if (next <= fp || next - fp > MBT_FP_MAX_FRAME)
            break;
        fp = next;
    }
    return n;
}
#endif

/* ---- unwind (libgcc) ---- */

#ifdef MBT_HAVE_LIBGCC_UNWIND
/* Why a walk stopped: the unwinder ran out of frames (no unwind info, end of stack marked in
 * the CFI), a return address of 0, the frame limit, or the same frame twice. */
enum mbt_uw_stop { MBT_STOP_END, MBT_STOP_ZERO, MBT_STOP_MAX, MBT_STOP_REPEAT };

struct mbt_uw_walk {
    uintptr_t *out;
    uintptr_t *cfas; /* the CFA of each frame (the cache learns from them), or NULL */
    uintptr_t *fps;  /* with cfas: the frame-pointer register in each frame */
    unsigned n, max;
    uintptr_t last_cfa;
    enum mbt_uw_stop stop;
    uintptr_t stop_cfa; /* the CFA of the context that gave return address 0 */
    int signal_frame;   /* the walk went through a signal frame */
};

static _Unwind_Reason_Code mbt_uw_step(struct _Unwind_Context *ctx, void *arg)
{
    struct mbt_uw_walk *w = arg;
#if defined(__arm__)
    uintptr_t ip = (uintptr_t)_Unwind_GetIP(ctx);
    uintptr_t cfa = (uintptr_t)_Unwind_GetGR(ctx, 13);
#else
    int before_insn = 0; /* set for a frame interrupted by a signal */
    uintptr_t ip = (uintptr_t)_Unwind_GetIPInfo(ctx, &before_insn);
    uintptr_t cfa = (uintptr_t)_Unwind_GetCFA(ctx);
    w->signal_frame |= before_insn;
#endif
    if (!ip) {
        w->stop = MBT_STOP_ZERO;
        w->stop_cfa = cfa;
        return _URC_END_OF_STACK;
    }
    if (w->n >= w->max) {
        w->stop = MBT_STOP_MAX;
        return _URC_END_OF_STACK;
    }
    /* the same frame again: some unwinders repeat the outermost frame forever */
    if (w->n && w->out[w->n - 1] == ip && w->last_cfa == cfa) {
        w->stop = MBT_STOP_REPEAT;
        return _URC_END_OF_STACK;
    }
    if (w->cfas)
        w->cfas[w->n] = cfa;
#ifdef MBT_FP_REG
    if (w->fps)
        w->fps[w->n] = (uintptr_t)_Unwind_GetGR(ctx, MBT_FP_REG);
#endif
    w->out[w->n++] = ip;
    w->last_cfa = cfa;
    return _URC_NO_REASON;
}

__attribute__((noinline)) static unsigned mbt_uw_walk(struct mbt_uw_walk *w)
{
    _Unwind_Backtrace(mbt_uw_step, w);
    return w->n;
}
#endif

/* ---- glibc ---- */

#ifdef MBT_HAVE_GLIBC_BACKTRACE
__attribute__((noinline)) static unsigned mbt_glibc_walk(uintptr_t *out, unsigned max)
{
    void *raw[MBT_CAPTURE_MAX];
    int n = backtrace(raw, (int)max);
    for (int i = 0; i < n; i++)
        out[i] = (uintptr_t)raw[i];
    return n > 0 ? (unsigned)n : 0;
}
#endif

/* Return addresses as the program's caller left them vs. as the unwinder reports them: on ARM
 * _Unwind_GetIP clears the Thumb bit that lr carries. */
static inline int mbt_same_ip(uintptr_t captured, uintptr_t caller)
{
#if defined(__arm__)
    return (captured | 1) == (caller | 1);
#else
    return captured == caller;
#endif
}

static unsigned mbt_want(unsigned depth)
{
    unsigned want = depth + MBT_OWN_FRAMES_MAX + 1;
    return want > MBT_CAPTURE_MAX ? MBT_CAPTURE_MAX : want;
}

/* Cut the recorder's own frames: those before the site's caller, or else those inside our own
 * code. *found is 1 when the caller was found (the frame at skip is the program's call). */
static unsigned mbt_cut_own(const uintptr_t *raw, unsigned n, unsigned want, unsigned depth,
                            const struct mbt_site *site, uintptr_t *out, int *truncated, unsigned *skip_out,
                            int *found)
{
    unsigned skip = 0;
    while (skip < n && skip <= MBT_OWN_FRAMES_MAX && !mbt_same_ip(raw[skip], (uintptr_t)site->caller))
        skip++;
    *found = skip < n && skip <= MBT_OWN_FRAMES_MAX;
    if (!*found) {
        skip = 0;
        while (skip < n && raw[skip] >= mbt_own_lo && raw[skip] < mbt_own_hi)
            skip++;
    }
    unsigned avail = n - skip;
    *truncated = avail > depth || n >= want;
    if (avail > depth)
        avail = depth;
    memcpy(out, raw + skip, avail * sizeof *out);
    *skip_out = skip;
    return avail;
}

__attribute__((noinline)) unsigned mbt_unwind_capture(uintptr_t *out, unsigned depth, const struct mbt_site *site,
                                                      int *truncated)
{
    uintptr_t raw[MBT_CAPTURE_MAX];
    unsigned want = mbt_want(depth), n = 0, skip;
    int found;
    switch (mbt_backend) {
    case MBT_UW_FP:
#ifdef MBT_HAVE_FP
        n = mbt_fp_walk(raw, want, site->frame);
#endif
        break;
    case MBT_UW_GLIBC:
#ifdef MBT_HAVE_GLIBC_BACKTRACE
        n = mbt_glibc_walk(raw, want);
#endif
        break;
    case MBT_UW_UNWIND:
    case MBT_UW_CACHED:
#ifdef MBT_HAVE_LIBGCC_UNWIND
    {
        struct mbt_uw_walk w = {raw, NULL, NULL, 0, want, 0, MBT_STOP_END, 0, 0};
        n = mbt_uw_walk(&w);
    }
#endif
        break;
    }
    return mbt_cut_own(raw, n, want, depth, site, out, truncated, &skip, &found);
}

/* ---- what the cache learns ---- */

#ifdef MBT_HAVE_CACHE
/* Where the frame between CFAs lo and hi saved return address ip: 0 when it is not there.
 * x86_64: the call pushed it just below the CFA. aarch64: the prologue stored x30 in the frame
 * record fp points at ({caller's x29, x30}); in a frame without one, somewhere in the frame, and
 * it must be there exactly once, or the slot is not trusted. */
__attribute__((no_sanitize_address)) static uintptr_t mbt_ra_slot(uintptr_t lo, uintptr_t hi, uintptr_t ip, uintptr_t fp)
{
    if (hi <= lo || hi - lo < sizeof(uintptr_t) || (hi & (sizeof(uintptr_t) - 1)))
        return 0;
#if defined(__aarch64__)
    /* the frame record x29 points at: {caller's x29, x30}; a stale copy elsewhere does not matter */
    if (fp >= lo && fp + 2 * sizeof(uintptr_t) <= hi && !(fp & 7) && *(const uintptr_t *)(fp + 8) == ip)
        return fp + 8;
#else
    (void)fp;
#endif
#if defined(__x86_64__)
    uintptr_t slot = hi - sizeof(uintptr_t);
    return *(const uintptr_t *)slot == ip ? slot : 0;
#else
    uintptr_t slot = 0;
    for (uintptr_t a = hi - sizeof(uintptr_t); a >= lo; a -= sizeof(uintptr_t)) {
        if (*(const uintptr_t *)a != ip)
            continue;
        if (slot)
            return 0;
        slot = a;
    }
    return slot;
#endif
}

/* A slot as an offset from the site's CFA (once): 0 when it is too far for one, or too many. */
static int mbt_add_slot(struct mbt_learned *l, uintptr_t slot, uintptr_t base)
{
    intptr_t off = (intptr_t)(slot - base);
    if (!slot || off < INT32_MIN || off > INT32_MAX)
        return 0;
    for (unsigned i = 0; i < l->nslots; i++)
        if (l->off[i] == (int32_t)off)
            return 1;
    if (l->nslots >= MBT_LEARN_SLOTS)
        return 0;
    l->off[l->nslots++] = (int32_t)off;
    return 1;
}

/* Frame k (between CFAs lo and hi; hi is its own CFA) holds its frame-pointer register fp. When
 * fp points into the frame, the frame may live on it (alloca, VLAs, every frame built with
 * -fno-omit-frame-pointer): then its size is not fixed by its code, and where its caller's
 * frame lies depends on fp. The unwinder took fp from a slot saved by a frame inside it, or from
 * where the hook's prologue saved the program's frame pointer (site->frame, on x86_64 and
 * aarch64 alike); the rest of the hook's frame is ours. Every such slot that holds fp is pinned,
 * so a hit needs the same fp there (a frame that does not touch its frame pointer passes it on:
 * the value is saved again further in). 1 when nothing needs pinning or it is pinned. */
__attribute__((no_sanitize_address)) static int mbt_pin_fp(struct mbt_learned *l, uintptr_t lo, uintptr_t hi,
                                                           uintptr_t fp, const struct mbt_site *site, uintptr_t base)
{
    if (fp < lo || fp >= hi || (fp & (sizeof(uintptr_t) - 1)))
        return 1; /* not a pointer into its own frame: the CFA rule is the stack pointer's */
    uintptr_t saved = (uintptr_t)site->frame;
    int found = 0;
#if defined(__x86_64__)
    /* A DRAP-realigned frame (gcc: over-aligned locals with stack arguments or alloca) reads its
     * CFA from the stack (*(rbp - 8) or a few words below, after the callee-saved pushes), a word
     * whose distance from rbp depends on the alignment of the caller's stack pointer: pin that
     * word too, or its caller's frames may lie elsewhere. */
    if (hi != fp + 2 * sizeof(uintptr_t))
        for (uintptr_t a = fp - sizeof(uintptr_t); a >= lo && a + 8 * sizeof(uintptr_t) >= fp; a -= sizeof(uintptr_t))
            if (*(const uintptr_t *)a == hi && !mbt_add_slot(l, a, base))
                return 0;
#endif
    if (!(saved & (sizeof(uintptr_t) - 1)) && saved < base && *(const uintptr_t *)saved == fp) {
        if (!mbt_add_slot(l, saved, base))
            return 0;
        found = 1;
    }
    for (uintptr_t a = base; a + sizeof(uintptr_t) <= lo; a += sizeof(uintptr_t)) {
        if (*(const uintptr_t *)a != fp)
            continue;
        if (!mbt_add_slot(l, a, base))
            return 0;
        found = 1;
    }
    return found;
}

/* The slots of frames 1.. of a capture whose frame `skip` is the site's caller, and what ends
 * it. The cache relies on a frame's size being a function of its return address, unless the
 * frame lives on its frame pointer: those are pinned (mbt_pin_fp). What this can check, it does. */
__attribute__((no_sanitize_address)) static int mbt_learn(const struct mbt_uw_walk *w, unsigned skip, unsigned depth,
                                                          const struct mbt_site *site, struct mbt_learned *l)
{
    const uintptr_t *ip = w->out, *cfa = w->cfas, *fp = w->fps, base = (uintptr_t)site->cfa;
    unsigned avail = w->n - skip, nframes = avail > depth ? depth : avail, more = avail > depth;
    if (w->signal_frame || cfa[skip] != base)
        return 0;
    l->nslots = 0;
    /* cfa[skip + k] is the CFA of the frame frame k called: frame k spans cfa[skip + k] ..
     * cfa[skip + k + 1], and frame k + 1's return address is saved there */
    for (unsigned k = 1; k < nframes + more; k++)
        if (!mbt_add_slot(l, mbt_ra_slot(cfa[skip + k - 1], cfa[skip + k], ip[skip + k], fp[skip + k - 1]), base))
            return 0;
    if (more) {
        l->end = MBT_END_MORE;
    } else if (w->stop == MBT_STOP_END) { /* the last frame had no unwind info: a property of its code */
        l->end = MBT_END_NONE;
    } else if (w->stop != MBT_STOP_ZERO) {
        return 0;
    } else {
        l->end = MBT_END_NONE; /* aarch64: the entry points mark x30 undefined */
#if defined(__aarch64__)
        /* a frame entered with x30 = 0 saved that 0 in its frame record: pin it */
        uintptr_t lastfp = fp[skip + nframes - 1], rec = lastfp + sizeof(uintptr_t);
        if (lastfp >= cfa[skip + nframes - 1] && lastfp < w->stop_cfa && !(lastfp & 7) &&
            *(const uintptr_t *)rec == 0) {
            if (!mbt_add_slot(l, rec, base))
                return 0;
            l->end = MBT_END_ZERO;
        }
#endif
#if defined(__x86_64__)
        /* Return address 0: read from the stack, or "undefined" in the CFI (thread and process
         * entry). Read as 0 from the slot, that slot must stay 0; else the CFI ended it. */
        uintptr_t last = cfa[skip + nframes - 1], zslot = w->stop_cfa - sizeof(uintptr_t);
        if (w->stop_cfa > last && zslot >= last && !(zslot & (sizeof(uintptr_t) - 1)) &&
            *(const uintptr_t *)zslot == 0) {
            if (!mbt_add_slot(l, zslot, base))
                return 0;
            l->end = MBT_END_ZERO;
        }
#endif
    }
    /* the frames whose own CFA placed a slot: 0 .. nframes + more - 2, and the last one when
     * the terminal slot lies in it */
    unsigned placed = nframes + more - 1 + (l->end == MBT_END_ZERO);
    for (unsigned k = 0; k < placed; k++) {
        uintptr_t hi = skip + k + 1 < w->n ? cfa[skip + k + 1] : w->stop_cfa;
        if (!mbt_pin_fp(l, cfa[skip + k], hi, fp[skip + k], site, base))
            return 0;
    }
    return 1;
}
#endif

__attribute__((noinline)) unsigned mbt_unwind_capture_learn(uintptr_t *out, unsigned depth,
                                                            const struct mbt_site *site, int *truncated,
                                                            struct mbt_learned *learned, int *learn_ok)
{
#ifdef MBT_HAVE_CACHE
    uintptr_t raw[MBT_CAPTURE_MAX], cfas[MBT_CAPTURE_MAX], fps[MBT_CAPTURE_MAX];
    unsigned want = mbt_want(depth), skip;
    int found;
    struct mbt_uw_walk w = {raw, cfas, fps, 0, want, 0, MBT_STOP_END, 0, 0};
    unsigned n = mbt_uw_walk(&w);
    unsigned avail = mbt_cut_own(raw, n, want, depth, site, out, truncated, &skip, &found);
    *learn_ok = found && avail && mbt_learn(&w, skip, depth, site, learned);
    return avail;
#else
    (void)learned;
    *learn_ok = 0;
    return mbt_unwind_capture(out, depth, site, truncated);
#endif
}

/* ---- the recorder's own code ---- */

struct mbt_own_search {
    uintptr_t probe, lo, hi;
};

static int mbt_own_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
    struct mbt_own_search *s = arg;
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    int mine = 0;
    (void)size;
    for (unsigned i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
            continue;
        uintptr_t a = info->dlpi_addr + ph->p_vaddr, b = a + ph->p_memsz;
        if (s->probe >= a && s->probe < b)
            mine = 1;
        if (a < lo)
            lo = a;
        if (b > hi)
            hi = b;
    }
    if (!mine)
        return 0;
    /* Linked into the program itself (libmembt.a): its code range is the program's, no use. */
    if (info->dlpi_name && info->dlpi_name[0]) {
        s->lo = lo;
        s->hi = hi;
    }
    return 1;
}

void mbt_unwind_init(void)
{
    struct mbt_own_search s = {(uintptr_t)mbt_unwind_capture, 0, 0};
    dl_iterate_phdr(mbt_own_cb, &s);
    mbt_own_lo = s.lo;
    mbt_own_hi = s.hi;
    /* The first capture may load libgcc_s and allocate (glibc backtrace dlopens it): do it now,
     * under the caller's recursion guard, not inside the program's first malloc. */
    uintptr_t frames[MBT_CAPTURE_MAX];
    int truncated;
    struct mbt_site site = MBT_SITE();
    mbt_unwind_capture(frames, MEMBT_MAX_DEPTH, &site, &truncated);
}
