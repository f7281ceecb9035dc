/* Live blocks keyed by address: 64 shards, each an open-addressing table with linear probing and
 * backward-shift delete under its own tiny lock.
 *
 * Which shard: threads that share a shard pass its lock and table lines between their cores on
 * every allocation (measured: 2 threads 2.0x instead of 1.5x). Allocators keep each thread's
 * blocks in its own address ranges (glibc arenas), so the address space is cut into regions
 * (64 KiB at the default budget) and a directory maps each region to the shard of the thread that
 * allocated there first: its home shard, handed out in turn. A home shard a quarter full takes no
 * new regions (its thread moves on to another), so one busy thread still spreads over all shards.
 * A region's shard that is full sends further blocks to the shard the address hashes to, which
 * is also the shard of every region the directory has no room for.
 *
 * A shard's table grows with its live set (sizes C/2^k up to its final capacity C; each doubles
 * once it is a third full, where probing ends almost at once), so a program with few live blocks
 * touches a few hundred KiB that stay in cache instead of a table spread over the whole budget.
 * Growing copies the shard's entries to one scratch area of C/2 slots shared by all shards (under
 * a lock that only growth takes) and re-inserts them: the block area holds 64 * C + C/2 slots. At
 * its final size a shard takes no more than 7/8 of C; beyond that an allocation is not tracked
 * and the caller counts it. Per-stack live counts are not kept here: the dump's scan adds them. */
#include "mbt_internal.h"

#include <string.h>
#include <sys/mman.h>

#define MBT_SHARD_MIN_SLOTS 64u

struct mbt_shard {
    mbt_lock lock;
    uint32_t slots; /* current size */
    uint32_t used;
    uint32_t limit; /* grow (or, at full size, refuse) beyond this */
    uint32_t spilled; /* some block of its regions went to its address's hash shard */
    size_t bytes;
    struct mbt_block *tab;
} __attribute__((aligned(64))); /* one cache line each: no false sharing between shards */

static struct mbt_shard mbt_shards[MBT_SHARDS];
static uint32_t mbt_shard_max;           /* C: a shard's final size */
static struct mbt_block *mbt_grow_scratch; /* C/2 slots */
static mbt_lock mbt_grow_lock;

/* The region directory: open addressing, entries (region + 1) << 8 | shard, never removed until
 * a restart, written under mbt_dir_lock and read without it. */
static struct {
    uint64_t *slots;
    uint32_t mask;
    unsigned shift; /* region = address >> shift */
} mbt_dir;
static uint32_t mbt_dir_used, mbt_dir_max;
static mbt_lock mbt_dir_lock;
static unsigned mbt_next_home; /* the next home shard handed out */
static unsigned mbt_blocks_gen = 1;
static __thread unsigned mbt_home_shard __attribute__((tls_model("initial-exec")));
static __thread unsigned mbt_home_gen __attribute__((tls_model("initial-exec")));

/* Multiplicative hash; only its high bits are good (allocator addresses share low bits). */
static inline uint64_t mbt_addr_hash(uintptr_t addr) { return (uint64_t)addr * 0x9E3779B97F4A7C15ull; }
static inline unsigned mbt_hash_shard(uint64_t h) { return (unsigned)(h >> 58); }
static inline uint32_t mbt_slot_of(uint32_t slots, uint64_t h)
{
    return (uint32_t)(((h >> 26) & 0xffffffffu) * slots >> 32);
}
static inline uint32_t mbt_next(uint32_t slots, uint32_t i) { return i + 1 == slots ? 0 : i + 1; }
static inline uint32_t mbt_full_limit(uint32_t slots) { return slots - (slots + 7) / 8; }
/* A third full: grow (measured: probe and shift loops that end at once cost 10+ ns less per
 * allocation than at a half). At the final size up to 7/8, the capacity the budget promises: the
 * resident cost of a block is its slot / 0.875 there (probes grow long only near that end). */
static inline uint32_t mbt_limit_of(uint32_t slots)
{
    return slots >= mbt_shard_max ? mbt_full_limit(slots) : slots / 3;
}

/* used/bytes change under the shard lock and are read without it by stats: atomic stores */
static inline void mbt_shard_count(struct mbt_shard *s, int blocks, size_t add, size_t sub)
{
    __atomic_store_n(&s->used, s->used + (uint32_t)blocks, __ATOMIC_RELAXED);
    __atomic_store_n(&s->bytes, s->bytes + add - sub, __ATOMIC_RELAXED);
}

