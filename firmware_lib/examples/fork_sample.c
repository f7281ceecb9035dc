/* fork-sample: forks while another thread keeps allocating, so a fork can land while the recorder
 * holds a lock. Each child allocates and frees, then exits; the parent waits for every child.
 * Usage (with the recorder preloaded): fork-sample [forks [busy]]   (default 8 forks, busy 1;
 * busy 0 forks from a single thread: GCC 12's ASan allocator is not fork-safe with threads) */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define KEEP_FRAME() __asm__ volatile("" ::: "memory")

static atomic_int stopping;

__attribute__((noinline, noclone)) static void *busy_allocator(void *arg)
{
    (void)arg;
    prctl(PR_SET_NAME, "busy", 0, 0, 0);
    while (!atomic_load(&stopping)) {
        char *text = strdup("allocated while the main thread forks");
        void *block = malloc(64 + (size_t)(rand() % 512));
        free(block);
        free(text);
    }
    KEEP_FRAME();
    return NULL;
}

__attribute__((noinline, noclone)) static int child_work(int child)
{
    void *blocks[100];
    for (int round = 0; round < 10; round++) {
        for (int i = 0; i < 100; i++)
            blocks[i] = malloc((size_t)(16 + i));
        for (int i = 0; i < 100; i++)
            free(blocks[i]);
    }
    char *note = strdup("a child's block that lives to its exit");
    printf("fork-sample child %d done\n", child);
    fflush(stdout);
    KEEP_FRAME();
    return note == NULL;
}

int main(int argc, char **argv)
{
    int forks = argc > 1 ? atoi(argv[1]) : 8;
    int with_busy_thread = argc > 2 ? atoi(argv[2]) != 0 : 1;
    pthread_t busy;
    if (with_busy_thread && pthread_create(&busy, NULL, busy_allocator, NULL) != 0) {
        fprintf(stderr, "fork-sample: pthread_create failed\n");
        return 1;
    }
    int failures = 0;
    for (int child = 0; child < forks; child++) {
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "fork-sample: fork: %s\n", strerror(errno));
            return 1;
        }
        if (pid == 0)
            exit(child_work(child));  /* exit(), not _exit(): atexit handlers run in the child too */
        int status = 0;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            failures++;
    }
    atomic_store(&stopping, 1);
    if (with_busy_thread)
        pthread_join(busy, NULL);
    printf("fork-sample parent done: %d children, %d failed\n", forks, failures);
    return failures != 0;
}
