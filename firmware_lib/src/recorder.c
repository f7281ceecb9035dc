/* The recorder's life cycle and public API (membt_* and the seed's init_bt/record_bt/unrecord_bt):
 * start from a config, record and forget blocks, dump, stats, shutdown. Once started it never
 * aborts the program: on failure it disables itself and prints one line saying why. */
#include "mbt_internal.h"

#include <sched.h>
#include <signal.h>
#include <string.h>
#include <time.h>

int mbt_state;
__thread int mbt_in_recorder __attribute__((tls_model("initial-exec")));
int mbt_hooks_interposed;
struct mbt_counters mbt_counters;
struct mbt_settings mbt_run;

static pthread_mutex_t mbt_ctl = PTHREAD_MUTEX_INITIALIZER;
static int mbt_clock_started;
static uint64_t mbt_start_ms, mbt_start_coarse_ms;
static unsigned mbt_regions_depth; /* the depth the frame pool was sized for */

/* ---- locks and clocks ---- */

void mbt_lock_slow(mbt_lock *l)
{
    for (unsigned spins = 0;; spins++) {
        if (!__atomic_load_n(&l->v, __ATOMIC_RELAXED) && mbt_lock_try(l))
            return;
        if (spins < 64) /* the critical sections are a few hundred instructions */
            continue;
        if (spins < 128) {
            sched_yield();
        } else {
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL);
        }
    }
}

static uint64_t mbt_clock_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

#ifdef CLOCK_MONOTONIC_COARSE
#define MBT_COARSE_CLOCK CLOCK_MONOTONIC_COARSE /* vDSO, no syscall: fine for 10 ms ticks */
#else
#define MBT_COARSE_CLOCK CLOCK_MONOTONIC
#endif

uint64_t mbt_now_ms(void) { return mbt_clock_ms(CLOCK_MONOTONIC) - mbt_start_ms; }

uint32_t mbt_tick_now(void)
{
    return (uint32_t)((mbt_clock_ms(MBT_COARSE_CLOCK) - mbt_start_coarse_ms) / MBT_TICK_MS);
}

