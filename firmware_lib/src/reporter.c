/* The reporter: its own thread, so an idle daemon still reports. It sleeps in poll() on a
 * self-pipe: the MEMBT_SIGNAL handler only writes a byte there (async-signal-safe) and the
 * thread dumps with reason=signal. One dump lock serialises timer, signal, API and exit dumps.
 * Fork: prepare takes every recorder lock, the parent releases them, the child releases them,
 * gets its own pipe and reporter (its pid shows in the next B record) - or, with MEMBT_FORK=off,
 * stops recording. */
#include "mbt_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define MBT_REPORTER_STACK (256u * 1024u)

mbt_lock mbt_dump_lock;

static int mbt_wake[2] = {-1, -1};
static pthread_t mbt_thread;
static int mbt_thread_running;
static int mbt_thread_done; /* set by the reporter as the last thing it does */
static int mbt_sig;
static struct sigaction mbt_old_action;
static int mbt_fork_locked;

long mbt_dump_now(const char *reason, unsigned wait_ms)
{
    if (!mbt_recording())
        return -1;
    if (wait_ms) {
        if (!mbt_lock_wait(&mbt_dump_lock, wait_ms))
            return -1;
    } else {
        mbt_lock_acquire(&mbt_dump_lock);
    }
    long n = mbt_recording() ? mbt_dump_run(reason) : -1;
    mbt_lock_release(&mbt_dump_lock);
    return n;
}

static void mbt_wake_up(char why)
{
    if (mbt_wake[1] >= 0) {
        ssize_t r = write(mbt_wake[1], &why, 1); /* a full pipe already means "wake up" */
        (void)r;
    }
}

static void *mbt_reporter_main(void *arg)
{
    (void)arg;
    /* libc may allocate for us here (resolver, loader): not the program's memory */
    mbt_in_recorder = 1;
    prctl(PR_SET_NAME, (unsigned long)"membt", 0, 0, 0);
    uint64_t next = 0;
    int reschedule = 1;
    for (;;) {
        uint32_t interval = __atomic_load_n(&mbt_run.cfg.interval_ms, __ATOMIC_RELAXED);
        uint64_t now = mbt_now_ms();
        if (reschedule) {
            next = now + interval;
            reschedule = 0;
        }
        int timeout = -1;
        if (interval)
            timeout = next <= now ? 0 : next - now > INT_MAX ? INT_MAX : (int)(next - now);
        struct pollfd p = {mbt_wake[0], POLLIN, 0};
        int want_signal = 0;
        if (poll(&p, 1, timeout) > 0) {
            char buf[64];
            ssize_t n;
            while ((n = read(mbt_wake[0], buf, sizeof buf)) > 0) {
                for (ssize_t i = 0; i < n; i++) {
                    if (buf[i] == 'q') {
                        __atomic_store_n(&mbt_thread_done, 1, __ATOMIC_RELEASE);
                        return NULL;
                    }
                    if (buf[i] == 's')
                        want_signal = 1;
                    if (buf[i] == 'c')
                        reschedule = 1;
                }
            }
        }
        if (want_signal)
            mbt_dump_now("signal", 0);
        if (reschedule || !interval)
            continue;
        now = mbt_now_ms();
        if (now >= next) {
            mbt_dump_now("timer", 0);
            next += interval; /* keep the cadence; after a long stall start over from now */
            if (next <= now)
                next = now + interval;
        }
    }
}

int mbt_reporter_running(void) { return mbt_thread_running; }

int mbt_reporter_start(const char **why)
{
    if (mbt_thread_running)
        return 0;
    if (mbt_wake[0] < 0 && pipe2(mbt_wake, O_CLOEXEC | O_NONBLOCK) < 0) {
        *why = "cannot create the reporter's pipe";
        return -1;
    }
    /* the reporter takes no signals: process-directed signals stay with the program's threads */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, MBT_REPORTER_STACK);
    mbt_thread_done = 0;
    int rc = pthread_create(&mbt_thread, &attr, mbt_reporter_main, NULL);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        *why = "cannot start the reporter thread";
        return -1;
    }
    mbt_thread_running = 1;
    return 0;
}

