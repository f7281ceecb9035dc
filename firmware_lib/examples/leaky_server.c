/* leaky-server: a small daemon with one real leak, one cache and some churn, built WITHOUT membt:
 *   LD_PRELOAD=build/x86_64/lib/libmembt.so build/x86_64/bin/leaky-server [seconds]   (default 6)
 * - sessions thread: leak_session_name() strdup()s a name every ~100 ms and loses it (growing leak)
 * - cache thread:    cache_insert() keeps the newest 64 entries of 256 bytes (plateaus: stable)
 * - churn thread:    short-lived malloc/free of assorted sizes (transient)
 * - startup tables:  one long-lived block from each member of the malloc family. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define CACHE_ENTRIES 64
#define CACHE_ENTRY_SIZE 256

#define KEEP_FRAME() __asm__ volatile("" ::: "memory")  /* no tail call: the caller keeps its frame */

static atomic_int stopping;

static void sleep_ms(long ms)
{
    struct timespec left = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
}

static void die(const char *what)
{
    fprintf(stderr, "leaky-server: %s failed\n", what);
    exit(1);
}

/* ---- the leak: every new session's name is copied and the copy is forgotten ---- */

char *volatile current_session_name;  /* overwritten each time: the previous copy is lost */

__attribute__((noinline, noclone)) void leak_session_name(unsigned session)
{
    char name[48];
    snprintf(name, sizeof name, "session-%u@192.0.2.%u", session, session % 250 + 1);
    current_session_name = strdup(name);
    if (current_session_name == NULL)
        die("strdup");
    KEEP_FRAME();
}

__attribute__((noinline, noclone)) static void accept_session(unsigned session)
{
    leak_session_name(session);
    KEEP_FRAME();
}

static void *sessions_thread(void *arg)
{
    (void)arg;
    prctl(PR_SET_NAME, "sessions", 0, 0, 0);
    for (unsigned session = 1; !atomic_load(&stopping); session++) {
        accept_session(session);
        sleep_ms(100);
    }
    return NULL;
}

/* ---- the cache: bounded, so its live bytes stop growing once it is full ---- */

struct cache_entry {
    unsigned key;
    char value[CACHE_ENTRY_SIZE - sizeof(unsigned)];
};

static struct cache_entry *cache[CACHE_ENTRIES];
static unsigned cache_next;

__attribute__((noinline, noclone)) void cache_insert(unsigned key)
{
    unsigned slot = cache_next++ % CACHE_ENTRIES;
    free(cache[slot]);  /* evict the oldest entry */
    struct cache_entry *entry = malloc(sizeof *entry);
    if (entry == NULL)
        die("malloc");
    entry->key = key;
    snprintf(entry->value, sizeof entry->value, "value of %u", key);
    cache[slot] = entry;
    KEEP_FRAME();
}

static void *cache_thread(void *arg)
{
    (void)arg;
    prctl(PR_SET_NAME, "cache", 0, 0, 0);
    for (unsigned key = 1; !atomic_load(&stopping); key++) {
        cache_insert(key);
        sleep_ms(40);
    }
    return NULL;
}

/* ---- churn: requests that allocate and free within a few milliseconds ---- */

__attribute__((noinline, noclone)) static void handle_request(unsigned request)
{
    size_t size = 32 + (request * 97) % 4000;
    char *buffer = malloc(size);
    if (buffer == NULL)
        die("malloc");
    memset(buffer, (int)request, size);
    char *reply = calloc(1, size / 2 + 1);
    if (reply == NULL)
        die("calloc");
    memcpy(reply, buffer, size / 2);
    free(buffer);
    free(reply);
    KEEP_FRAME();
}

static void *churn_thread(void *arg)
{
    (void)arg;
    prctl(PR_SET_NAME, "churn", 0, 0, 0);
    for (unsigned request = 1; !atomic_load(&stopping); request++) {
        handle_request(request);
        if (request % 16 == 0)
            sleep_ms(5);
    }
    return NULL;
}

/* ---- startup tables: one long-lived block from each allocator, each from its own function ---- */

static void *tables[9];

__attribute__((noinline, noclone)) void *table_calloc(void)
{
    void *p = calloc(16, 32);
    KEEP_FRAME();
    return p;
}

__attribute__((noinline, noclone)) void *table_realloc(void)
{
    char *p = malloc(16);
    if (p == NULL)
        return NULL;
    strcpy(p, "grow me");
    char *old = p;
    p = realloc(p, 256 * 1024);  /* far past the old chunk: glibc moves (mmaps) the block */
    if (p != NULL && p == old)
        fprintf(stderr, "leaky-server: realloc did not move the block\n");
    KEEP_FRAME();
    return p;
}

__attribute__((noinline, noclone)) void *table_reallocarray(void)
{
    void *p = reallocarray(NULL, 24, 40);
    KEEP_FRAME();
    return p;
}

__attribute__((noinline, noclone)) void *table_posix_memalign(void)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, 512) != 0)
        p = NULL;
    KEEP_FRAME();
    return p;
}

__attribute__((noinline, noclone)) void *table_aligned_alloc(void)
{
    void *p = aligned_alloc(128, 1024);
    KEEP_FRAME();
    return p;
}

__attribute__((noinline, noclone)) void *table_memalign(void)
{
    void *p = memalign(32, 200);
    KEEP_FRAME();
    return p;
}

__attribute__((noinline, noclone)) void *table_valloc(void)
{
    void *p = valloc(300);
    KEEP_FRAME();
    return p;
}

__attribute__((noinline, noclone)) void *table_pvalloc(void)
{
#ifdef __GLIBC__
    void *p = pvalloc(100);
#else
    void *p = valloc(100);  /* musl has no pvalloc */
#endif
    KEEP_FRAME();
    return p;
}

__attribute__((noinline, noclone)) void *table_malloc(void)
{
    void *p = malloc(48);
    KEEP_FRAME();
    return p;
}

static void build_tables(void)
{
    void *(*const makers[])(void) = {table_calloc, table_realloc, table_reallocarray, table_posix_memalign,
                                      table_aligned_alloc, table_memalign, table_valloc, table_pvalloc,
                                      table_malloc};
    for (size_t i = 0; i < sizeof makers / sizeof makers[0]; i++) {
        tables[i] = makers[i]();
        if (tables[i] == NULL)
            die("table allocation");
    }
    /* a scratch buffer: realloc(NULL, n) allocates, a shrinking realloc keeps one live block */
    char *scratch = realloc(NULL, 64);
    if (scratch == NULL)
        die("realloc");
    scratch = realloc(scratch, 32);
    free(scratch);
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? strtod(argv[1], NULL) : 6.0;
    if (seconds < 0)
        seconds = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("leaky-server: serving for %g s (pid %d)\n", seconds, (int)getpid());

    build_tables();

    void *(*const workers[])(void *) = {sessions_thread, cache_thread, churn_thread};
    pthread_t threads[3];
    for (int i = 0; i < 3; i++)
        if (pthread_create(&threads[i], NULL, workers[i], NULL) != 0)
            die("pthread_create");
    sleep_ms((long)(seconds * 1000));
    atomic_store(&stopping, 1);
    for (int i = 0; i < 3; i++)
        pthread_join(threads[i], NULL);

    printf("leaky-server done\n");
    return 0;  /* the tables and the cache stay allocated to the end, like a daemon's would */
}
