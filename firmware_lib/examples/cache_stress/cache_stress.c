/* cache-stress: call stacks that made MEMBT_UNWIND=cached report the wrong stack, or crash, before
 * the fixes of threads.c's "Found by an adversarial review", one case per run. A case exits 0 and
 * prints "cache-stress CASE done"; 2 when it cannot set its trap up here (it says why).
 * Usage: cache-stress realigned|zero-return|chain [rounds]  (default 4000)
 *        cache-stress smaller-stack
 *        cache-stress plugin-swap DIR   (DIR holds plugin-32.so and plugin-48.so, from plugin.c) */
#define _GNU_SOURCE
#include <alloca.h>
#include <dlfcn.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define NOINLINE __attribute__((noinline, noclone))
/* the trampolines here and plugin.c's frames are written for these two: the capture cache's */
#if defined(__x86_64__) || defined(__aarch64__)
#define HAVE_ASM 1
#endif
/* after a call: it cannot become a tail call, so the caller's frame stays on the stack */
#define KEEP_FRAME() __asm__ volatile("" ::: "memory")

#define KEEP 64
static void *volatile keep[KEEP];

static void keep_block(unsigned slot, void *block)
{
    free(keep[slot % KEEP]);
    keep[slot % KEEP] = block;
}

/* ---- one recursion whose levels all return to one call instruction ---- */
/* Every level's return address is the same word, so stacks of different depths look alike to a
 * cache that only compares return addresses: a frame in the wrong place goes unnoticed. */
typedef void (*step_fn)(int);
void descend(int n);
static step_fn volatile steps[2] = {NULL, descend}; /* [0]: what the innermost level calls */

NOINLINE void descend(int n)
{
    steps[n > 0](n - 1);
    KEEP_FRAME();
}

/* ---- realigned: x86_64 frames realigned through a DRAP register ---- */
/* gcc realigns the frame of an over-aligned local when the function also passes arguments on the
 * stack; its CFA is then read from a stack word, not computed from the frame pointer. */
NOINLINE static void *sink(int a, int b, int c, int d, int e, int f, int g, int h, char *buf)
{
    buf[a] = (char)(b + c + d + e + f + g + h);
    return malloc(16 + (size_t)h % 64);
}

NOINLINE static void realigned(int n)
{
    char buf[64] __attribute__((aligned(64)));
    keep_block((unsigned)n, sink(1, 2, 3, 4, 5, 6, 7, n, buf));
    __asm__ volatile("" ::"r"(buf) : "memory");
}

/* two callers whose frames differ by 16 bytes: realigned's frame pointer comes out the same */
NOINLINE static void small_caller(int n)
{
    realigned(n);
    KEEP_FRAME();
}

NOINLINE static void big_caller(int n)
{
    volatile long pad[2];
    pad[0] = n;
    realigned((int)pad[0]);
    KEEP_FRAME();
}

typedef void (*phase_fn)(unsigned long);

/* Whether the realignment moves the frame depends on the stack pointer modulo 64: run the
 * rounds at each 16-byte phase, whatever address the kernel gave the stack. */
NOINLINE static void at_phase(unsigned phase, phase_fn run, unsigned long rounds)
{
    char *shift = alloca(16 * (phase + 1));
    __asm__ volatile("" ::"r"(shift) : "memory");
    run(rounds);
    KEEP_FRAME();
}

/* 1..8 levels of descend above realigned: its frame pointer repeats at several depths */
static void realigned_in_recursion(unsigned long rounds)
{
    steps[0] = realigned;
    for (unsigned long r = 0; r < rounds; r++)
        descend((int)(r % 8));
}

static void realigned_from_two_callers(unsigned long rounds)
{
    static step_fn volatile callers[2] = {small_caller, big_caller};
    for (unsigned long r = 0; r < rounds; r++)
        callers[r & 1]((int)(r & 1));
}

static int case_realigned(unsigned long rounds)
{
    for (unsigned phase = 0; phase < 4; phase++) {
        at_phase(phase, realigned_in_recursion, rounds / 8);
        at_phase(phase, realigned_from_two_callers, rounds / 8);
    }
    return 0;
}

#if defined(HAVE_ASM)
static volatile uintptr_t probed;

NOINLINE static void probe(int n)
{
    (void)n;
    probed = (uintptr_t)__builtin_frame_address(0);
}

/* bytes one level of descend takes: the cases line frames up with it */
static size_t descend_frame(void)
{
    step_fn leaf = steps[0];
    steps[0] = probe;
    descend(1);
    uintptr_t deeper = probed;
    descend(0);
    steps[0] = leaf;
    return probed - deeper;
}

