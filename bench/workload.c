/* Allocation-heavy workload for the membt benchmarks (bench/run.py builds and runs it).
 * Worker threads churn a live set of heap blocks through 12-level call chains of distinct functions,
 * with a daemon-like size mix (mostly 16-256 B, some KiB, rare large) and a small steady leak. */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHAIN_LEVELS 12 /* the chain below is written out for exactly this many levels */

struct options {
    unsigned threads;
    uint64_t ops;        /* operations per thread after the live set is filled */
    uint64_t live;       /* live blocks in all threads together */
    unsigned paths;      /* distinct call paths (each a distinct 12-level call stack) */
    uint64_t leak_every; /* one leaked block every this many operations; 0 = no leak */
    uint64_t seed;
};

/* One allocation request travelling down the call chain. */
struct request {
    unsigned path;    /* bit k picks variant a or b at level k */
    int kind;         /* KIND_* */
    size_t size;
    void *old;        /* for realloc */
    uint32_t trail;   /* changed at each level so no two level functions have identical bodies */
};

enum { KIND_MALLOC, KIND_CALLOC, KIND_REALLOC };

struct worker {
    pthread_t thread;
    unsigned index;
    const struct options *opt;
    void **slots;
    uint64_t nslots;
    uint64_t leaked_blocks;
    uint64_t checksum;
};

/* File scope: the live set stays reachable from here until exit, like a daemon's state, so a leak
 * checker at exit reports only the leaked blocks. */
static struct worker *workers;

#define NOINLINE __attribute__((noinline, noclone))

/* The leaf: the allocator call itself. Touching the block keeps the allocation observable. */
NOINLINE static void *alloc_leaf(struct request *r)
{
    void *p;
    switch (r->kind) {
    case KIND_CALLOC:
        p = calloc(1, r->size);
        break;
    case KIND_REALLOC:
        p = realloc(r->old, r->size);
        break;
    default:
        p = malloc(r->size);
        break;
    }
    if (p != NULL)
        memset(p, (int)(r->trail & 0xff), r->size < 64 ? r->size : 64);
    return p;
}

/* Level k, variant v: calls level k+1, variant chosen by bit k+1 of the path. The empty asm after
 * the call keeps it out of tail position, so every level leaves a real frame on the stack. */
#define LEVEL(k, v, next_a, next_b)                                                  \
    NOINLINE static void *level_##k##_##v(struct request *r)                         \
    {                                                                                \
        r->trail = r->trail * 31u + (k) * 2u + (v) + 1u;                             \
        void *p = ((r->path >> ((k) + 1)) & 1u) ? next_b(r) : next_a(r);             \
        __asm__ volatile("" : : "r"(p) : "memory");                                  \
        return p;                                                                    \
    }
#define LEVEL_PAIR(k, next_a, next_b) LEVEL(k, 0, next_a, next_b) LEVEL(k, 1, next_a, next_b)

LEVEL_PAIR(11, alloc_leaf, alloc_leaf)
LEVEL_PAIR(10, level_11_0, level_11_1)
LEVEL_PAIR(9, level_10_0, level_10_1)
LEVEL_PAIR(8, level_9_0, level_9_1)
LEVEL_PAIR(7, level_8_0, level_8_1)
LEVEL_PAIR(6, level_7_0, level_7_1)
LEVEL_PAIR(5, level_6_0, level_6_1)
LEVEL_PAIR(4, level_5_0, level_5_1)
LEVEL_PAIR(3, level_4_0, level_4_1)
LEVEL_PAIR(2, level_3_0, level_3_1)
LEVEL_PAIR(1, level_2_0, level_2_1)
LEVEL_PAIR(0, level_1_0, level_1_1)

NOINLINE static void *allocate_via_chain(struct request *r)
{
    void *p = (r->path & 1u) ? level_0_1(r) : level_0_0(r);
    __asm__ volatile("" : : "r"(p) : "memory");
    return p;
}

/* A separate short path for the leak, so it is one call stack of its own that keeps growing. */
NOINLINE static void *leak_one(struct request *r)
{
    r->kind = KIND_MALLOC;
    r->size = 48;
    r->path = 0x5a5;
    void *p = allocate_via_chain(r);
    __asm__ volatile("" : : "r"(p) : "memory");
    return p;
}

