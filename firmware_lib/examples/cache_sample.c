/* cache-sample: allocations through many call stacks whose frames change size (VLAs, alloca), from
 * several threads, for the tests of MEMBT_UNWIND=cached. Deterministic: the same arguments leave
 * the same live blocks on each call stack, however the threads interleave (each has its own work).
 * Usage: cache-sample [operations per thread [worker threads]]   (default 20000 2) */
#define _GNU_SOURCE
#include <alloca.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline, noclone))
/* after a call: it cannot become a tail call, so the caller's frame stays on the stack; the
 * text differs per function, so identical bodies are not folded into one (-fipa-icf) */
#define KEEP_FRAME(name) __asm__ volatile("# " name ::: "memory")
/* the compiler must believe the bytes of a variable-length frame are used */
#define USE_AREA(area) __asm__ volatile("" ::"r"(area) : "memory")

#define MAX_WORKERS 16
#define KEEP 1024 /* live blocks per thread: each new block replaces a random old one */
#define PATHS 16  /* ways through the call chain (struct op's path) */
#define KINDS 4   /* allocation calls in allocate() */

/* One allocation: which way each level of the call chain goes and how big its frames are. */
struct op {
    unsigned path;       /* bit 0: session, 1: parser, 2: through decode_field, 3: builder */
    unsigned kind;       /* malloc, calloc, strdup or aligned_alloc */
    size_t size;
    size_t outer, inner; /* VLA bytes of the session and of scratch_inner: their sum is one of
                          * two totals, so the hook's stack pointer repeats with other splits */
    size_t scratch;      /* alloca bytes in parse_body */
};

/* One thread's work: its own random numbers and its own live blocks. */
struct lane {
    uint64_t rng;
    void *pinned[PATHS * KINDS]; /* one block per path and call, kept for good: every stack stays live */
    void *keep[KEEP];
};

static struct lane lanes[MAX_WORKERS + 2];
static unsigned long operations = 20000;

static uint64_t next_random(struct lane *lane)
{
    uint64_t x = lane->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    lane->rng = x;
    return x;
}

static const char text[] = "cache-sample keeps a few of the strings it copies, drops the rest and copies "
                           "more, the way a daemon keeps a table of names that changes as requests come "
                           "and go; only the length of each copy is chosen at random by its thread.";

NOINLINE static void *allocate(const struct op *op)
{
    void *p;
    switch (op->kind) {
    case 0:
        p = malloc(op->size);
        break;
    case 1:
        p = calloc(1, op->size);
        break;
    case 2:
        p = strdup(text + sizeof text - 1 - op->size % 128);
        break;
    default:
        p = aligned_alloc(32, (op->size + 31) & ~(size_t)31);
        break;
    }
    KEEP_FRAME("allocate");
    return p;
}

NOINLINE static void *store_value(const struct op *op)
{
    void *p = allocate(op);
    KEEP_FRAME("store_value");
    return p;
}

NOINLINE static void *build_entry(const struct op *op)
{
    void *p = store_value(op);
    KEEP_FRAME("build_entry");
    return p;
}

NOINLINE static void *build_index(const struct op *op)
{
    void *p = store_value(op);
    KEEP_FRAME("build_index");
    return p;
}

/* the inner frame whose size moves against the session's */
NOINLINE static void *scratch_inner(const struct op *op)
{
    volatile char area[op->inner];
    area[0] = 1;
    void *p = op->path & 8 ? build_index(op) : build_entry(op);
    USE_AREA(area);
    return p;
}

NOINLINE static void *decode_field(const struct op *op)
{
    void *p = scratch_inner(op);
    KEEP_FRAME("decode_field");
    return p;
}

NOINLINE static void *parse_header(const struct op *op)
{
    void *p = op->path & 4 ? decode_field(op) : scratch_inner(op);
    KEEP_FRAME("parse_header");
    return p;
}

NOINLINE static void *parse_body(const struct op *op)
{
    volatile char *scratch = alloca(op->scratch);
    scratch[0] = 2;
    void *p = op->path & 4 ? decode_field(op) : scratch_inner(op);
    USE_AREA(scratch);
    return p;
}

/* the two outer frames: the same code shape, told apart only by their return addresses */
NOINLINE static void *session_open(const struct op *op)
{
    volatile char area[op->outer];
    area[0] = 3;
    void *p = op->path & 2 ? parse_body(op) : parse_header(op);
    USE_AREA(area);
    return p;
}

