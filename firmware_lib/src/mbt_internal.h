/* Shared internal declarations of the membt recorder: the contract between its subsystems.
 * Data flows one way: hooks/API -> unwind -> stacks/blocks (tables carved from the budget)
 * -> dump (with modules) -> sink; the reporter decides when to dump. All names here are hidden. */
#ifndef MBT_INTERNAL_H
#define MBT_INTERNAL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

#pragma GCC visibility push(default)
#include "membt.h"
#pragma GCC visibility pop

#pragma GCC visibility push(hidden)

struct mbt_block;

#define MBT_EXPORT __attribute__((visibility("default")))

/* Where the program entered the recorder (a hook or an API call): that function's frame, for the
 * frame-pointer walk, its return address, the program's first frame - every frame captured
 * before it is the recorder's own - and its CFA (the stack pointer in the caller once it returns),
 * the key of the capture cache. Taken in the entry function itself, which must not end in a tail
 * call (the frame would be gone). */
struct mbt_site {
    void *frame;
    void *caller;
    void *cfa;
};
#define MBT_SITE()                                                                                 \
    ((struct mbt_site){__builtin_frame_address(0), __builtin_return_address(0), __builtin_dwarf_cfa()})

#define MBT_TOP_MAX 1000
/* Recorder frames before the program's first frame at capture time (hook, helpers, unwinder). */
#define MBT_OWN_FRAMES_MAX 12
#define MBT_CAPTURE_MAX (MEMBT_MAX_DEPTH + MBT_OWN_FRAMES_MAX + 1)
#define MBT_SHARDS 64
#define MBT_THREAD_NAME 16
#define MBT_TICK_MS 10u

/* ---- tiny spin lock: never allocates, can be taken/reset across fork ---- */
typedef struct { unsigned v; } mbt_lock;
void mbt_lock_slow(mbt_lock *l);
static inline void mbt_lock_acquire(mbt_lock *l)
{
    if (__atomic_exchange_n(&l->v, 1u, __ATOMIC_ACQUIRE) != 0)
        mbt_lock_slow(l);
}
static inline int mbt_lock_try(mbt_lock *l)
{
    return __atomic_exchange_n(&l->v, 1u, __ATOMIC_ACQUIRE) == 0;
}
static inline void mbt_lock_release(mbt_lock *l) { __atomic_store_n(&l->v, 0u, __ATOMIC_RELEASE); }
/* Wait at most timeout_ms for the lock; 0 when it could not be taken. */
int mbt_lock_wait(mbt_lock *l, unsigned timeout_ms);

/* Cumulative counters are native words: 64-bit atomics need libatomic on some 32-bit targets. */
typedef unsigned long mbt_counter;
#define mbt_count_add(c, n) ((void)__atomic_fetch_add(&(c), (n), __ATOMIC_RELAXED))
#define mbt_load(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

/* ---- text.c: formatting into fixed buffers, one-line messages ---- */
struct mbt_buf {
    char *p;
    size_t len, cap;
    int overflow; /* something did not fit */
};
void mbt_buf_init(struct mbt_buf *b, char *mem, size_t cap);
void mbt_buf_char(struct mbt_buf *b, char c);
void mbt_buf_mem(struct mbt_buf *b, const char *s, size_t n);
void mbt_buf_str(struct mbt_buf *b, const char *s);
void mbt_buf_u64(struct mbt_buf *b, uint64_t v);
void mbt_buf_hex(struct mbt_buf *b, uint64_t v);
/* ms as seconds with one decimal ("2.5") / up to three decimals, trailing zeros cut ("0.25") */
void mbt_buf_secs(struct mbt_buf *b, uint64_t ms);
void mbt_buf_secs_exact(struct mbt_buf *b, uint64_t ms);
void mbt_buf_bytes(struct mbt_buf *b, uint64_t bytes); /* 65536 -> "64K" when exact */
/* protocol.md escaping: bytes outside 0x21..0x7e and '%' as %XX; empty -> "-", "-" -> "%2D" */
void mbt_buf_escaped(struct mbt_buf *b, const char *s, size_t max_in);
/* write "membt: <text>\n" to stderr in one write() */
void mbt_say(const char *text);
void mbt_say_buf(struct mbt_buf *b);
/* the recorder's one line before it stops: "membt: disabled: <why>" */
void mbt_say_disabled(const char *why, const char *detail);