int mbt_lock_wait(mbt_lock *l, unsigned timeout_ms)
{
    uint64_t deadline = mbt_now_ms() + timeout_ms;
    for (;;) {
        if (mbt_lock_try(l))
            return 1;
        if (mbt_now_ms() >= deadline)
            return 0;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

void mbt_ctl_lock(void) { pthread_mutex_lock(&mbt_ctl); }
void mbt_ctl_unlock(void) { pthread_mutex_unlock(&mbt_ctl); }
void mbt_ctl_reset_child(void) { pthread_mutex_init(&mbt_ctl, NULL); }

/* ---- the hot path ---- */

/* Returns 0 when the block is tracked, -1 when not (not recording, or the table is full). */
__attribute__((noinline)) int mbt_on_alloc(void *p, size_t size, const struct mbt_site *site)
{
    if (!mbt_recording())
        return -1;
    unsigned shard = mbt_blocks_prepare((uintptr_t)p); /* its cache miss overlaps the stack lookup */
    struct mbt_block b = {(uintptr_t)p, size, mbt_threads_stack_id(mbt_run.cfg.depth, site), mbt_tick_now()};
    if (mbt_blocks_insert(shard, &b) == MBT_BLOCK_FULL) {
        mbt_count_add(mbt_counters.dropped_blocks, 1);
        return -1;
    }
    return 0;
}

int mbt_on_free(void *p, struct mbt_block *old)
{
    struct mbt_block tmp;
    if (mbt_blocks_remove((uintptr_t)p, old ? old : &tmp))
        return 1;
    mbt_count_add(mbt_counters.unknown_frees, 1);
    return 0;
}

void mbt_on_restore(const struct mbt_block *old)
{
    if (mbt_blocks_insert(mbt_blocks_prepare(old->addr), old) == MBT_BLOCK_FULL)
        mbt_count_add(mbt_counters.dropped_blocks, 1);
}

/* ---- start, update, stop ---- */

static int mbt_check_config(const membt_config *cfg, const char **why)
{
    if (cfg->depth < 1 || cfg->depth > MEMBT_MAX_DEPTH)
        *why = "depth must be 1..64";
    else if (cfg->top < 1 || cfg->top > MBT_TOP_MAX)
        *why = "top must be 1..1000";
    else if (cfg->budget_bytes < 64u * 1024u)
        *why = "budget must be at least 64K";
    else if (strcmp(cfg->format, "wire") && strcmp(cfg->format, "text"))
        *why = "format must be wire or text";
    else if (!memchr(cfg->output, 0, sizeof cfg->output) || mbt_sink_check(cfg->output))
        *why = "output must be stderr, stdout, fd:N, tcp:HOST:PORT or a path";
    else if (!memchr(cfg->unwind, 0, sizeof cfg->unwind))
        *why = "unwind must be auto, fp, unwind, glibc or cached";
    else if (cfg->dump_signal < 0 || cfg->dump_signal >= NSIG || cfg->dump_signal == SIGKILL ||
             cfg->dump_signal == SIGSTOP)
        *why = "dump_signal must be 0 or a signal that can be caught";
    else
        return 0;
    return -1;
}

static int mbt_fail(const char *why, const char *detail)
{
    __atomic_store_n(&mbt_state, MBT_FAILED, __ATOMIC_RELEASE);
    mbt_say_disabled(why, detail);
    return -1;
}

static void mbt_start_reporting(const membt_config *cfg)
{
    const char *why = NULL;
    if (!cfg->start_reporter || mbt_reporter_running())
        return;
    if (mbt_reporter_start(&why) < 0) {
        mbt_say(why); /* API dumps keep working */
        return;
    }
    if (cfg->dump_signal && mbt_signal_install(cfg->dump_signal, &why) < 0)
        mbt_say(why);
}

/* A running recorder takes the dump settings of a new config; the tables stay as they are. */
static int mbt_update_locked(const membt_config *cfg)
{
    mbt_lock_acquire(&mbt_dump_lock);
    mbt_run.cfg.leak_age_ms = cfg->leak_age_ms;
    __atomic_store_n(&mbt_run.cfg.interval_ms, cfg->interval_ms, __ATOMIC_RELAXED);
    mbt_run.cfg.top = cfg->top;
    memcpy(mbt_run.cfg.format, cfg->format, sizeof cfg->format);
    if (strcmp(mbt_run.cfg.output, cfg->output)) {
        memcpy(mbt_run.cfg.output, cfg->output, sizeof cfg->output);
        mbt_sink_open(cfg->output);
    }
    mbt_lock_release(&mbt_dump_lock);
    mbt_start_reporting(cfg);
    mbt_reporter_poke();
    return 0;
}

static int mbt_start_locked(const membt_config *cfg)
{
    const char *why = NULL;
    if (!mbt_clock_started) {
        mbt_start_ms = mbt_clock_ms(CLOCK_MONOTONIC);
        mbt_start_coarse_ms = mbt_clock_ms(MBT_COARSE_CLOCK);
        mbt_clock_started = 1;
    }
    if (mbt_unwind_select(cfg->unwind, &why) < 0)
        return mbt_fail(why, NULL);
    if (mbt_regions.base && (mbt_regions.total != cfg->budget_bytes || mbt_regions_depth != cfg->depth))
        mbt_budget_release(&mbt_regions, !mbt_hooks_interposed);
    if (mbt_regions.base) {
        mbt_budget_clear(&mbt_regions);
    } else {
        if (mbt_budget_reserve(cfg->budget_bytes, cfg->depth, &mbt_regions, &why) < 0)
            return mbt_fail(why, NULL);
        mbt_regions_depth = cfg->depth;
    }
    mbt_blocks_setup(&mbt_regions);
    mbt_stacks_setup(&mbt_regions);
    memset(&mbt_counters, 0, sizeof mbt_counters);

    mbt_run = mbt_env;
    mbt_run.cfg = *cfg;
    mbt_threads_setup(&mbt_regions, cfg->depth); /* after the backend and mbt_run are set */
    mbt_sink_open(cfg->output); /* not recording: no dump can be using the sink */
    mbt_dump_reset_numbering();
    mbt_unwind_init();
    mbt_fork_handlers_register();
    __atomic_store_n(&mbt_state, MBT_ON, __ATOMIC_RELEASE);
    mbt_start_reporting(cfg);
    return 0;
}

MBT_EXPORT int membt_init(const membt_config *cfg)
{
    const char *why = NULL;
    int rc;
    mbt_in_recorder++; /* whatever libc allocates for us is not the program's */
    mbt_ctl_lock();
    mbt_env_load_once();
    if (!cfg) {
        rc = mbt_recording() ? -1 : mbt_fail("membt_init", "no configuration");
    } else if (mbt_check_config(cfg, &why) < 0) {
        if (mbt_recording()) { /* a bad update leaves the running recorder alone */
            char mem[256];
            struct mbt_buf b;
            mbt_buf_init(&b, mem, sizeof mem);
            mbt_buf_str(&b, "membt_init: ");
            mbt_buf_str(&b, why);
            mbt_buf_str(&b, "; settings unchanged");
            mbt_say_buf(&b);
            rc = -1;
        } else {
            rc = mbt_fail("membt_init", why);
        }
    } else {
        rc = mbt_recording() ? mbt_update_locked(cfg) : mbt_start_locked(cfg);
    }
    mbt_ctl_unlock();
    mbt_in_recorder--;
    return rc;
}

MBT_EXPORT void membt_shutdown(void)
{
    mbt_in_recorder++;
    mbt_ctl_lock();
    if (mbt_recording()) {
        mbt_reporter_stop(-1);
        mbt_signal_restore();
        mbt_dump_now("exit", 0);
        mbt_lock_acquire(&mbt_dump_lock);
        __atomic_store_n(&mbt_state, MBT_OFF, __ATOMIC_RELEASE);
        mbt_sink_close();
        mbt_lock_release(&mbt_dump_lock);
    }
    mbt_ctl_unlock();
    mbt_in_recorder--;
}

/* At exit (or dlclose): the last dump, then pass everything through. No ctl lock here: the
 * program may exit while another thread is anywhere; the dump lock is waited for at most 2 s. */
__attribute__((destructor)) static void mbt_at_exit(void)
{
    if (mbt_recording()) {
        mbt_in_recorder++;
        if (mbt_run.dump_at_exit)
            mbt_dump_now("exit", 2000);
        __atomic_store_n(&mbt_state, MBT_OFF, __ATOMIC_RELEASE);
        mbt_reporter_stop(1000);
        mbt_in_recorder--;
    }
    mbt_threads_unload(); /* after dlclose no thread may call back into this code at its exit */
}

void mbt_autostart(void)
{
    membt_config cfg;
    mbt_in_recorder++;
    membt_config_init(&cfg);
    if (!mbt_env.disable && membt_init(&cfg) == 0 && !mbt_env.quiet) {
        char mem[400];
        struct mbt_buf b;
        mbt_buf_init(&b, mem, sizeof mem);
        mbt_buf_str(&b, MEMBT_VERSION " recording (unwind=");
        mbt_buf_str(&b, mbt_unwind_name());
        mbt_buf_str(&b, ", budget=");
        mbt_buf_bytes(&b, cfg.budget_bytes);
        mbt_buf_str(&b, ", output=");
        mbt_buf_escaped(&b, cfg.output, 200);
        mbt_buf_char(&b, ')');
        mbt_say_buf(&b);
    }
    mbt_in_recorder--;
}

/* ---- the rest of the public API ---- */

static int mbt_api_record(void *addr, size_t len, const struct mbt_site *site)
{
    if (!addr || !mbt_recording())
        return -1;
    mbt_in_recorder++;
    int rc = mbt_on_alloc(addr, len, site);
    mbt_in_recorder--;
    return rc;
}

/* The asm after the call keeps it from being a tail call, which would drop the frame passed. */
MBT_EXPORT int membt_record(void *addr, size_t len)
{
    struct mbt_site site = MBT_SITE();
    int rc = mbt_api_record(addr, len, &site);
    __asm__ volatile("" : : "r"(rc) : "memory");
    return rc;
}

MBT_EXPORT int record_bt(void *addr, size_t len)
{
    struct mbt_site site = MBT_SITE();
    int rc = mbt_api_record(addr, len, &site);
    __asm__ volatile("" : : "r"(rc) : "memory");
    return rc;
}

MBT_EXPORT int membt_unrecord(void *addr)
{
    if (!addr || !mbt_recording())
        return -1;
    mbt_in_recorder++;
    int rc = mbt_on_free(addr, NULL) ? 0 : -1;
    mbt_in_recorder--;
    return rc;
}

MBT_EXPORT int unrecord_bt(void *addr) { return membt_unrecord(addr); }

MBT_EXPORT long membt_dump(void)
{
    mbt_in_recorder++;
    long n = mbt_dump_now("api", 0);
    mbt_in_recorder--;
    return n;
}

MBT_EXPORT void membt_get_stats(membt_stats *st)
{
    memset(st, 0, sizeof *st);
    st->enabled = mbt_recording();
    if (!mbt_regions.base)
        return;
    mbt_blocks_totals(&st->live_blocks, &st->live_bytes);
    st->stacks = mbt_stacks_count();
    st->stack_cap = mbt_regions.stack_cap;
    st->block_cap = mbt_blocks_capacity();
    st->dropped_blocks = mbt_load(mbt_counters.dropped_blocks);
    st->dropped_stacks = mbt_load(mbt_counters.dropped_stacks);
    struct mbt_thread_totals tt;
    mbt_threads_totals(&tt);
    st->truncated_stacks = tt.truncated;
    st->unknown_frees = mbt_load(mbt_counters.unknown_frees);
    st->budget_used = mbt_budget_used(&mbt_regions);
    st->budget_total = mbt_regions.total;
    st->dumps = mbt_load(mbt_counters.dumps);
}

MBT_EXPORT int init_bt(void)
{
    membt_config cfg;
    membt_config_init(&cfg);
    return membt_init(&cfg);
}
