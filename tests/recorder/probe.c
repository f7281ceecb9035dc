/* Test helper for the recorder tests: distinct C call sites into membt_record and threads that race.
 * Built by tests/recorder/conftest.py against build/x86_64/lib/libmembt.so and loaded through cffi. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#include "membt.h"

#define KEEP_FRAME() __asm__ volatile("" ::: "memory")  /* no tail call: each site keeps its frame */

__attribute__((noinline, noclone)) int probe_site_a(uintptr_t addr, size_t len)
{
    int rc = membt_record((void *)addr, len);
    KEEP_FRAME();
    return rc;
}

__attribute__((noinline, noclone)) int probe_site_b(uintptr_t addr, size_t len)
{
    int rc = membt_record((void *)addr, len);
    KEEP_FRAME();
    return rc;
}

struct racer {
    pthread_t thread;
    int index;
    int blocks;
    int free_every;
    uintptr_t base;
    pthread_barrier_t *start;
    atomic_int *failures;
};

__attribute__((noinline, noclone)) static void *race(void *arg)
{
    struct racer *racer = arg;
    char name[16];
    snprintf(name, sizeof name, "racer%d", racer->index);
    pthread_setname_np(pthread_self(), name);
    pthread_barrier_wait(racer->start);
    uintptr_t first = racer->base + (uintptr_t)racer->index * (uintptr_t)racer->blocks * 64u;
    for (int i = 0; i < racer->blocks; i++)
        if (probe_site_a(first + (uintptr_t)i * 64u, (size_t)(i % 7 + 1)) != 0)
            atomic_fetch_add(racer->failures, 1);
    for (int i = 0; i < racer->blocks; i += racer->free_every)
        if (membt_unrecord((void *)(first + (uintptr_t)i * 64u)) != 0)
            atomic_fetch_add(racer->failures, 1);
    KEEP_FRAME();
    return NULL;
}

/* `threads` threads start together; each records `blocks` distinct addresses from probe_site_a
 * (sizes 1..7 bytes by index) and then forgets every `free_every`-th. Returns the failed calls. */
int probe_race(int threads, int blocks, int free_every, uintptr_t base)
{
    struct racer racers[64];
    pthread_barrier_t start;
    atomic_int failures = 0;
    if (threads < 1 || threads > 64 || free_every < 1)
        return -1;
    pthread_barrier_init(&start, NULL, (unsigned)threads);
    for (int i = 0; i < threads; i++) {
        racers[i] = (struct racer){.index = i, .blocks = blocks, .free_every = free_every, .base = base,
                                   .start = &start, .failures = &failures};
        if (pthread_create(&racers[i].thread, NULL, race, &racers[i]) != 0)
            return -1;
    }
    for (int i = 0; i < threads; i++)
        pthread_join(racers[i].thread, NULL);
    pthread_barrier_destroy(&start);
    return atomic_load(&failures);
}
