/* idle-sample: allocates a few blocks it never frees, then sleeps without allocating, like a daemon
 * waiting for events. Its dumps must still come (the reporter has its own thread), and a signal
 * chosen with MEMBT_SIGNAL must give one on demand. Usage: idle-sample [seconds]  (default 4) */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KEEP_FRAME() __asm__ volatile("" ::: "memory")

static void *config[3];

__attribute__((noinline, noclone)) void load_config(void)
{
    for (int i = 0; i < 3; i++) {
        config[i] = malloc(100);
        if (config[i] != NULL)
            memset(config[i], 'c', 100);
    }
    KEEP_FRAME();
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? strtod(argv[1], NULL) : 4.0;
    load_config();
    printf("idle-sample sleeping %g s\n", seconds);
    fflush(stdout);  /* the tests wait for this line before they signal */

    struct timespec left = {(time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9)};
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
        /* a dump signal interrupts the sleep: sleep the rest */
    }
    printf("idle-sample done\n");
    return 0;
}