/* ---- options.c: MEMBT_* environment through one descriptor table ---- */
struct mbt_settings {
    membt_config cfg;
    int fork_follow;  /* MEMBT_FORK: 1 = keep recording in a forked child, 0 = child disables */
    int disable;      /* MEMBT_DISABLE */
    int quiet;        /* MEMBT_QUIET */
    int dump_at_exit; /* MEMBT_DUMP_AT_EXIT */
    int unwind_verify; /* MEMBT_UNWIND_VERIFY: check every cache hit against a fresh capture */
};
void mbt_options_defaults(struct mbt_settings *s);
void mbt_options_from_env(struct mbt_settings *s); /* one warning line per bad value */
int mbt_signal_from_text(const char *text);        /* -1 when not a usable signal */
const char *mbt_signal_name(int sig);              /* "USR2" or NULL */
/* The process-wide switches (fork, disable, quiet, dump-at-exit), read once from the environment. */
extern struct mbt_settings mbt_env;
void mbt_env_load_once(void);

/* ---- recorder.c: state, counters, clocks, the per-thread guard ---- */
enum { MBT_OFF = 0, MBT_ON = 1, MBT_FAILED = 2 };
extern int mbt_state;
/* Nonzero while this thread runs recorder code: hooks then pass straight through to libc. */
extern __thread int mbt_in_recorder __attribute__((tls_model("initial-exec")));
/* Set by hooks.c when its malloc is the one the process uses (preloaded or linked in). */
extern int mbt_hooks_interposed;

/* Counters a dump reports. Those counted on every allocation (truncated captures, cache hits)
 * are kept per thread in struct mbt_thread and only fall back to these when a thread has none. */
struct mbt_counters {
    mbt_counter dropped_blocks, dropped_stacks, truncated_stacks, unknown_frees, dumps;
    mbt_counter cache_hits, cache_misses, verified, mismatches;
};
extern struct mbt_counters mbt_counters;
/* The settings the recorder runs with; dump-related fields change under the dump lock. */
extern struct mbt_settings mbt_run;

/* a macro, so it takes the sanitizer attributes of the hook it is used in */
#define mbt_recording() (__atomic_load_n(&mbt_state, __ATOMIC_ACQUIRE) == MBT_ON)
uint64_t mbt_now_ms(void);   /* CLOCK_MONOTONIC since the recorder first started */
uint32_t mbt_tick_now(void); /* 10 ms units, coarse monotonic clock, lasts > 400 days */

int mbt_on_alloc(void *p, size_t size, const struct mbt_site *site); /* 0 tracked, -1 not */
/* Forget p; 1 when it was tracked (its entry in *old), 0 when unknown (counted). */
int mbt_on_free(void *p, struct mbt_block *old);
void mbt_on_restore(const struct mbt_block *old); /* a failed realloc keeps its block */
void mbt_autostart(void);                         /* constructor path: env config, banner */
void mbt_ctl_lock(void);
void mbt_ctl_unlock(void);
void mbt_ctl_reset_child(void);

/* ---- budget.c: one mmap carved into the tables ---- */
struct mbt_block {
    uintptr_t addr; /* 0 = empty slot */
    size_t size;
    uint32_t stack_id;
    uint32_t tick;
};

struct mbt_stack {
    uint32_t hash;
    uint32_t frame_off; /* index of the first frame in the frame pool */
    uint16_t nframes;
    uint8_t truncated;
    char thread[MBT_THREAD_NAME];
};