void mbt_reporter_stop(int wait_ms)
{
    if (!mbt_thread_running)
        return;
    mbt_wake_up('q');
    /* At exit or dlclose a reporter stuck on a slow output must not hold the program; but a
     * reporter that has finished is joined, so its code is not unmapped under it. */
    for (int waited = 0; waited < wait_ms && !__atomic_load_n(&mbt_thread_done, __ATOMIC_ACQUIRE); waited++) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    if (wait_ms < 0 || __atomic_load_n(&mbt_thread_done, __ATOMIC_ACQUIRE))
        pthread_join(mbt_thread, NULL);
    else
        pthread_detach(mbt_thread);
    mbt_thread_running = 0;
}

void mbt_reporter_poke(void) { mbt_wake_up('c'); }

static void mbt_on_signal(int sig)
{
    (void)sig;
    mbt_wake_up('s'); /* write() keeps errno intact on success; the byte is all we do here */
}

int mbt_signal_install(int sig, const char **why)
{
    if (sig == mbt_sig)
        return 0;
    mbt_signal_restore();
    if (!sig)
        return 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = mbt_on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    if (sigaction(sig, &sa, &mbt_old_action) < 0) {
        *why = "cannot install the MEMBT_SIGNAL handler";
        return -1;
    }
    mbt_sig = sig;
    return 0;
}

void mbt_signal_restore(void)
{
    if (mbt_sig)
        sigaction(mbt_sig, &mbt_old_action, NULL);
    mbt_sig = 0;
}

/* ---- fork ---- */

static void mbt_fork_prepare(void)
{
    mbt_fork_locked = 0;
    mbt_ctl_lock();
    if (!mbt_recording() || !mbt_env.fork_follow) {
        mbt_ctl_unlock();
        return;
    }
    /* the dump lock is not taken: a dump may be stuck on a slow console; the child starts its
     * dumps from scratch instead */
    mbt_stacks_lock();
    mbt_blocks_lock_all();
    mbt_fork_locked = 1;
}

static void mbt_fork_parent(void)
{
    if (!mbt_fork_locked)
        return;
    mbt_blocks_unlock_all();
    mbt_stacks_unlock();
    mbt_ctl_unlock();
}

static void mbt_fork_child(void)
{
    int was_running = mbt_thread_running;
    mbt_thread_running = 0; /* threads do not survive fork */
    if (!mbt_fork_locked) {
        if (mbt_recording()) /* MEMBT_FORK=off: the child only passes through to libc */
            __atomic_store_n(&mbt_state, MBT_OFF, __ATOMIC_RELEASE);
        return;
    }
    mbt_blocks_unlock_all();
    mbt_stacks_unlock();
    mbt_lock_release(&mbt_dump_lock);
    mbt_ctl_reset_child();
    mbt_dump_reset_numbering();
    mbt_sink_child();
    mbt_threads_after_fork(); /* the other threads' records are free again */
    /* the pipe is shared with the parent: a signal to the child must wake the child */
    if (mbt_wake[0] >= 0) {
        close(mbt_wake[0]);
        close(mbt_wake[1]);
        mbt_wake[0] = mbt_wake[1] = -1;
    }
    if (was_running) {
        const char *why = NULL;
        mbt_in_recorder++;
        if (mbt_reporter_start(&why) < 0) {
            __atomic_store_n(&mbt_state, MBT_FAILED, __ATOMIC_RELEASE);
            mbt_say_disabled("fork child", why);
        }
        mbt_in_recorder--;
    }
}

void mbt_fork_handlers_register(void)
{
    static int done;
    if (!done && pthread_atfork(mbt_fork_prepare, mbt_fork_parent, mbt_fork_child) == 0)
        done = 1;
}
