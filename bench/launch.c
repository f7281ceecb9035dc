/* Start one benchmark process and measure it: wall time from fork to reap and peak RSS from wait4.
 * It exists because Linux keeps a process's RSS high-water mark across execve: a program forked
 * straight from Python would report at least Python's own RSS. Forked from this small process, it
 * reports its own.
 * The environment meant for the program (LD_PRELOAD above all) is given as arguments and set only in
 * the child, so this helper itself runs uninstrumented.
 * usage: launch RESULT_FILE TIMEOUT_S [VAR=VALUE ...] -- PROGRAM [ARGS...]
 * RESULT_FILE gets "wall_ns maxrss_kib exit_code timed_out"; exit_code is -signal for a signal. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t child_pid;
static volatile sig_atomic_t timed_out;

static void on_alarm(int sig)
{
    (void)sig;
    timed_out = 1;
    if (child_pid > 0)
        kill(child_pid, SIGKILL);
}

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    int sep = 3;
    while (sep < argc && strcmp(argv[sep], "--") != 0)
        sep++;
    if (sep + 1 >= argc) {
        fprintf(stderr, "usage: launch RESULT_FILE TIMEOUT_S [VAR=VALUE ...] -- PROGRAM [ARGS...]\n");
        return 2;
    }
    FILE *result = fopen(argv[1], "w");
    if (result == NULL) {
        fprintf(stderr, "launch: %s: %s\n", argv[1], strerror(errno));
        return 2;
    }
    unsigned timeout = (unsigned)strtoul(argv[2], NULL, 10);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);

    long long start = now_ns();
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "launch: fork: %s\n", strerror(errno));
        return 2;
    }
    if (pid == 0) {
        for (int i = 3; i < sep; i++)
            putenv(argv[i]);
        execvp(argv[sep + 1], &argv[sep + 1]);
        fprintf(stderr, "launch: %s: %s\n", argv[sep + 1], strerror(errno));
        _exit(127);
    }
    child_pid = pid;
    alarm(timeout);
    int status;
    struct rusage usage;
    pid_t got;
    do
        got = wait4(pid, &status, 0, &usage);
    while (got < 0 && errno == EINTR);
    long long wall = now_ns() - start;
    alarm(0);
    if (got < 0) {
        fprintf(stderr, "launch: wait4: %s\n", strerror(errno));
        return 2;
    }
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    fprintf(result, "%lld %ld %d %d\n", wall, usage.ru_maxrss, code, (int)timed_out);
    return fclose(result) == 0 ? 0 : 2;
}