/* Per-stack result of the scan the dump runs over the block shards. */
struct mbt_age_scan {
    uint32_t live_blocks, old_blocks;
    uint32_t oldest_age; /* ticks */
    size_t live_bytes, old_bytes;
};

struct mbt_regions {
    void *base;
    size_t total;
    struct mbt_block *blocks;
    size_t block_slots;
    struct mbt_stack *stacks; /* stack_cap + 1 entries: id 0 is the overflow stack */
    uint32_t stack_cap;
    uint32_t *stack_index;
    uint32_t index_cap; /* power of two, >= 2 * stack_cap */
    uintptr_t *frames;
    size_t frame_cap;
    struct mbt_age_scan *scan; /* stack_cap + 1 entries */
    uint64_t *region_dir; /* address region -> shard (blocks.c) */
    uint32_t region_dir_slots; /* power of two */
    void *threads;             /* per-thread records with their capture caches */
    unsigned thread_slots;
    size_t thread_bytes; /* one record */
    size_t fixed_bytes;  /* index + scan scratch + shard headers: in use from the start */
};
int mbt_budget_reserve(size_t bytes, unsigned depth, struct mbt_regions *r, const char **why);
void mbt_budget_release(struct mbt_regions *r, int may_unmap);
void mbt_budget_clear(struct mbt_regions *r);
uint64_t mbt_budget_used(const struct mbt_regions *r);
extern struct mbt_regions mbt_regions;

/* ---- blocks.c: live blocks keyed by address, sharded open addressing ---- */
enum { MBT_BLOCK_FULL = 0, MBT_BLOCK_INSERTED = 1, MBT_BLOCK_REPLACED = 2 };
void mbt_blocks_setup(const struct mbt_regions *r);
unsigned mbt_blocks_prepare(uintptr_t addr); /* the shard for addr's insert */
int mbt_blocks_insert(unsigned shard, const struct mbt_block *b);
int mbt_blocks_remove(uintptr_t addr, struct mbt_block *out);
struct mbt_scan_totals {
    uint64_t live_blocks, live_bytes, old_blocks, old_bytes;
};
void mbt_blocks_scan(struct mbt_age_scan *per_stack, uint32_t nstacks, uint32_t now_tick,
                     uint32_t leak_age_ms, struct mbt_scan_totals *tot);
void mbt_blocks_totals(uint64_t *blocks, uint64_t *bytes);
size_t mbt_blocks_capacity(void);
size_t mbt_blocks_dir_bytes(void); /* region directory entries in use */
void mbt_blocks_lock_all(void);
void mbt_blocks_unlock_all(void);

/* ---- stacks.c: call stacks interned once, referenced by id ---- */
void mbt_stacks_setup(const struct mbt_regions *r);
uint32_t mbt_stacks_intern(const uintptr_t *frames, unsigned n, int truncated);
struct mbt_stack *mbt_stack_get(uint32_t id); /* id 0..stack_cap; NULL when out of range */
const uintptr_t *mbt_stack_frames(const struct mbt_stack *s);
uint32_t mbt_stacks_count(void); /* interned so far, the overflow stack not counted */
size_t mbt_stacks_frames_used(void);
void mbt_stacks_lock(void);
void mbt_stacks_unlock(void);

/* ---- unwind.c: raw return addresses, recorder frames removed ---- */
int mbt_unwind_select(const char *name, const char **why);
const char *mbt_unwind_name(void);
int mbt_unwind_cached(void); /* the selected backend is "cached": captures go through the cache */
void mbt_unwind_init(void);  /* the recorder's own code range (fallback), unwinder warm-up */
unsigned mbt_unwind_capture(uintptr_t *out, unsigned depth, const struct mbt_site *site, int *truncated);

