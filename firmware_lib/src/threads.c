/* Per-thread records, carved from the budget: counters bumped on every allocation (so threads do
 * not fight over one cache line), and for MEMBT_UNWIND=cached a validated capture cache.
 *
 * The capture cache. A capture through libgcc costs microseconds; most allocations of a program
 * come from call stacks it has seen before, at the same stack depth. Key: the return address of
 * the hook's caller and the hook's CFA (the stack pointer the caller gets back). The slow path
 * learns from each capture where every later return address was read: a stack slot, as an offset
 * from that CFA (unwind.c). A *layout* is the key with those offsets; an *entry* is an interned
 * stack seen through a layout, found by a 64-bit fingerprint of the words at the layout's slots
 * (the stack's return addresses, plus the slot that ended the capture: 0, or another frame when
 * it was cut at MEMBT_DEPTH). A hit needs the key and the fingerprint the entry was learned with.
 * Then the unwinder, run now, would read the same addresses from the same slots: frame k's CFA is
 * frame k-1's plus a size fixed by frame k's code at that return address, so equal return
 * addresses mean equal CFAs and equal slots, frame after frame. The stack id comes back without
 * unwinding or interning, and without reading the stack's frames (a hit touches one cache line
 * of the cache; comparing the frames too cost 5 ns of the 60 an allocation pays in bench/).
 * The price: two different slot contents with the same fingerprint, for the same key, would
 * give the cached stack - about 2^-62 per allocation (4 entries a bucket), so less than one
 * wrong stack in 10^18 allocations.
 *
 * Where that chain breaks: a frame whose size is not fixed by its code (alloca, VLAs). Two such
 * frames changing size by opposite amounts keep the key CFA, and the stale slots above often
 * still hold the old return addresses (cache-sample did: 0.4% of hits wrong). Such a frame lives
 * on its frame pointer, so the learner also pins every slot the frame pointer was saved in
 * (unwind.c, mbt_pin_fp): a hit then needs the frames where they were. Programs built with
 * -fno-omit-frame-pointer pin every frame. Captures through a signal frame, or that did not reach the program's caller, are never
 * cached. MEMBT_UNWIND_VERIFY=1 captures afresh on every hit and counts differences (C record:
 * unwind_mismatches).
 *
 * Reading the slots: they were stack words of this thread at this very stack pointer when the
 * unwinder read them, and a thread's own stack stays mapped while it runs (a record is wiped when
 * a new thread takes it). A program that runs on stacks of its own (coroutines) and unmaps one,
 * then maps a smaller one at the same address, would make a read go past the new stack's end:
 * every munmap() and dlclose() of the program (hooks.c) starts a new generation, and layouts of an
 * older one are never read (dlclose also because other code, with other frame sizes, may come at
 * the old return addresses). glibc's own unmapping does not pass there: a thread stack it frees
 * and maps again smaller at the same address stays a hole. The thread's stack bounds are not asked
 * for (pthread_getattr_np allocates while holding the thread's lock: asking from inside an
 * allocation it makes deadlocks).
 *
 * Found by an adversarial review and fixed (0 mismatches under VERIFY since): frames realigned
 * through DRAP (their CFA is a stack word: pinned), aarch64 stacks ended by a saved x30 of 0
 * (pinned), different code at the same address after dlclose, and entries of one key matching
 * another's after the 16-bit layout version wrapped (fingerprints are seeded by key and version).
 *
 * A thread takes a free record on its first allocation and gives it back at exit (pthread key
 * destructor); when all are taken it captures without a cache and counts in the shared counters.
 */
#include "mbt_internal.h"

#include <string.h>