/* The sizes a shard goes through: C, ceil(C/2), ceil(C/4), ... ; each at most twice the one
 * before, so the entries of any size but the last fit the scratch area of ceil(C/2) slots. */
static uint32_t mbt_size_after(uint32_t slots)
{
    uint32_t size = mbt_shard_max;
    while ((size + 1) / 2 > slots)
        size = (size + 1) / 2;
    return size;
}

static uint32_t mbt_first_size(void)
{
    uint32_t size = mbt_shard_max;
    while ((size + 1) / 2 >= MBT_SHARD_MIN_SLOTS)
        size = (size + 1) / 2;
    return size;
}

void mbt_blocks_setup(const struct mbt_regions *r)
{
    struct mbt_block *mem = r->blocks;
    size_t slots = r->block_slots;
    /* 64 * C + ceil(C/2) <= slots */
    size_t c = slots * 2 / (2 * MBT_SHARDS + 1);
    while (c && (size_t)MBT_SHARDS * c + (c + 1) / 2 > slots)
        c--;
    /* Shard tables start C slots apart. When that stride is a multiple of the cache's set period
     * the busy start of every table lands in the same cache sets and they evict each other; a
     * stride of 2 KiB plus whole 4 KiB pages spreads 64 starts over any period up to 128 KiB. */
    for (size_t down = 0; down < 4096 && c > down; down++) {
        if ((c - down) * sizeof(struct mbt_block) % 4096 == 2048) {
            c -= down;
            break;
        }
    }
    mbt_shard_max = c > UINT32_MAX / 2 ? UINT32_MAX / 2 : (uint32_t)c;
    mbt_grow_scratch = mem + (size_t)MBT_SHARDS * mbt_shard_max;
    mbt_grow_lock.v = 0;
    uint32_t first = mbt_first_size();
    for (unsigned i = 0; i < MBT_SHARDS; i++) {
        struct mbt_shard *s = &mbt_shards[i];
        s->lock.v = 0;
        s->slots = first;
        s->used = 0;
        s->limit = mbt_limit_of(first);
        s->bytes = 0;
        s->spilled = 0;
        s->tab = mbt_shard_max ? mem + (size_t)i * mbt_shard_max : NULL;
    }
    /* Regions hold at most a quarter of a shard of the smallest blocks, within 4 KiB .. 1 MiB. */
    mbt_dir.shift = 12;
    while (mbt_dir.shift < 20 && ((size_t)2 << mbt_dir.shift) / 16 <= mbt_full_limit(mbt_shard_max) / 4)
        mbt_dir.shift++;
    mbt_dir.slots = r->region_dir;
    mbt_dir.mask = r->region_dir_slots ? r->region_dir_slots - 1 : 0;
    mbt_dir_max = r->region_dir_slots / 4 * 3;
    mbt_dir_used = 0;
    mbt_dir_lock.v = 0;
    mbt_next_home = 0;
    __atomic_add_fetch(&mbt_blocks_gen, 1, __ATOMIC_RELEASE); /* every thread picks a home again */
}

size_t mbt_blocks_capacity(void) { return (size_t)MBT_SHARDS * mbt_full_limit(mbt_shard_max); }

size_t mbt_blocks_dir_bytes(void) { return __atomic_load_n(&mbt_dir_used, __ATOMIC_RELAXED) * sizeof(uint64_t); }

static void mbt_place(struct mbt_block *tab, uint32_t slots, const struct mbt_block *b)
{
    uint32_t i = mbt_slot_of(slots, mbt_addr_hash(b->addr));
    while (tab[i].addr)
        i = mbt_next(slots, i);
    tab[i] = *b;
}