NOINLINE static void *session_resume(const struct op *op)
{
    volatile char area[op->outer];
    area[0] = 4;
    void *p = op->path & 2 ? parse_body(op) : parse_header(op);
    USE_AREA(area);
    return p;
}

/* one call site for both sessions (a callback table): stacks that differ in the session frame only */
NOINLINE static void *dispatch(const struct op *op)
{
    static void *(*const sessions[2])(const struct op *) = {session_open, session_resume};
    void *p = sessions[op->path & 1](op);
    KEEP_FRAME("dispatch");
    return p;
}

static struct op make_op(struct lane *lane)
{
    uint64_t r = next_random(lane);
    struct op op;
    /* most allocations come from a few hot paths, as in a real program; every fourth from any */
    op.path = (r & 3) ? (unsigned)(r >> 2 & 1) * 0xb : (unsigned)(r >> 2 & (PATHS - 1));
    op.kind = (unsigned)(r >> 6 & (KINDS - 1));
    op.size = 16 + (size_t)(r >> 8 & 255);
    size_t total = 128 + 64 * (size_t)(r >> 16 & 1);
    op.inner = 16 * (1 + (size_t)(r >> 17 & 3)); /* 16..64: the outer frame gets the rest */
    op.outer = total - op.inner;
    op.scratch = 16 + 32 * (size_t)(r >> 19 & 1);
    return op;
}

NOINLINE static void run_lane(struct lane *lane)
{
    for (unsigned i = 0; i < PATHS * KINDS; i++) {
        struct op op = make_op(lane);
        op.path = i / KINDS;
        op.kind = i % KINDS;
        lane->pinned[i] = dispatch(&op);
    }
    for (unsigned long i = 0; i < operations; i++) {
        struct op op = make_op(lane);
        void *p = dispatch(&op);
        unsigned slot = (unsigned)(next_random(lane) % KEEP);
        free(lane->keep[slot]);
        lane->keep[slot] = p;
    }
    KEEP_FRAME("run_lane");
}

/* named before its first allocation: the first thread to allocate on a stack names it in dumps */
static void name_thread(const struct lane *lane)
{
    char name[16];
    snprintf(name, sizeof name, "cache-w%u", (unsigned)(lane - lanes));
    pthread_setname_np(pthread_self(), name);
}

static void *worker(void *arg)
{
    name_thread(arg);
    run_lane(arg);
    KEEP_FRAME("worker");
    return NULL;
}

/* started after the first workers ended: it takes a record one of them gave back */
static void *late_worker(void *arg)
{
    name_thread(arg);
    run_lane(arg);
    KEEP_FRAME("late_worker");
    return NULL;
}

static int start(pthread_t *thread, void *(*entry)(void *), unsigned index)
{
    int rc = pthread_create(thread, NULL, entry, &lanes[index]);
    if (rc != 0)
        fprintf(stderr, "cache-sample: pthread_create: %s\n", strerror(rc));
    return rc ? -1 : 0;
}

int main(int argc, char **argv)
{
    unsigned workers = 2;
    pthread_t threads[MAX_WORKERS], late;
    if (argc > 1)
        operations = strtoul(argv[1], NULL, 10);
    if (argc > 2)
        workers = (unsigned)strtoul(argv[2], NULL, 10);
    if (workers > MAX_WORKERS) {
        fprintf(stderr, "usage: cache-sample [operations [threads (at most %d)]]\n", MAX_WORKERS);
        return 2;
    }
    for (unsigned i = 0; i < workers + 2; i++)
        lanes[i].rng = 0x9E3779B97F4A7C15ull * (i + 1);

    unsigned started = 0;
    while (started < workers && start(&threads[started], worker, started + 1) == 0)
        started++;
    run_lane(&lanes[0]); /* the main thread works alongside them */
    for (unsigned i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    if (started < workers)
        return 1;
    if (start(&late, late_worker, workers + 1) != 0)
        return 1;
    pthread_join(late, NULL);

    unsigned live = 0;
    for (unsigned i = 0; i < workers + 2; i++) {
        for (unsigned k = 0; k < PATHS * KINDS; k++)
            live += lanes[i].pinned[k] != NULL;
        for (unsigned k = 0; k < KEEP; k++)
            live += lanes[i].keep[k] != NULL;
    }
    printf("cache-sample done: %lu operations in each of %u threads, %u blocks live\n", operations,
           workers + 2, live);
    return 0;
}