/* ---- coroutines: code entered on a stack of its own ---- */
/* sp = top, return address 0 (the usual end of a backtrace), jump to fn(n) */
void enter_zero(void *top, step_fn fn, int n);
/* sp = top, call fn(n) from a trampoline without unwind info (and frame pointer 0) */
void enter_call(void *top, step_fn fn, int n);
/* Hidden global symbols: as local labels, the aarch64 link (binutils 2.40) gave both one GOT
 * entry, and the program called enter_zero under both names. */
#define TRAMPOLINE(name) ".globl " name "\n.hidden " name "\n.type " name ", %function\n" name ":\n"
#if defined(__x86_64__)
__asm__(".text\n" TRAMPOLINE("enter_zero") " mov %rdi, %rsp\n pushq $0\n mov %edx, %edi\n xor %ebp, %ebp\n jmp *%rsi\n"
        TRAMPOLINE("enter_call") " mov %rdi, %rsp\n mov %edx, %edi\n xor %ebp, %ebp\n call *%rsi\n ud2\n");
#else
__asm__(".text\n" TRAMPOLINE("enter_zero") " mov sp, x0\n mov x29, xzr\n mov x30, xzr\n mov x3, x1\n mov w0, w2\n br x3\n"
        TRAMPOLINE("enter_call") " mov sp, x0\n mov x29, xzr\n mov x3, x1\n mov w0, w2\n blr x3\n brk #0\n");
#endif

/* a coroutine's entry function returns to its caller's stack with longjmp */
static jmp_buf back;

typedef void (*enter_fn)(void *top, step_fn fn, int n);

NOINLINE static void run_coroutine(enter_fn enter, void *top, step_fn fn, int n)
{
    if (setjmp(back) == 0)
        enter(top, fn, n);
}

NOINLINE static void allocate_and_leave(int n)
{
    keep_block((unsigned)n, malloc(16 + (size_t)n));
    KEEP_FRAME();
    longjmp(back, 1);
}

/* The same entry function at the same stack pointer, entered with a return address of 0 or from
 * a trampoline: everything but the word that ended the capture is the same. */
static int case_zero_return(unsigned long rounds)
{
    static char stack[64 << 10] __attribute__((aligned(64)));
    for (unsigned long r = 0; r < rounds; r++)
        run_coroutine(r & 1 ? enter_call : enter_zero, stack + sizeof stack, allocate_and_leave, (int)(r & 1));
    return 0;
}

NOINLINE static void descend_and_leave(int n)
{
    descend(n);
    longjmp(back, 1);
}

static void leaf_alloc(int n)
{
    keep_block((unsigned)n, malloc(32));
}

/* A coroutine stack unmapped and a smaller one mapped at its address, an inaccessible page above
 * it: the same allocation, at the same stack pointer, on the deep stack and then on the small
 * one. A layout learned on the deep stack reads slots above the small stack's top. */