/* What the capture cache learns from one libgcc capture: where, as offsets from the site's CFA,
 * the stack holds each return address after the first, how the capture ended, and where the
 * frame pointers were saved that placed frames living on their frame pointer (unwind.c). */
enum { MBT_END_NONE = 0, MBT_END_ZERO = 1, MBT_END_MORE = 2 }; /* the terminal slot: -, == 0, != 0 */
#define MBT_LEARN_SLOTS (2 * MEMBT_MAX_DEPTH + 1)
struct mbt_learned {
    int32_t off[MBT_LEARN_SLOTS]; /* slots of frames 1.., the terminal slot, then frame pointers */
    unsigned nslots;              /* all of them: frames - 1 (+ 1 terminal) + pinned frame pointers */
    unsigned end;                 /* MBT_END_*: what the terminal slot (index frames - 1) must hold */
};
/* A capture like mbt_unwind_capture through libgcc; *learned gets the slots when the capture is
 * one the cache may keep (return 0 from learn_ok otherwise). */
unsigned mbt_unwind_capture_learn(uintptr_t *out, unsigned depth, const struct mbt_site *site, int *truncated,
                                  struct mbt_learned *learned, int *learn_ok);

/* ---- threads.c: per-thread records (counters, capture cache), stack ids for captures ---- */
size_t mbt_threads_record_size(unsigned depth); /* one record with its cache, for budget.c */
unsigned mbt_threads_max(void);
void mbt_threads_setup(const struct mbt_regions *r, unsigned depth);
/* The interned stack of the program's call at site: the capture cache or a fresh capture. */
uint32_t mbt_threads_stack_id(unsigned depth, const struct mbt_site *site);
struct mbt_thread_totals {
    uint64_t truncated, hits, misses, verified, mismatches;
};
void mbt_threads_totals(struct mbt_thread_totals *t); /* the per-thread counters summed */
uint64_t mbt_threads_used_bytes(void);
void mbt_threads_after_fork(void); /* child: only the forking thread keeps its record */
void mbt_threads_forget(void);     /* code or a stack may have been unmapped: learn anew */
void mbt_threads_unload(void);     /* library unloading: no thread-exit callback into it */

/* ---- modules.c: loaded objects that frames fall into ---- */
struct mbt_module {
    uintptr_t bias, lo, hi;
    char build_id[65];
    const char *path; /* in the caller's arena; "" when unknown */
};
typedef int (*mbt_module_wanted_fn)(uintptr_t lo, uintptr_t hi, void *arg);
unsigned mbt_modules_collect(mbt_module_wanted_fn wanted, void *arg, struct mbt_module *out,
                             unsigned max, char *arena, size_t arena_size);
int mbt_exe_path(char *out, size_t size);

/* ---- dump.c: one dump, wire or text ---- */
long mbt_dump_run(const char *reason); /* caller holds the dump lock */
void mbt_dump_reset_numbering(void);

/* ---- sink.c: where dumps go ---- */
const char *mbt_sink_check(const char *spec); /* NULL when the syntax is fine, else why */
int mbt_sink_open(const char *spec);          /* 0, or -1 when the syntax is bad */
long mbt_sink_write(const char *buf, size_t n);
void mbt_sink_close(void);
void mbt_sink_child(void); /* after fork: a TCP connection belongs to the parent */

/* ---- reporter.c: the thread, signal, dump lock, fork ---- */
extern mbt_lock mbt_dump_lock;
long mbt_dump_now(const char *reason, unsigned wait_ms); /* -1 when it could not dump */
int mbt_reporter_start(const char **why);
void mbt_reporter_stop(int wait_ms); /* < 0: join however long it takes */
void mbt_reporter_poke(void); /* dump settings changed: recompute the timer */
int mbt_reporter_running(void);
int mbt_signal_install(int sig, const char **why);
void mbt_signal_restore(void);
void mbt_fork_handlers_register(void);

#pragma GCC visibility pop
#endif /* MBT_INTERNAL_H */