static uint64_t next_random(uint64_t *state)
{
    /* xorshift64*: cheap, and each thread has its own state */
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static size_t random_size(uint64_t *rng)
{
    uint64_t pick = next_random(rng) % 1000;
    if (pick < 900)
        return 16 + next_random(rng) % 241;          /* 16..256 B: most of a daemon's blocks */
    if (pick < 999)
        return 512 + next_random(rng) % (8192 - 512); /* some KiB: buffers */
    return 65536 + next_random(rng) % (196608);      /* rare large: 64..256 KiB, some mmap'ed */
}

static void *allocate(struct worker *w, uint64_t *rng, int kind, void *old)
{
    struct request r = {
        .path = (unsigned)(next_random(rng) % w->opt->paths),
        .kind = kind,
        .size = random_size(rng),
        .old = old,
        .trail = w->index + 1u,
    };
    void *p = allocate_via_chain(&r);
    w->checksum += r.trail;
    return p;
}

static void *run_worker(void *arg)
{
    struct worker *w = arg;
    uint64_t rng = w->opt->seed * 0x9E3779B97F4A7C15ULL + w->index + 1;
    char name[16];
    snprintf(name, sizeof name, "worker%u", w->index);
    pthread_setname_np(pthread_self(), name);

    for (uint64_t i = 0; i < w->nslots; i++)
        w->slots[i] = allocate(w, &rng, KIND_MALLOC, NULL);

    for (uint64_t op = 1; op <= w->opt->ops; op++) {
        if (w->opt->leak_every != 0 && op % w->opt->leak_every == 0) {
            struct request r = {.trail = w->index + 1u};
            if (leak_one(&r) != NULL)
                w->leaked_blocks++;
            continue;
        }
        if (w->nslots == 0) {
            free(allocate(w, &rng, KIND_MALLOC, NULL));
            continue;
        }
        uint64_t slot = next_random(&rng) % w->nslots;
        uint64_t pick = next_random(&rng) % 100;
        if (pick < 8 && w->slots[slot] != NULL) {
            void *moved = allocate(w, &rng, KIND_REALLOC, w->slots[slot]);
            if (moved != NULL)
                w->slots[slot] = moved;
            continue;
        }
        free(w->slots[slot]);
        w->slots[slot] = allocate(w, &rng, pick < 18 ? KIND_CALLOC : KIND_MALLOC, NULL);
    }
    return NULL;
}

static int parse_u64(const char *text, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || text[0] == '-')
        return -1;
    *out = v;
    return 0;
}

static void usage(FILE *to)
{
    fprintf(to,
            "usage: workload [--threads N] [--ops N] [--live N] [--paths N] [--leak-every N] [--seed N]\n"
            "  --threads N     worker threads (default 1)\n"
            "  --ops N         operations per thread after filling the live set (default 1000000)\n"
            "  --live N        live blocks kept by all threads together (default 10000)\n"
            "  --paths N       distinct %d-level call paths that allocate (default 256, max 4096)\n"
            "  --leak-every N  leak one 48-byte block every N operations, 0 = never (default 1000)\n"
            "  --seed N        random seed (default 1)\n",
            CHAIN_LEVELS);
}

int main(int argc, char **argv)
{
    struct options opt = {.threads = 1, .ops = 1000000, .live = 10000, .paths = 256, .leak_every = 1000, .seed = 1};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        uint64_t value;
        if (i + 1 >= argc || parse_u64(argv[i + 1], &value) != 0) {
            fprintf(stderr, "workload: %s needs a non-negative number\n", argv[i]);
            usage(stderr);
            return 2;
        }
        const char *flag = argv[i++];
        if (strcmp(flag, "--threads") == 0 && value >= 1 && value <= 256)
            opt.threads = (unsigned)value;
        else if (strcmp(flag, "--ops") == 0)
            opt.ops = value;
        else if (strcmp(flag, "--live") == 0)
            opt.live = value;
        else if (strcmp(flag, "--paths") == 0 && value >= 1 && value <= (1u << CHAIN_LEVELS))
            opt.paths = (unsigned)value;
        else if (strcmp(flag, "--leak-every") == 0)
            opt.leak_every = value;
        else if (strcmp(flag, "--seed") == 0)
            opt.seed = value;
        else {
            fprintf(stderr, "workload: bad option or value: %s %s\n", flag, argv[i]);
            usage(stderr);
            return 2;
        }
    }

    /* The workers' bookkeeping is allocated up front, so only the workload's own blocks churn. */
    workers = calloc(opt.threads, sizeof *workers);
    if (workers == NULL) {
        fprintf(stderr, "workload: out of memory\n");
        return 1;
    }
    for (unsigned t = 0; t < opt.threads; t++) {
        struct worker *w = &workers[t];
        w->index = t;
        w->opt = &opt;
        w->nslots = opt.live / opt.threads + (t < opt.live % opt.threads ? 1 : 0);
        w->slots = calloc(w->nslots ? w->nslots : 1, sizeof *w->slots);
        if (w->slots == NULL) {
            fprintf(stderr, "workload: out of memory\n");
            return 1;
        }
    }
    for (unsigned t = 0; t < opt.threads; t++) {
        int err = pthread_create(&workers[t].thread, NULL, run_worker, &workers[t]);
        if (err != 0) {
            fprintf(stderr, "workload: pthread_create: %s\n", strerror(err));
            return 1;
        }
    }
    uint64_t leaked = 0, checksum = 0;
    for (unsigned t = 0; t < opt.threads; t++) {
        pthread_join(workers[t].thread, NULL);
        leaked += workers[t].leaked_blocks;
        checksum += workers[t].checksum;
    }
    printf("workload threads=%u ops=%" PRIu64 " live=%" PRIu64 " paths=%u leaked=%" PRIu64 " checksum=%" PRIu64 "\n",
           opt.threads, opt.ops, opt.live, opt.paths, leaked, checksum);
    return 0;
}