#define MBT_THREADS_MAX 64
#define MBT_WAYS 4            /* layouts per key set */
#define MBT_LAYOUT_SETS 32    /* 128 layouts */
#define MBT_BUCKET 4          /* entries per bucket: 64 bytes, one cache line */
#define MBT_LAYOUTS (MBT_LAYOUT_SETS * MBT_WAYS) /* < 256: an entry names its layout in a byte */
#define MBT_ENTRY_BUCKETS 1024 /* 4096 entries, 64 KiB */
/* slots a layout may need: frames 2..depth, one more (terminal), a frame pointer per frame */
#define MBT_LAYOUT_SLOTS(depth) (2u * (depth) + 1u)

struct mbt_thread {
    uint32_t owner; /* 0 free, 1 taken */
    uint32_t round; /* use count: the entries' least recently used */
    uint32_t evict; /* replacement cursor for layouts */
    mbt_counter truncated, hits, misses, verified, mismatches; /* cumulative over owners */
};

struct mbt_layout {
    uintptr_t caller, cfa; /* the key; caller 0: empty */
    uint64_t seed;         /* of its entries' fingerprints: the key and the version */
    uint32_t gen;          /* mbt_code_gen when learned: an older one is empty */
    uint16_t version;      /* entries of an older version belong to an evicted layout */
    uint8_t nframes, truncated, end, nslots;
    int32_t off[]; /* nslots offsets from cfa; room for MBT_LAYOUT_SLOTS(depth) */
};

/* 16 bytes: a hit reads one bucket line and nothing else (not the stack's frames). */
struct mbt_entry {
    uint64_t print;    /* fingerprint of the words at the layout's slots when it was learned */
    uint32_t stack_id;
    uint16_t version;  /* of the layout it was learned through (an older one is stale) */
    uint8_t layout;    /* that layout's index + 1; 0: empty */
    uint8_t used;      /* low bits of the thread's round at its last use: the least recent goes first */
};

_Static_assert(MBT_LAYOUTS <= 256, "an entry names its layout in one byte");

static char *mbt_records;
static unsigned mbt_nrecords;
static size_t mbt_record_size, mbt_layout_size, mbt_layouts_at, mbt_entries_at;
static unsigned mbt_layout_slots;
static unsigned mbt_gen = 1; /* a new set of records at every start */
/* Bumped when code or a stack may have left the address space (dlclose, munmap: hooks.c). What a
 * layout learned there may no longer hold - other code with other frame sizes, or a smaller stack
 * whose slots are not mapped - so layouts of an older generation are never read again. */
static unsigned mbt_code_gen;
static int mbt_caching;      /* MEMBT_UNWIND=cached */
static pthread_key_t mbt_key;
static int mbt_key_made;

static __thread struct mbt_thread *mbt_self __attribute__((tls_model("initial-exec")));
static __thread unsigned mbt_self_gen __attribute__((tls_model("initial-exec")));

static inline struct mbt_thread *mbt_record(unsigned i) { return (struct mbt_thread *)(mbt_records + i * mbt_record_size); }
static inline struct mbt_layout *mbt_layout_at(struct mbt_thread *t, unsigned i)
{
    return (struct mbt_layout *)((char *)t + mbt_layouts_at + i * mbt_layout_size);
}
static inline struct mbt_entry *mbt_entries(struct mbt_thread *t) { return (struct mbt_entry *)((char *)t + mbt_entries_at); }

/* only the owner writes its counters; a dump reads them while they move */
#define mbt_bump(t, field) __atomic_store_n(&(t)->field, (t)->field + 1, __ATOMIC_RELAXED)

static size_t mbt_round64(size_t n) { return (n + 63) & ~(size_t)63; }

/* Sizes for budget.c, before setup: one record (with its cache) at this depth. */
size_t mbt_threads_record_size(unsigned depth)
{
    size_t layout = (sizeof(struct mbt_layout) + MBT_LAYOUT_SLOTS(depth) * sizeof(int32_t) + 7) & ~(size_t)7;
    return mbt_round64(sizeof(struct mbt_thread)) + mbt_round64(MBT_LAYOUT_SETS * MBT_WAYS * layout) +
           mbt_round64(MBT_ENTRY_BUCKETS * MBT_BUCKET * sizeof(struct mbt_entry));
}