/* Caller holds the shard lock. 0 when the shard is at its final size. */
static int mbt_shard_grow(struct mbt_shard *s)
{
    uint32_t bigger = mbt_size_after(s->slots);
    if (bigger <= s->slots)
        return 0;
    mbt_lock_acquire(&mbt_grow_lock);
    uint32_t n = 0;
    for (uint32_t i = 0; i < s->slots; i++)
        if (s->tab[i].addr)
            mbt_grow_scratch[n++] = s->tab[i];
    memset(s->tab, 0, (size_t)s->slots * sizeof *s->tab); /* beyond it the area is still zero */
    for (uint32_t i = 0; i < n; i++)
        mbt_place(s->tab, bigger, &mbt_grow_scratch[i]);
    /* give the scratch pages back: growth is rare, resident memory is not */
    size_t page = 4096, lo = ((uintptr_t)mbt_grow_scratch + page - 1) & ~(page - 1);
    size_t hi = ((uintptr_t)(mbt_grow_scratch + n)) & ~(page - 1);
    if (hi > lo)
        madvise((void *)lo, hi - lo, MADV_DONTNEED);
    mbt_lock_release(&mbt_grow_lock);
    s->slots = bigger;
    s->limit = mbt_limit_of(bigger);
    return 1;
}

/* ---- which shard ---- */

/* A region's first slot in the directory: its number, so a heap's regions sit side by side in a
 * few cache lines (the directory spans 4 GiB of addresses at the default budget). */
static inline uint32_t mbt_dir_slot(uint64_t region) { return (uint32_t)region & mbt_dir.mask; }

/* The directory's shard for addr's region, or -1 when the region has none. */
static inline int mbt_dir_find(uintptr_t addr)
{
    if (!mbt_dir.slots)
        return -1;
    uint64_t region = (uint64_t)addr >> mbt_dir.shift, want = (region + 1) << 8;
    for (uint32_t i = mbt_dir_slot(region);; i = (i + 1) & mbt_dir.mask) {
        uint64_t e = __atomic_load_n(&mbt_dir.slots[i], __ATOMIC_ACQUIRE);
        if (!e)
            return -1;
        if ((e & ~(uint64_t)0xff) == want)
            return (int)(e & 0xff);
    }
}

static inline int mbt_shard_open(const struct mbt_shard *s)
{
    return __atomic_load_n(&s->used, __ATOMIC_RELAXED) < mbt_full_limit(mbt_shard_max) / 4;
}

/* The calling thread's home shard: the one it gives the regions it allocates in first; -1 when
 * every shard is a quarter full (then regions spread by their address). */
static int mbt_home(void)
{
    unsigned gen = __atomic_load_n(&mbt_blocks_gen, __ATOMIC_ACQUIRE);
    if (mbt_home_gen == gen && mbt_shard_open(&mbt_shards[mbt_home_shard]))
        return (int)mbt_home_shard;
    unsigned start = __atomic_fetch_add(&mbt_next_home, 1, __ATOMIC_RELAXED);
    for (unsigned k = 0; k < MBT_SHARDS; k++) {
        unsigned pick = (start + k) % MBT_SHARDS;
        if (mbt_shard_open(&mbt_shards[pick])) {
            mbt_home_shard = pick;
            mbt_home_gen = gen;
            return (int)pick;
        }
    }
    return -1;
}

/* Where blocks of a region go when its shard is full: the k-th of MBT_SPILLS other shards fixed
 * by the address (a chain, so that near capacity a block finds room where the budget has it). */
#define MBT_SPILLS 4
static inline unsigned mbt_spill_shard(unsigned n, uint64_t h, unsigned k)
{
    unsigned s = (unsigned)(mbt_hash_shard(h) + k * 17) % MBT_SHARDS;
    return s != n ? s : (n + 1 + k) % MBT_SHARDS;
}

/* A region seen for the first time: it goes to this thread's home shard (or, when the directory
 * is full, to the hash shard like every region without an entry). */
__attribute__((noinline)) static unsigned mbt_region_new(uintptr_t addr, uint64_t h)
{
    if (!mbt_dir.slots || __atomic_load_n(&mbt_dir_used, __ATOMIC_RELAXED) >= mbt_dir_max)
        return mbt_hash_shard(h);
    int home = mbt_home();
    mbt_lock_acquire(&mbt_dir_lock);
    uint64_t region = (uint64_t)addr >> mbt_dir.shift, want = (region + 1) << 8;
    uint32_t i = mbt_dir_slot(region);
    for (; mbt_dir.slots[i]; i = (i + 1) & mbt_dir.mask) {
        if ((mbt_dir.slots[i] & ~(uint64_t)0xff) == want) { /* another thread was first */
            mbt_lock_release(&mbt_dir_lock);
            return (unsigned)(mbt_dir.slots[i] & 0xff);
        }
    }
    unsigned shard = home >= 0 ? (unsigned)home : (unsigned)(mbt_addr_hash(region) >> 58);
    if (mbt_dir_used >= mbt_dir_max) {
        shard = mbt_hash_shard(h); /* full: as every region without an entry */
    } else {
        __atomic_store_n(&mbt_dir.slots[i], want | shard, __ATOMIC_RELEASE);
        __atomic_store_n(&mbt_dir_used, mbt_dir_used + 1, __ATOMIC_RELAXED);
    }
    mbt_lock_release(&mbt_dir_lock);
    return shard;
}

