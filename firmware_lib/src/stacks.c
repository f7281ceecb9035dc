/* Call stacks interned once and referred to by id. Lookups of known stacks take no lock (ids are
 * published with release order after the record is complete); new stacks are rare and inserted
 * under one lock. Id 0 is the overflow stack for captures that found no room. */
#include "mbt_internal.h"

#include <string.h>
#include <sys/prctl.h>

static struct mbt_stack *mbt_stacks;
static uint32_t mbt_stack_cap;
static uint32_t *mbt_index;
static uint32_t mbt_index_mask;
static uintptr_t *mbt_frames;
static size_t mbt_frame_cap;
static size_t mbt_frames_used;
static uint32_t mbt_published; /* ids 1..mbt_published are complete */
static mbt_lock mbt_insert_lock;

void mbt_stacks_setup(const struct mbt_regions *r)
{
    mbt_stacks = r->stacks;
    mbt_stack_cap = r->stack_cap;
    mbt_index = r->stack_index;
    mbt_index_mask = r->index_cap - 1;
    mbt_frames = r->frames;
    mbt_frame_cap = r->frame_cap;
    mbt_frames_used = 0;
    mbt_insert_lock.v = 0;
    __atomic_store_n(&mbt_published, 0, __ATOMIC_RELEASE);
}

/* Two rotate-xor lanes and one mix at the end: a multiply per frame in one chain cost ~30 ns at
 * depth 16, on every allocation of the fp and unwind backends. Equal hashes are compared frame
 * by frame, so a weaker hash costs nothing but a rare extra compare. */
static uint32_t mbt_frames_hash(const uintptr_t *f, unsigned n, int truncated)
{
    uint64_t a = 0xcbf29ce484222325ull ^ ((uint64_t)n << 1 | (uint64_t)(truncated != 0)), b = 0;
    unsigned i = 0;
    for (; i + 1 < n; i += 2) {
        a = (a << 13 | a >> 51) ^ (uint64_t)f[i];
        b = (b << 17 | b >> 47) ^ (uint64_t)f[i + 1];
    }
    if (i < n)
        a = (a << 13 | a >> 51) ^ (uint64_t)f[i];
    uint64_t h = (a ^ (b << 7 | b >> 57)) * 0xff51afd7ed558ccdull;
    h ^= h >> 32;
    h *= 0xc4ceb9fe1a85ec53ull;
    return (uint32_t)(h >> 32);
}

static int mbt_same(const struct mbt_stack *s, uint32_t h, const uintptr_t *f, unsigned n, int truncated)
{
    if (s->hash != h || s->nframes != n || s->truncated != (truncated != 0))
        return 0;
    const uintptr_t *g = mbt_frames + s->frame_off;
    uintptr_t diff = 0;
    for (unsigned i = 0; i < n; i++)
        diff |= g[i] ^ f[i];
    return diff == 0;
}

/* Probe the index; returns the id found, or 0 with *slot at the empty slot that ends the run. */
static uint32_t mbt_probe(uint32_t h, const uintptr_t *f, unsigned n, int truncated, uint32_t *slot)
{
    for (uint32_t i = h & mbt_index_mask;; i = (i + 1) & mbt_index_mask) {
        uint32_t id = __atomic_load_n(&mbt_index[i], __ATOMIC_ACQUIRE);
        if (!id) {
            *slot = i;
            return 0;
        }
        if (mbt_same(&mbt_stacks[id], h, f, n, truncated))
            return id;
    }
}

uint32_t mbt_stacks_intern(const uintptr_t *frames, unsigned n, int truncated)
{
    if (!mbt_stacks)
        return 0;
    uint32_t h = mbt_frames_hash(frames, n, truncated), slot, id;
    if ((id = mbt_probe(h, frames, n, truncated, &slot)) != 0)
        return id;

    mbt_lock_acquire(&mbt_insert_lock);
    /* another thread may have inserted the same stack since the lock-free probe */
    if ((id = mbt_probe(h, frames, n, truncated, &slot)) != 0) {
        mbt_lock_release(&mbt_insert_lock);
        return id;
    }
    uint32_t next = mbt_published + 1;
    if (next > mbt_stack_cap || mbt_frames_used + n > mbt_frame_cap) {
        mbt_lock_release(&mbt_insert_lock);
        mbt_count_add(mbt_counters.dropped_stacks, 1);
        return 0;
    }
    struct mbt_stack *s = &mbt_stacks[next];
    s->hash = h;
    s->frame_off = (uint32_t)mbt_frames_used;
    s->nframes = (uint16_t)n;
    s->truncated = truncated != 0;
    memcpy(mbt_frames + mbt_frames_used, frames, n * sizeof *frames);
    __atomic_store_n(&mbt_frames_used, mbt_frames_used + n, __ATOMIC_RELAXED); /* read by stats */
    /* the first allocating thread names the stack (prctl does not allocate) */
    memset(s->thread, 0, sizeof s->thread);
    prctl(PR_GET_NAME, (unsigned long)s->thread, 0, 0, 0);
    s->thread[sizeof s->thread - 1] = 0;
    __atomic_store_n(&mbt_published, next, __ATOMIC_RELEASE);
    __atomic_store_n(&mbt_index[slot], next, __ATOMIC_RELEASE);
    mbt_lock_release(&mbt_insert_lock);
    return next;
}

struct mbt_stack *mbt_stack_get(uint32_t id)
{
    if (!mbt_stacks || id > mbt_stack_cap)
        return NULL;
    return &mbt_stacks[id];
}

const uintptr_t *mbt_stack_frames(const struct mbt_stack *s) { return mbt_frames + s->frame_off; }

uint32_t mbt_stacks_count(void) { return __atomic_load_n(&mbt_published, __ATOMIC_ACQUIRE); }

size_t mbt_stacks_frames_used(void) { return __atomic_load_n(&mbt_frames_used, __ATOMIC_RELAXED); }

void mbt_stacks_lock(void) { mbt_lock_acquire(&mbt_insert_lock); }

void mbt_stacks_unlock(void) { mbt_lock_release(&mbt_insert_lock); }