unsigned mbt_threads_max(void) { return MBT_THREADS_MAX; }

static void mbt_thread_exit(void *arg);

void mbt_threads_setup(const struct mbt_regions *r, unsigned depth)
{
    mbt_layout_slots = MBT_LAYOUT_SLOTS(depth);
    mbt_layout_size = (sizeof(struct mbt_layout) + mbt_layout_slots * sizeof(int32_t) + 7) & ~(size_t)7;
    mbt_layouts_at = mbt_round64(sizeof(struct mbt_thread));
    mbt_entries_at = mbt_layouts_at + mbt_round64(MBT_LAYOUT_SETS * MBT_WAYS * mbt_layout_size);
    mbt_record_size = r->thread_bytes;
    mbt_records = r->threads;
    mbt_nrecords = r->thread_slots;
    mbt_caching = mbt_unwind_cached();
    __atomic_add_fetch(&mbt_gen, 1, __ATOMIC_RELEASE); /* records of an earlier start are gone */
    if (!mbt_key_made && pthread_key_create(&mbt_key, mbt_thread_exit) == 0)
        mbt_key_made = 1;
}

static void mbt_thread_exit(void *arg)
{
    struct mbt_thread *t = arg;
    if (t && mbt_self == t && mbt_self_gen == __atomic_load_n(&mbt_gen, __ATOMIC_ACQUIRE))
        __atomic_store_n(&t->owner, 0, __ATOMIC_RELEASE);
    mbt_self = NULL; /* allocations after this (other destructors) count in the shared counters */
}

void mbt_threads_unload(void)
{
    if (mbt_key_made) {
        pthread_key_delete(mbt_key);
        mbt_key_made = 0;
    }
}

void mbt_threads_after_fork(void)
{
    struct mbt_thread *mine = mbt_self_gen == mbt_gen ? mbt_self : NULL;
    for (unsigned i = 0; i < mbt_nrecords; i++)
        if (mbt_record(i) != mine)
            __atomic_store_n(&mbt_record(i)->owner, 0, __ATOMIC_RELAXED);
}

