/* membt — find memory leaks in programs that never exit.
 * Public API of the recorder. Everything else in libmembt is internal (mbt_*, hidden).
 *
 * Compile-time defaults (override with -DMEMBT_DEFAULT_...=value when building the library);
 * every one of them can also be changed at run time with the environment variable in brackets:
 *   MEMBT_DEFAULT_LEAK_AGE_MS  60000      [MEMBT_LEAK_AGE, seconds]  a block older than this is "maybe leak"
 *   MEMBT_DEFAULT_INTERVAL_MS  20000      [MEMBT_INTERVAL, seconds]  time between two dumps (0: on demand only)
 *   MEMBT_DEFAULT_DEPTH        16         [MEMBT_DEPTH]    frames kept per call stack (1..MEMBT_MAX_DEPTH)
 *   MEMBT_DEFAULT_TOP          10         [MEMBT_TOP]      call stacks listed per dump
 *   MEMBT_DEFAULT_BUDGET       64 MiB     [MEMBT_BUDGET]   memory reserved once with mmap for all tables
 *   MEMBT_DEFAULT_OUTPUT       "stderr"   [MEMBT_OUTPUT]   stderr, stdout, fd:N, tcp:HOST:PORT or a file/device path
 *   MEMBT_DEFAULT_FORMAT       "wire"     [MEMBT_FORMAT]   wire (for membt-host, docs/protocol.md) or text
 *   MEMBT_DEFAULT_SIGNAL       0          [MEMBT_SIGNAL]   signal that asks for a dump now (0: none)
 *   MEMBT_DEFAULT_UNWIND       "auto"     [MEMBT_UNWIND]   stack capture backend
 *   MEMBT_DEFAULT_FORK         1          [MEMBT_FORK]     on: a forked child keeps recording; off: it stops
 *   MEMBT_DEFAULT_DISABLE      0          [MEMBT_DISABLE]  1: the hooks only pass through to libc
 *   MEMBT_DEFAULT_QUIET        0          [MEMBT_QUIET]    1: no start banner on stderr
 *   MEMBT_DEFAULT_DUMP_AT_EXIT 1          [MEMBT_DUMP_AT_EXIT] a last dump (reason exit) when the program exits
 * See README.md for the full table (src/options.c holds the same table).
 *
 * The budget (B bytes, depth d) is split once (src/budget.c):
 *   stack_cap  = largest power of two <= B/1024, within 64..1048576      64 MiB -> 65536 call stacks
 *   frames     = stack_cap * d frames, at most B/4 bytes                  64 MiB -> 8 MiB
 *   per stack  = record + scan slot + 2 index slots (68 B on 64-bit)
 *   regions    = address-region directory, <= B/128                       64 MiB -> 512 KiB
 *   threads    = per-thread records and capture caches (84 KiB each), as many as fit in B/16, <= 64
 *   blocks     = the rest, 24 B slots (16 B on 32-bit) filled to 7/8:     64 MiB -> ~1.8 million live blocks
 *                (27.4 B per live block on 64-bit, 18.3 B on 32-bit, once the table is full size)
 */
#ifndef MEMBT_H
#define MEMBT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MEMBT_VERSION "0.1.0"
#define MEMBT_WIRE_VERSION 1
#define MEMBT_MAX_DEPTH 64