static int case_smaller_stack(void)
{
    const size_t big = 1u << 20, small = 64u << 10, guard = 64u << 10;
    size_t frame = descend_frame();
    if ((big - small) % frame) {
        fprintf(stderr, "cache-stress: smaller-stack: descend's frame of %zu bytes does not divide %zu\n",
                frame, big - small);
        return 2;
    }
    char *base = mmap(NULL, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        perror("cache-stress: mmap");
        return 2;
    }
    steps[0] = leaf_alloc;
    int levels = (int)((big - small) / frame);
    for (int i = 0; i < 3; i++) /* learned, then hit */
        run_coroutine(enter_call, base + big, descend_and_leave, levels + 1);
    munmap(base, big);
    if (mmap(base, small, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != base ||
        mmap(base + small, guard, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != base + small) {
        perror("cache-stress: mmap at the old stack's address");
        return 2;
    }
    run_coroutine(enter_call, base + small, descend_and_leave, 1);
    munmap(base, small + guard);
    return 0;
}

/* ---- plugin-swap: other code at the same address after dlclose ---- */
/* Plugin A (frame 32) is unloaded and B (frame 48) loaded where A was. Called one level of
 * descend higher, B's call to malloc (at A's address) gives the hook the stack pointer A's did,
 * and the return address A's call left in what is now B's frame still matches. The swap is done
 * by a helper thread while the main thread spins, so the main thread's stack stays as it was. */
struct plugin_swap {
    const char *path_b;
    void *handle;
    step_fn lib_alloc;
    int frame;
    int state; /* 0 run A, 1 swap asked, 2 B loaded (or failed: lib_alloc NULL) */
};

static int load_plugin(const char *path, void **handle, step_fn *lib_alloc, int *frame)
{
    *handle = dlopen(path, RTLD_NOW);
    const int *size = *handle ? dlsym(*handle, "plugin_frame") : NULL;
    *lib_alloc = *handle ? (step_fn)dlsym(*handle, "lib_alloc") : NULL;
    if (!size || !*lib_alloc) {
        fprintf(stderr, "cache-stress: plugin %s: %s\n", path, dlerror());
        return -1;
    }
    *frame = *size;
    return 0;
}

static void *swap_plugins(void *arg)
{
    struct plugin_swap *swap = arg;
    while (__atomic_load_n(&swap->state, __ATOMIC_ACQUIRE) != 1) {
    }
    dlclose(swap->handle);
    if (load_plugin(swap->path_b, &swap->handle, &swap->lib_alloc, &swap->frame))
        swap->lib_alloc = NULL;
    __atomic_store_n(&swap->state, 2, __ATOMIC_RELEASE);
    return NULL;
}

static int case_plugin_swap(const char *dir)
{
    char path_a[4096], path_b[4096];
    snprintf(path_a, sizeof path_a, "%s/plugin-32.so", dir);
    snprintf(path_b, sizeof path_b, "%s/plugin-48.so", dir);
    struct plugin_swap swap = {path_b, NULL, NULL, 0, 0};
    int frame_a;
    if (load_plugin(path_a, &swap.handle, &swap.lib_alloc, &frame_a))
        return 2;
    size_t level = descend_frame();
    step_fn at_a = swap.lib_alloc;
    steps[0] = at_a;
    pthread_t helper;
    if (pthread_create(&helper, NULL, swap_plugins, &swap)) {
        fprintf(stderr, "cache-stress: plugin-swap: no helper thread\n");
        return 2;
    }
    const int rounds = 200;
    volatile int depth = 5; /* read anew each round: one call instruction for A's rounds and B's */
    for (int i = 0; i < rounds; i++) {
        if (i == rounds / 2) { /* no calls here: they would write over the stack below */
            __atomic_store_n(&swap.state, 1, __ATOMIC_RELEASE);
            while (__atomic_load_n(&swap.state, __ATOMIC_ACQUIRE) != 2) {
            }
            if (!swap.lib_alloc)
                break;
            steps[0] = swap.lib_alloc;
            depth = depth - 1; /* B's frame is one level of descend bigger */
        }
        descend(depth);
    }
    pthread_join(helper, NULL);
    if (!swap.lib_alloc)
        return 2;
    if (swap.lib_alloc != at_a || (size_t)(swap.frame - frame_a) != level) {
        fprintf(stderr, "cache-stress: plugin-swap: B at %p (A was at %p), frames %d and %d, descend's %zu: "
                "not the trap\n", (void *)swap.lib_alloc, (void *)at_a, frame_a, swap.frame, level);
        return 2;
    }
    dlclose(swap.handle);
    return 0;
}
#endif /* HAVE_ASM */

/* ---- chain: a plain call chain, one call stack ---- */
/* aarch64 code bound lazily left copies of return addresses around its frames: no stack was ever
 * cached there. A repeated call stack should hit the cache nearly every time. */
NOINLINE static void chain_leaf(int n)
{
    keep_block((unsigned)n, malloc(16 + (size_t)n));
    KEEP_FRAME();
}

NOINLINE static void chain_middle(int n)
{
    chain_leaf(n);
    KEEP_FRAME();
}

static int case_chain(unsigned long rounds)
{
    for (unsigned long r = 0; r < rounds; r++)
        chain_middle((int)(r % 8));
    return 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: cache-stress realigned|zero-return|chain [rounds] | smaller-stack | plugin-swap DIR\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    const char *name = argv[1];
    unsigned long rounds = argc > 2 ? strtoul(argv[2], NULL, 10) : 4000;
    int rc;
    if (!strcmp(name, "realigned")) {
        rc = case_realigned(rounds);
    } else if (!strcmp(name, "chain")) {
        rc = case_chain(rounds);
    } else if (!strcmp(name, "zero-return") || !strcmp(name, "smaller-stack") ||
               (!strcmp(name, "plugin-swap") && argc > 2)) {
#if defined(HAVE_ASM)
        rc = name[0] == 'z' ? case_zero_return(rounds) : name[0] == 's' ? case_smaller_stack()
                                                                      : case_plugin_swap(argv[2]);
#else
        fprintf(stderr, "cache-stress: %s: its assembly is written for x86_64 and aarch64 only\n", name);
        rc = 2;
#endif
    } else {
        return usage();
    }
    for (unsigned i = 0; i < KEEP; i++)
        free(keep[i]);
    if (rc == 0)
        printf("cache-stress %s done\n", name);
    return rc;
}