/* A record for the calling thread, which has none of this start: NULL when all are taken. */
__attribute__((noinline)) static struct mbt_thread *mbt_thread_take(unsigned gen)
{
    mbt_self_gen = gen;
    mbt_self = NULL;
    for (unsigned i = 0; i < mbt_nrecords; i++) {
        struct mbt_thread *t = mbt_record(i);
        uint32_t free_owner = 0;
        if (!__atomic_compare_exchange_n(&t->owner, &free_owner, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            continue;
        if (mbt_caching)
            memset((char *)t + mbt_layouts_at, 0, mbt_record_size - mbt_layouts_at); /* a former owner's */
        mbt_self = t;
        if (mbt_key_made)
            pthread_setspecific(mbt_key, t);
        break;
    }
    return mbt_self;
}

/* The calling thread's record: NULL when there is none for it (all taken, or thread ending). */
static inline struct mbt_thread *mbt_thread_get(void)
{
    unsigned gen = __atomic_load_n(&mbt_gen, __ATOMIC_ACQUIRE);
    if (__builtin_expect(mbt_self_gen == gen, 1))
        return mbt_self;
    return mbt_thread_take(gen);
}

void mbt_threads_forget(void) { __atomic_add_fetch(&mbt_code_gen, 1, __ATOMIC_RELEASE); }

/* ---- the cache ---- */

static inline uint64_t mbt_key_hash(uintptr_t caller, uintptr_t cfa)
{
    uint64_t h = ((uint64_t)caller ^ ((uint64_t)cfa << 17 | (uint64_t)cfa >> 47)) * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 31);
}

/* The first of the MBT_WAYS layouts a key may be in. */
static inline unsigned mbt_set_of(uint64_t key) { return (unsigned)(key >> 32) % MBT_LAYOUT_SETS * MBT_WAYS; }

/* The 128-bit product folded to 64 bits (wyhash's "mum"). 32-bit builds never cache (unwind.c
 * refuses MEMBT_UNWIND=cached there): their stand-in only has to compile. */
static inline uint64_t mbt_mum(uint64_t x, uint64_t y)
{
#ifdef __SIZEOF_INT128__
    unsigned __int128 p = (unsigned __int128)x * y;
    return (uint64_t)p ^ (uint64_t)(p >> 64);
#else
    return x * y ^ ((x >> 32) * (y >> 32));
#endif
}

/* The fingerprint of the words at a layout's slots, read from this thread's own stack (inside it
 * when learned): one independent product per pair of slots, so the multiplies overlap, xored and
 * mixed once. Each slot has a key of its own (a Weyl sequence, as in wyrand), so the same words
 * at other slots give another fingerprint. */
#define MBT_PRINT_STEP 0x9e3779b97f4a7c15ull
__attribute__((no_sanitize_address)) static inline uint64_t mbt_slots_print(const struct mbt_layout *l, uint64_t seed)
{
    const int32_t *off = l->off;
    uintptr_t base = l->cfa;
    unsigned n = l->nslots, k = 0;
    uint64_t h = seed ^ n, key = 0xa0761d6478bd642full, g = 0;
    for (; k + 3 < n; k += 4) { /* two products an iteration, in two chains */
        uint64_t w = *(const uintptr_t *)(base + off[k]), x = *(const uintptr_t *)(base + off[k + 1]);
        uint64_t y = *(const uintptr_t *)(base + off[k + 2]), z = *(const uintptr_t *)(base + off[k + 3]);
        h ^= mbt_mum(w ^ key, x ^ (key + MBT_PRINT_STEP));
        g ^= mbt_mum(y ^ (key + 2 * MBT_PRINT_STEP), z ^ (key + 3 * MBT_PRINT_STEP));
        key += 4 * MBT_PRINT_STEP;
    }
    for (; k < n; k++, key += MBT_PRINT_STEP)
        h ^= mbt_mum(*(const uintptr_t *)(base + off[k]) ^ key, key ^ 0xe7037ed1a0b428dbull);
    h ^= g;
    return mbt_mum(h ^ 0x2d358dccaa6c78a5ull, h ^ 0x8bb84b93962eacc9ull);
}

static inline int mbt_entry_of(const struct mbt_entry *e, uint64_t print, unsigned layout, unsigned version)
{
    return e->print == print && e->layout == layout + 1 && e->version == (uint16_t)version;
}

static inline __attribute__((always_inline)) uint32_t mbt_cache_find(struct mbt_thread *t, uintptr_t caller,
                                                                      uintptr_t cfa, int *truncated)
{
    unsigned set = mbt_set_of(mbt_key_hash(caller, cfa));
    unsigned gen = __atomic_load_n(&mbt_code_gen, __ATOMIC_ACQUIRE);
    for (unsigned w = 0; w < MBT_WAYS; w++) {
        const struct mbt_layout *l = mbt_layout_at(t, set + w);
        if (l->caller != caller || l->cfa != cfa || l->gen != gen)
            continue;
        uint64_t h = mbt_slots_print(l, l->seed);
        struct mbt_entry *e = mbt_entries(t) + (h >> 32) % MBT_ENTRY_BUCKETS * MBT_BUCKET;
        for (unsigned i = 0; i < MBT_BUCKET; i++, e++) {
            if (!mbt_entry_of(e, h, set + w, l->version))
                continue;
            e->used = (uint8_t)++t->round;
            *truncated = l->truncated;
            return e->stack_id;
        }
    }
    return 0;
}

__attribute__((no_sanitize_address)) static inline uintptr_t mbt_slot_word(const struct mbt_layout *l, unsigned k)
{
    return *(const uintptr_t *)(l->cfa + l->off[k]);
}

static int mbt_layout_same(const struct mbt_layout *l, uintptr_t caller, uintptr_t cfa, unsigned gen, unsigned nframes,
                           int truncated, const struct mbt_learned *m)
{
    return l->caller == caller && l->cfa == cfa && l->gen == gen && l->nframes == nframes && l->truncated == truncated &&
           l->end == m->end && l->nslots == m->nslots && !memcmp(l->off, m->off, m->nslots * sizeof *m->off);
}

static void mbt_cache_add(struct mbt_thread *t, uintptr_t caller, uintptr_t cfa, const uintptr_t *frames,
                          unsigned nframes, int truncated, const struct mbt_learned *m, uint32_t id)
{
    if (m->nslots > mbt_layout_slots)
        return; /* more pinned slots than a layout has room for: not cached */
    uint64_t key = mbt_key_hash(caller, cfa);
    unsigned set = mbt_set_of(key), way = MBT_WAYS;
    unsigned gen = __atomic_load_n(&mbt_code_gen, __ATOMIC_ACQUIRE);
    for (unsigned w = 0; w < MBT_WAYS && way == MBT_WAYS; w++)
        if (mbt_layout_same(mbt_layout_at(t, set + w), caller, cfa, gen, nframes, truncated, m))
            way = w;
    if (way == MBT_WAYS) { /* a new layout: an empty (or outdated) way, else the next in turn */
        for (unsigned w = 0; w < MBT_WAYS && way == MBT_WAYS; w++)
            if (!mbt_layout_at(t, set + w)->caller || mbt_layout_at(t, set + w)->gen != gen)
                way = w;
        if (way == MBT_WAYS)
            way = t->evict++ % MBT_WAYS;
        struct mbt_layout *l = mbt_layout_at(t, set + way);
        l->caller = caller;
        l->cfa = cfa;
        l->gen = gen;
        l->version++;
        /* entries learned through another key can never match, whatever the version's wrap */
        l->seed = key ^ ((uint64_t)l->version << 47 | l->version);
        l->nframes = (uint8_t)nframes;
        l->truncated = (uint8_t)truncated;
        l->end = (uint8_t)m->end;
        l->nslots = (uint8_t)m->nslots;
        memcpy(l->off, m->off, m->nslots * sizeof *m->off);
    }
    struct mbt_layout *l = mbt_layout_at(t, set + way);
    /* the slots must hold what the capture read there: frames 1.., then the terminal word */
    for (unsigned k = 1; k < nframes; k++)
        if (mbt_slot_word(l, k - 1) != frames[k])
            return;
    if ((l->end == MBT_END_ZERO && mbt_slot_word(l, nframes - 1u) != 0) ||
        (l->end == MBT_END_MORE && mbt_slot_word(l, nframes - 1u) == 0))
        return;
    uint64_t h = mbt_slots_print(l, l->seed);
    /* an empty entry, else one of an evicted layout version, else the least recently used */
    struct mbt_entry *bucket = mbt_entries(t) + (h >> 32) % MBT_ENTRY_BUCKETS * MBT_BUCKET, *e = NULL;
    for (unsigned i = 0; i < MBT_BUCKET && !e; i++)
        if (!bucket[i].layout || (bucket[i].layout == set + way + 1 && bucket[i].version != l->version))
            e = &bucket[i];
    if (!e) {
        uint8_t now = (uint8_t)t->round;
        e = bucket;
        for (unsigned i = 1; i < MBT_BUCKET; i++)
            if ((uint8_t)(now - bucket[i].used) > (uint8_t)(now - e->used))
                e = &bucket[i];
    }
    e->print = h;
    e->stack_id = id;
    e->version = l->version;
    e->layout = (uint8_t)(set + way + 1);
    e->used = (uint8_t)++t->round;
}

/* ---- stack ids ---- */

static uint32_t mbt_fresh(unsigned depth, const struct mbt_site *site, int *truncated)
{
    uintptr_t frames[MEMBT_MAX_DEPTH];
    unsigned n = mbt_unwind_capture(frames, depth, site, truncated);
    return mbt_stacks_intern(frames, n, *truncated);
}

/* Not inlined into the hook path: the cache miss carries the big capture buffers. */
__attribute__((noinline)) static uint32_t mbt_miss(struct mbt_thread *t, unsigned depth, const struct mbt_site *site,
                                                   int *truncated)
{
    uintptr_t frames[MEMBT_MAX_DEPTH];
    struct mbt_learned learned;
    int ok;
    unsigned n = mbt_unwind_capture_learn(frames, depth, site, truncated, &learned, &ok);
    uint32_t id = mbt_stacks_intern(frames, n, *truncated);
    if (ok && id)
        mbt_cache_add(t, (uintptr_t)site->caller, (uintptr_t)site->cfa, frames, n, *truncated, &learned, id);
    return id;
}

/* Everything but a plain cache hit: no record, no cache, a miss, or a hit to verify. */
__attribute__((noinline)) static uint32_t mbt_stack_id_slow(struct mbt_thread *t, unsigned depth,
                                                            const struct mbt_site *site, int looked)
{
    int truncated = 0;
    uint32_t id;
    if (!t) {
        id = mbt_fresh(depth, site, &truncated);
        if (truncated)
            mbt_count_add(mbt_counters.truncated_stacks, 1);
        return id;
    }
    if (!mbt_caching) {
        id = mbt_fresh(depth, site, &truncated);
    } else if (!looked && (id = mbt_cache_find(t, (uintptr_t)site->caller, (uintptr_t)site->cfa, &truncated)) != 0) {
        mbt_bump(t, hits);
        if (mbt_run.unwind_verify) {
            int fresh_truncated;
            uint32_t fresh = mbt_fresh(depth, site, &fresh_truncated);
            mbt_bump(t, verified);
            if (fresh != id) {
                mbt_bump(t, mismatches);
                id = fresh;
                truncated = fresh_truncated;
            }
        }
    } else {
        mbt_bump(t, misses);
        id = mbt_miss(t, depth, site, &truncated);
    }
    if (truncated)
        mbt_bump(t, truncated);
    return id;
}

uint32_t mbt_threads_stack_id(unsigned depth, const struct mbt_site *site)
{
    struct mbt_thread *t = mbt_thread_get();
    if (__builtin_expect(t && mbt_caching && !mbt_run.unwind_verify, 1)) {
        int truncated;
        uint32_t id = mbt_cache_find(t, (uintptr_t)site->caller, (uintptr_t)site->cfa, &truncated);
        if (__builtin_expect(id != 0, 1)) {
            mbt_bump(t, hits);
            __atomic_store_n(&t->truncated, t->truncated + (mbt_counter)truncated, __ATOMIC_RELAXED);
            return id;
        }
    }
    return mbt_stack_id_slow(t, depth, site, t && mbt_caching && !mbt_run.unwind_verify);
}

void mbt_threads_totals(struct mbt_thread_totals *tot)
{
    tot->truncated = mbt_load(mbt_counters.truncated_stacks);
    tot->hits = tot->misses = tot->verified = tot->mismatches = 0;
    for (unsigned i = 0; i < mbt_nrecords; i++) {
        const struct mbt_thread *t = mbt_record(i);
        tot->truncated += mbt_load(t->truncated);
        tot->hits += mbt_load(t->hits);
        tot->misses += mbt_load(t->misses);
        tot->verified += mbt_load(t->verified);
        tot->mismatches += mbt_load(t->mismatches);
    }
}

uint64_t mbt_threads_used_bytes(void)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < mbt_nrecords; i++)
        n += __atomic_load_n(&mbt_record(i)->owner, __ATOMIC_RELAXED) != 0;
    return n * (mbt_caching ? mbt_record_size : mbt_layouts_at);
}
