/* membt-demo: the seed's demo on the seed's explicit API. Five named threads allocate through
 * mymalloc/myfree (test2 -> test3 -> mymalloc -> record_bt); thread0 leaks 20 bytes every 0.5 s,
 * the others free what they took after a while. Usage: membt-demo [seconds]  (default 10). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

#include "membt.h"

#define THREADS 5
#define LEAK_SIZE 20

/* An empty asm after a call keeps it from becoming a tail call, so every function of the
 * allocation chain keeps its own frame and the recorded stacks read test2 -> test3 -> mymalloc. */
#define KEEP_FRAME() __asm__ volatile("" ::: "memory")

static atomic_int stopping;

static void sleep_ms(long ms)
{
    struct timespec left = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
}

__attribute__((noinline, noclone)) void *mymalloc(size_t len)
{
    void *p = malloc(len);
    if (p != NULL)
        record_bt(p, len);
    KEEP_FRAME();
    return p;
}

__attribute__((noinline, noclone)) void myfree(void *p)
{
    unrecord_bt(p);
    free(p);
    KEEP_FRAME();
}

__attribute__((noinline, noclone)) void *test3(size_t len)
{
    char *p = mymalloc(len);
    if (p != NULL)
        memset(p, 0x5a, len);
    KEEP_FRAME();
    return p;
}

__attribute__((noinline, noclone)) void *test2(size_t len)
{
    void *p = test3(len);
    KEEP_FRAME();
    return p;
}

/* thread0: a new 20-byte block every 0.5 s that nobody frees (the leak to find). */
__attribute__((noinline, noclone)) static void *leaking_thread(void *arg)
{
    (void)arg;
    while (!atomic_load(&stopping)) {
        if (test2(LEAK_SIZE) == NULL)
            fprintf(stderr, "membt-demo: out of memory\n");
        sleep_ms(500);
    }
    return NULL;
}

/* thread1..4: take a block, hold it a little (longer for higher numbers), give it back. */
__attribute__((noinline, noclone)) static void *working_thread(void *arg)
{
    long number = (long)arg;
    while (!atomic_load(&stopping)) {
        void *block = test2(LEAK_SIZE * (size_t)number);
        sleep_ms(200 * number);
        myfree(block);
        sleep_ms(100);
    }
    return NULL;
}

static void *thread_main(void *arg)
{
    long number = (long)arg;
    char name[16];
    snprintf(name, sizeof name, "thread%ld", number);
    prctl(PR_SET_NAME, name, 0, 0, 0);  /* named before the first allocation: dumps show it */
    return number == 0 ? leaking_thread(arg) : working_thread(arg);
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? strtod(argv[1], NULL) : 10.0;
    if (seconds < 0)
        seconds = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);

    if (init_bt() != 0)
        fprintf(stderr, "membt-demo: init_bt() failed, running without the recorder\n");
    printf("membt-demo: %d threads for %g s; thread0 leaks %d bytes every 0.5 s\n", THREADS, seconds, LEAK_SIZE);

    pthread_t threads[THREADS];
    for (long i = 0; i < THREADS; i++) {
        int err = pthread_create(&threads[i], NULL, thread_main, (void *)i);
        if (err != 0) {
            fprintf(stderr, "membt-demo: pthread_create: %s\n", strerror(err));
            return 1;
        }
    }
    sleep_ms((long)(seconds * 1000));
    atomic_store(&stopping, 1);
    for (int i = 0; i < THREADS; i++)
        pthread_join(threads[i], NULL);

    membt_shutdown();  /* the last dump (reason exit) still holds thread0's leak */
    printf("membt-demo done\n");
    return 0;
}