#ifndef MEMBT_DEFAULT_LEAK_AGE_MS
#define MEMBT_DEFAULT_LEAK_AGE_MS 60000
#endif
#ifndef MEMBT_DEFAULT_INTERVAL_MS
#define MEMBT_DEFAULT_INTERVAL_MS 20000
#endif
#ifndef MEMBT_DEFAULT_DEPTH
#define MEMBT_DEFAULT_DEPTH 16
#endif
#ifndef MEMBT_DEFAULT_TOP
#define MEMBT_DEFAULT_TOP 10
#endif
#ifndef MEMBT_DEFAULT_BUDGET
#define MEMBT_DEFAULT_BUDGET (64u * 1024u * 1024u)
#endif
#ifndef MEMBT_DEFAULT_OUTPUT
#define MEMBT_DEFAULT_OUTPUT "stderr"
#endif
#ifndef MEMBT_DEFAULT_FORMAT
#define MEMBT_DEFAULT_FORMAT "wire"
#endif
#ifndef MEMBT_DEFAULT_SIGNAL
#define MEMBT_DEFAULT_SIGNAL 0
#endif
#ifndef MEMBT_DEFAULT_UNWIND
#define MEMBT_DEFAULT_UNWIND "auto"
#endif
#ifndef MEMBT_DEFAULT_FORK
#define MEMBT_DEFAULT_FORK 1
#endif
#ifndef MEMBT_DEFAULT_DISABLE
#define MEMBT_DEFAULT_DISABLE 0
#endif
#ifndef MEMBT_DEFAULT_QUIET
#define MEMBT_DEFAULT_QUIET 0
#endif
#ifndef MEMBT_DEFAULT_DUMP_AT_EXIT
#define MEMBT_DEFAULT_DUMP_AT_EXIT 1
#endif

typedef struct membt_config {
    uint32_t leak_age_ms;   /* blocks older than this are counted as old ("maybe leak") */
    uint32_t interval_ms;   /* periodic dump interval; 0 = dumps only on demand */
    uint32_t depth;         /* frames per stack, 1..MEMBT_MAX_DEPTH */
    uint32_t top;           /* call stacks listed per dump */
    size_t budget_bytes;    /* reserved once from mmap; tables are carved from it */
    char output[256];       /* "stderr", "stdout", "fd:N", "tcp:HOST:PORT" or a path (opened for append) */
    char format[8];         /* "wire" or "text" */
    int dump_signal;        /* signal number that triggers a dump, 0 = none */
    char unwind[16];        /* "auto", "fp", "unwind" (libgcc _Unwind_Backtrace), "glibc" (backtrace),
                               "cached" (unwind behind a per-thread cache; x86_64, aarch64) */
    int start_reporter;     /* nonzero: start the reporter thread (periodic dumps, signal dumps) */
} membt_config;

typedef struct membt_stats {
    uint64_t live_blocks, live_bytes;
    uint64_t stacks, stack_cap, block_cap;
    uint64_t dropped_blocks, dropped_stacks, truncated_stacks, unknown_frees;
    uint64_t budget_used, budget_total;
    uint64_t dumps;
    int enabled;            /* 0 once the recorder disabled itself (see the one line it printed) */
} membt_stats;

/* Fill cfg with the compile-time defaults, then apply the MEMBT_* environment variables
 * (a bad value prints one warning line naming the variable and keeps the default). */
void membt_config_init(membt_config *cfg);

/* Start the recorder. Returns 0 on success (also when already running: the dump settings
 * leak_age_ms, interval_ms, top, output and format are then updated), -1 if it could not start
 * (it prints one line saying why and stays disabled; the program is never aborted). */
int membt_init(const membt_config *cfg);

/* Record a live block allocated at the caller's call stack / forget it. Return 0, or -1 when
 * the block could not be tracked (table full: counted as dropped) or was unknown (counted). */
int membt_record(void *addr, size_t len);
int membt_unrecord(void *addr);

/* Write a dump now, from the calling thread (reason "api"). Returns bytes written or -1. */
long membt_dump(void);

void membt_get_stats(membt_stats *stats);

/* Stop the reporter thread, write a last dump (reason "exit") and stop recording. */
void membt_shutdown(void);

/* The seed's API, unchanged: init with defaults and environment; record/unrecord a block. */
int init_bt(void);
int record_bt(void *addr, size_t len);
int unrecord_bt(void *addr);

#ifdef __cplusplus
}
#endif
#endif /* MEMBT_H */
