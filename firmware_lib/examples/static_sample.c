/* static-sample: firmware that links libmembt.a with the flags of share/membt/wrap.ldflags, so its
 * malloc/strdup/... calls reach the recorder through __wrap_* without LD_PRELOAD. It asks for one
 * dump itself with membt_dump() before it exits. Usage: static-sample */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "membt.h"

#define KEEP_FRAME() __asm__ volatile("" ::: "memory")

static char *volatile routes[8];

/* The leak: each route table reload copies the names and keeps only the last copy. */
__attribute__((noinline, noclone)) void reload_routes(int generation)
{
    for (int i = 0; i < 8; i++) {
        char name[32];
        snprintf(name, sizeof name, "route-%d-%d", generation, i);
        routes[i] = strdup(name);
    }
    KEEP_FRAME();
}

__attribute__((noinline, noclone)) void process_packets(void)
{
    for (int i = 0; i < 200; i++) {
        void *packet = malloc(1500);
        void *grown = realloc(packet, 3000);
        free(grown != NULL ? grown : packet);
    }
    KEEP_FRAME();
}

int main(void)
{
    if (init_bt() != 0)  /* as the seed asks: init in main (a no-op when the recorder already started) */
        fprintf(stderr, "static-sample: init_bt() failed\n");
    for (int generation = 0; generation < 4; generation++) {
        reload_routes(generation);
        process_packets();
    }
    membt_stats stats;
    membt_get_stats(&stats);
    printf("static-sample: recorder tracks %llu blocks\n", (unsigned long long)stats.live_blocks);
    fflush(stdout);
    if (membt_dump() < 0)
        fprintf(stderr, "static-sample: membt_dump() failed\n");
    printf("static-sample done\n");
    return 0;
}