static inline unsigned mbt_shard_for_lookup(uintptr_t addr, uint64_t h)
{
    int found = mbt_dir_find(addr);
    return found >= 0 ? (unsigned)found : mbt_hash_shard(h);
}

/* The shard a block at addr goes to, for mbt_blocks_insert; starts loading the slot the insert
 * looks at first, so that miss overlaps with the caller's other work (the stack lookup). */
unsigned mbt_blocks_prepare(uintptr_t addr)
{
    uint64_t h = mbt_addr_hash(addr);
    int found = mbt_dir_find(addr);
    unsigned n = found >= 0 ? (unsigned)found : mbt_region_new(addr, h);
    const struct mbt_shard *s = &mbt_shards[n];
    if (s->tab)
        __builtin_prefetch(&s->tab[mbt_slot_of(s->slots, h)], 1);
    return n;
}

/* ---- one shard, under its lock ---- */

static inline __attribute__((always_inline)) int mbt_shard_remove(struct mbt_shard *s, uintptr_t addr, uint64_t h,
                                                                   struct mbt_block *out)
{
    uint32_t slots = s->slots, i = mbt_slot_of(slots, h);
    for (; s->tab[i].addr != addr; i = mbt_next(slots, i))
        if (!s->tab[i].addr)
            return 0;
    *out = s->tab[i];
    mbt_shard_count(s, -1, 0, out->size);
    /* Backward-shift delete: pull later entries of the probe run into the hole unless their home
     * lies cyclically in (hole, j]; no tombstones, so lookups stay short forever. */
    uint32_t j = i;
    for (;;) {
        j = mbt_next(slots, j);
        if (!s->tab[j].addr)
            break;
        uint32_t k = mbt_slot_of(slots, mbt_addr_hash(s->tab[j].addr));
        int stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (stays)
            continue;
        s->tab[i] = s->tab[j];
        i = j;
    }
    s->tab[i].addr = 0;
    return 1;
}

/* MBT_BLOCK_INSERTED / _REPLACED, or _FULL when the shard is full at its final size. */
static inline __attribute__((always_inline)) int mbt_shard_insert(struct mbt_shard *s, const struct mbt_block *b,
                                                                   uint64_t h)
{
    uint32_t i = mbt_slot_of(s->slots, h);
    for (; s->tab[i].addr; i = mbt_next(s->slots, i)) {
        if (s->tab[i].addr != b->addr)
            continue;
        /* The address came back without a free we saw (freed by code we do not hook, or
         * recorded twice through the API): the newest owner wins. */
        mbt_shard_count(s, 0, b->size, s->tab[i].size);
        s->tab[i] = *b;
        return MBT_BLOCK_REPLACED;
    }
    if (s->used >= s->limit) {
        if (!mbt_shard_grow(s))
            return MBT_BLOCK_FULL;
        for (i = mbt_slot_of(s->slots, h); s->tab[i].addr; i = mbt_next(s->slots, i))
            ;
    }
    s->tab[i] = *b;
    mbt_shard_count(s, 1, b->size, 0);
    return MBT_BLOCK_INSERTED;
}

/* ---- blocks ---- */

/* After the region's shard n: when it is full, the block goes to its hash shard; when it has
 * sent blocks there, a stale record of the same address there goes (one owner, the newest). */
__attribute__((noinline)) static int mbt_insert_spilled(unsigned n, const struct mbt_block *b, uint64_t h, int rc)
{
    struct mbt_block old;
    if (rc == MBT_BLOCK_FULL)
        __atomic_store_n(&mbt_shards[n].spilled, 1, __ATOMIC_RELAXED);
    int placed = rc != MBT_BLOCK_FULL;
    for (unsigned k = 0; k < MBT_SPILLS; k++) {
        struct mbt_shard *t = &mbt_shards[mbt_spill_shard(n, h, k)];
        mbt_lock_acquire(&t->lock);
        if (!placed) {
            rc = mbt_shard_insert(t, b, h);
            placed = rc != MBT_BLOCK_FULL;
        } else if (mbt_shard_remove(t, b->addr, h, &old)) {
            rc = MBT_BLOCK_REPLACED;
        }
        mbt_lock_release(&t->lock);
    }
    return rc;
}

