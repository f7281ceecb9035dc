/* Live blocks keyed by address: 64 shards, each an open-addressing table with linear probing and
 * backward-shift delete under its own tiny lock, so threads rarely meet on one lock. A shard is
 * filled to at most 4/5; beyond that an allocation is not tracked and the caller counts it. */
#include "mbt_internal.h"

#include <string.h>

struct mbt_shard {
    mbt_lock lock;
    uint32_t slots;
    uint32_t used;
    uint32_t limit;
    size_t bytes;
    struct mbt_block *tab;
} __attribute__((aligned(64))); /* one cache line each: no false sharing between shards */

static struct mbt_shard mbt_shards[MBT_SHARDS];

/* Multiplicative hash; only its high bits are good (allocator addresses share low bits). */
static inline uint64_t mbt_addr_hash(uintptr_t addr) { return (uint64_t)addr * 0x9E3779B97F4A7C15ull; }
static inline struct mbt_shard *mbt_shard_of(uint64_t h) { return &mbt_shards[h >> 58]; }
static inline uint32_t mbt_home(const struct mbt_shard *s, uint64_t h)
{
    return (uint32_t)(((h >> 26) & 0xffffffffu) * s->slots >> 32);
}
static inline uint32_t mbt_next(const struct mbt_shard *s, uint32_t i) { return i + 1 == s->slots ? 0 : i + 1; }

/* used/bytes change under the shard lock and are read without it by stats: atomic stores */
static inline void mbt_shard_count(struct mbt_shard *s, int blocks, size_t add, size_t sub)
{
    __atomic_store_n(&s->used, s->used + (uint32_t)blocks, __ATOMIC_RELAXED);
    __atomic_store_n(&s->bytes, s->bytes + add - sub, __ATOMIC_RELAXED);
}

void mbt_blocks_setup(struct mbt_block *mem, size_t slots)
{
    uint32_t per = (uint32_t)(slots / MBT_SHARDS);
    for (unsigned i = 0; i < MBT_SHARDS; i++) {
        struct mbt_shard *s = &mbt_shards[i];
        s->lock.v = 0;
        s->slots = per;
        s->used = 0;
        s->limit = per / 5 * 4 + per % 5 * 4 / 5;
        s->bytes = 0;
        s->tab = mem + (size_t)i * per;
    }
}

size_t mbt_blocks_capacity(void)
{
    size_t cap = 0;
    for (unsigned i = 0; i < MBT_SHARDS; i++)
        cap += mbt_shards[i].limit;
    return cap;
}

int mbt_blocks_insert(const struct mbt_block *b)
{
    uint64_t h = mbt_addr_hash(b->addr);
    struct mbt_shard *s = mbt_shard_of(h);
    if (!s->tab)
        return MBT_BLOCK_FULL;
    mbt_lock_acquire(&s->lock);
    uint32_t i = mbt_home(s, h);
    for (; s->tab[i].addr; i = mbt_next(s, i)) {
        if (s->tab[i].addr != b->addr)
            continue;
        /* The address came back without a free we saw (freed by code we do not hook, or
         * recorded twice through the API): the newest owner wins. */
        struct mbt_block *old = &s->tab[i];
        mbt_stacks_account(mbt_stack_get(old->stack_id), old->size, 0);
        mbt_shard_count(s, 0, b->size, old->size);
        *old = *b;
        mbt_stacks_account(mbt_stack_get(b->stack_id), b->size, 1);
        mbt_lock_release(&s->lock);
        return MBT_BLOCK_REPLACED;
    }
    if (s->used >= s->limit) {
        mbt_lock_release(&s->lock);
        return MBT_BLOCK_FULL;
    }
    s->tab[i] = *b;
    mbt_shard_count(s, 1, b->size, 0);
    /* under the shard lock, so a free of the same address cannot run the counters below zero */
    mbt_stacks_account(mbt_stack_get(b->stack_id), b->size, 1);
    mbt_lock_release(&s->lock);
    return MBT_BLOCK_INSERTED;
}

int mbt_blocks_remove(uintptr_t addr, struct mbt_block *out)
{
    uint64_t h = mbt_addr_hash(addr);
    struct mbt_shard *s = mbt_shard_of(h);
    if (!s->tab)
        return 0;
    mbt_lock_acquire(&s->lock);
    uint32_t i = mbt_home(s, h);
    for (; s->tab[i].addr != addr; i = mbt_next(s, i)) {
        if (!s->tab[i].addr) {
            mbt_lock_release(&s->lock);
            return 0;
        }
    }
    *out = s->tab[i];
    mbt_stacks_account(mbt_stack_get(out->stack_id), out->size, 0);
    mbt_shard_count(s, -1, 0, out->size);
    /* Backward-shift delete: pull later entries of the probe run into the hole unless their home
     * lies cyclically in (hole, j]; no tombstones, so lookups stay short forever. */
    uint32_t j = i;
    for (;;) {
        j = mbt_next(s, j);
        if (!s->tab[j].addr)
            break;
        uint32_t k = mbt_home(s, mbt_addr_hash(s->tab[j].addr));
        int stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (stays)
            continue;
        s->tab[i] = s->tab[j];
        i = j;
    }
    s->tab[i].addr = 0;
    mbt_lock_release(&s->lock);
    return 1;
}

/* The dump's age scan, one shard at a time so allocating threads wait at most one shard's scan.
 * This is the O(blocks) part of a dump; live counts per stack come from the stack counters. */
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
            struct mbt_age_scan *a = &per_stack[b->stack_id < nstacks ? b->stack_id : 0];
            /* ticks count up from the start and last > 400 days; a block recorded after
             * now_tick was read is simply new */
            uint32_t age = b->tick > now_tick ? 0 : now_tick - b->tick;
            if ((uint64_t)age * MBT_TICK_MS >= leak_age_ms) {
                a->old_blocks++;
                a->old_bytes += b->size;
                tot->old_blocks++;
                tot->old_bytes += b->size;
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
    for (unsigned i = 0; i < MBT_SHARDS; i++)
        mbt_lock_acquire(&mbt_shards[i].lock);
}

void mbt_blocks_unlock_all(void)
{
    for (unsigned i = MBT_SHARDS; i-- > 0;)
        mbt_lock_release(&mbt_shards[i].lock);
}
