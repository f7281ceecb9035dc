/* The memory budget: one mmap (MAP_NORESERVE, pages are used only as tables fill) taken once and
 * carved into every table. Never the traced heap, never malloc.
 *
 * Split of a budget of B bytes at MEMBT_DEPTH d (also stated in membt.h):
 *   stack_cap   = largest power of two <= B / 1024, within 64 .. 1048576   (64 MiB -> 65536)
 *   stack index = 2 * stack_cap ids of 4 bytes (load <= 1/2 keeps lock-free lookups short)
 *   frame pool  = stack_cap * d frames, at most B / 4 bytes                   (64 MiB -> 8 MiB)
 *   per stack   = one record + one scan slot (60 B on 64-bit, 48 B on 32-bit), stack_cap + 1
 *   regions     = directory of address regions -> shard, 8 B each, power of two <= B/128
 *                 (64 MiB -> 65536 slots, filled to 3/4)
 *   threads     = per-thread records with their capture caches (84 KiB each at depth 16), as many
 *                 as fit in B/16, at most 64 (64 MiB -> 54); threads beyond them go uncached
 *   blocks      = the rest: slots of 24 B (16 B on 32-bit) in 64 shards that grow as needed, each
 *                 filled to at most 7/8, plus growth scratch of 1/128 of the slots, so block_cap is
 *                 ~7/8 of the slots and a live block costs 27.4 B (18.3 B on 32-bit)
 *   64 MiB on 64-bit: 65536 stacks, 1048576 frames, 1,792,000 live blocks.
 * budget_used counts the fixed part (index, scan slots) plus the records in use now: live block
 * entries, interned stacks and their frames, records of running threads. */
#include "mbt_internal.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#define MBT_ALIGN 64u

struct mbt_regions mbt_regions;

static size_t mbt_round_up(size_t n) { return (n + MBT_ALIGN - 1) & ~(size_t)(MBT_ALIGN - 1); }

static uint32_t mbt_stack_cap_for(size_t bytes)
{
    size_t want = bytes / 1024;
    uint32_t cap = 64;
    while (cap < (1u << 20) && (size_t)cap * 2 <= want)
        cap *= 2;
    return cap;
}

int mbt_budget_reserve(size_t bytes, unsigned depth, struct mbt_regions *r, const char **why)
{
    memset(r, 0, sizeof *r);
    uint32_t stack_cap = mbt_stack_cap_for(bytes);
    uint32_t index_cap = stack_cap * 2;
    size_t frame_cap = (size_t)stack_cap * depth;
    if (frame_cap * sizeof(uintptr_t) > bytes / 4)
        frame_cap = bytes / 4 / sizeof(uintptr_t);

    size_t off_stacks = 0;
    size_t off_scan = off_stacks + mbt_round_up(((size_t)stack_cap + 1) * sizeof(struct mbt_stack));
    size_t off_index = off_scan + mbt_round_up(((size_t)stack_cap + 1) * sizeof(struct mbt_age_scan));
    size_t off_frames = off_index + mbt_round_up((size_t)index_cap * sizeof(uint32_t));
    size_t off_dir = off_frames + mbt_round_up(frame_cap * sizeof(uintptr_t));
    uint32_t dir_slots = 64;
    while ((size_t)dir_slots * 2 * sizeof(uint64_t) <= bytes / 128 && dir_slots < (1u << 30))
        dir_slots *= 2;
    size_t off_threads = off_dir + mbt_round_up((size_t)dir_slots * sizeof(uint64_t));
    size_t thread_bytes = mbt_threads_record_size(depth);
    size_t thread_slots = bytes / 16 / thread_bytes;
    if (thread_slots > mbt_threads_max())
        thread_slots = mbt_threads_max();
    size_t off_blocks = off_threads + mbt_round_up(thread_slots * thread_bytes);
    if (off_blocks >= bytes) {
        *why = "MEMBT_BUDGET too small for the stack tables";
        return -1;
    }
    size_t slots = (bytes - off_blocks) / sizeof(struct mbt_block);
    slots -= slots % MBT_SHARDS;
    if (slots < MBT_SHARDS * 8) {
        *why = "MEMBT_BUDGET too small for the block table";
        return -1;
    }

    void *base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
        *why = errno == ENOMEM ? "mmap of MEMBT_BUDGET failed: out of memory" : "mmap of MEMBT_BUDGET failed";
        return -1;
    }
    char *p = base;
    r->base = base;
    r->total = bytes;
    r->stacks = (struct mbt_stack *)(p + off_stacks);
    r->stack_cap = stack_cap;
    r->scan = (struct mbt_age_scan *)(p + off_scan);
    r->stack_index = (uint32_t *)(p + off_index);
    r->index_cap = index_cap;
    r->frames = (uintptr_t *)(p + off_frames);
    r->frame_cap = frame_cap;
    r->region_dir = (uint64_t *)(p + off_dir);
    r->region_dir_slots = dir_slots;
    r->threads = p + off_threads;
    r->thread_slots = (unsigned)thread_slots;
    r->thread_bytes = thread_bytes;
    r->blocks = (struct mbt_block *)(p + off_blocks);
    r->block_slots = slots;
    r->fixed_bytes = ((size_t)stack_cap + 1) * sizeof(struct mbt_age_scan) + (size_t)index_cap * sizeof(uint32_t);
    return 0;
}

/* Fresh zero pages for a restart; the mapping stays where it is. */
void mbt_budget_clear(struct mbt_regions *r)
{
    if (r->base)
        madvise(r->base, r->total, MADV_DONTNEED);
}

/* A hook of another thread may still be inside the tables while hooks are live: then the pages
 * are only given back, the address range stays mapped. */
void mbt_budget_release(struct mbt_regions *r, int may_unmap)
{
    if (!r->base)
        return;
    if (may_unmap)
        munmap(r->base, r->total);
    else
        madvise(r->base, r->total, MADV_DONTNEED);
    memset(r, 0, sizeof *r);
}

uint64_t mbt_budget_used(const struct mbt_regions *r)
{
    uint64_t blocks, bytes;
    mbt_blocks_totals(&blocks, &bytes);
    return r->fixed_bytes + blocks * sizeof(struct mbt_block) + mbt_threads_used_bytes() + mbt_blocks_dir_bytes() +
           ((uint64_t)mbt_stacks_count() + 1) * sizeof(struct mbt_stack) +
           (uint64_t)mbt_stacks_frames_used() * sizeof(uintptr_t);
}