int mbt_blocks_insert(unsigned n, const struct mbt_block *b)
{
    uint64_t h = mbt_addr_hash(b->addr);
    struct mbt_shard *s = &mbt_shards[n];
    if (!s->tab)
        return MBT_BLOCK_FULL;
    mbt_lock_acquire(&s->lock);
    int rc = mbt_shard_insert(s, b, h), spilled = s->spilled;
    mbt_lock_release(&s->lock);
    if (__builtin_expect(rc != MBT_BLOCK_FULL && !spilled, 1))
        return rc;
    return mbt_insert_spilled(n, b, h, rc);
}

int mbt_blocks_remove(uintptr_t addr, struct mbt_block *out)
{
    uint64_t h = mbt_addr_hash(addr);
    unsigned n = mbt_shard_for_lookup(addr, h);
    struct mbt_shard *s = &mbt_shards[n];
    if (!s->tab)
        return 0;
    mbt_lock_acquire(&s->lock);
    int found = mbt_shard_remove(s, addr, h, out), spilled = s->spilled;
    mbt_lock_release(&s->lock);
    for (unsigned k = 0; !found && spilled && k < MBT_SPILLS; k++) {
        struct mbt_shard *t = &mbt_shards[mbt_spill_shard(n, h, k)];
        mbt_lock_acquire(&t->lock);
        found = mbt_shard_remove(t, addr, h, out);
        mbt_lock_release(&t->lock);
    }
    return found;
}

/* The dump's scan, one shard at a time so allocating threads wait at most one shard's scan:
 * live and old blocks and bytes per stack, and the totals. Blocks of stacks interned after the
 * caller counted the stacks (id >= nstacks) are in the totals only. */
void mbt_blocks_scan(struct mbt_age_scan *per_stack, uint32_t nstacks, uint32_t now_tick,
                     uint32_t leak_age_ms, struct mbt_scan_totals *tot)
{
    memset(tot, 0, sizeof *tot);
    for (unsigned n = 0; n < MBT_SHARDS; n++) {
        struct mbt_shard *s = &mbt_shards[n];
        if (!s->tab)
            continue;
        mbt_lock_acquire(&s->lock);
        tot->live_blocks += s->used;
        tot->live_bytes += s->bytes;
        for (uint32_t i = 0; i < s->slots; i++) {
            const struct mbt_block *b = &s->tab[i];
            if (!b->addr)
                continue;
            /* ticks count up from the start and last > 400 days; a block recorded after
             * now_tick was read is simply new */
            uint32_t age = b->tick > now_tick ? 0 : now_tick - b->tick;
            int old = (uint64_t)age * MBT_TICK_MS >= leak_age_ms;
            if (old) {
                tot->old_blocks++;
                tot->old_bytes += b->size;
            }
            if (b->stack_id >= nstacks)
                continue;
            struct mbt_age_scan *a = &per_stack[b->stack_id];
            a->live_blocks++;
            a->live_bytes += b->size;
            if (old) {
                a->old_blocks++;
                a->old_bytes += b->size;
            }
            if (age > a->oldest_age)
                a->oldest_age = age;
        }
        mbt_lock_release(&s->lock);
    }
}

void mbt_blocks_totals(uint64_t *blocks, uint64_t *bytes)
{
    uint64_t n = 0, b = 0;
    for (unsigned i = 0; i < MBT_SHARDS; i++) {
        n += __atomic_load_n(&mbt_shards[i].used, __ATOMIC_RELAXED);
        b += __atomic_load_n(&mbt_shards[i].bytes, __ATOMIC_RELAXED);
    }
    *blocks = n;
    *bytes = b;
}

void mbt_blocks_lock_all(void)
{
    mbt_lock_acquire(&mbt_dir_lock);
    for (unsigned i = 0; i < MBT_SHARDS; i++)
        mbt_lock_acquire(&mbt_shards[i].lock);
}

void mbt_blocks_unlock_all(void)
{
    for (unsigned i = MBT_SHARDS; i-- > 0;)
        mbt_lock_release(&mbt_shards[i].lock);
    mbt_lock_release(&mbt_dir_lock);
}
