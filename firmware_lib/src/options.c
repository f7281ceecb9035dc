/* Run-time options: every MEMBT_* environment variable goes through the one descriptor table
 * below. A bad value prints one warning line naming the variable and keeps the default.
 *
 * | variable           | default  | meaning                                                          |
 * |--------------------|----------|------------------------------------------------------------------|
 * | MEMBT_LEAK_AGE     | 60       | seconds (decimals allowed) after which a live block is "old"     |
 * | MEMBT_INTERVAL     | 20       | seconds (decimals allowed) between two dumps; 0 = on demand only  |
 * | MEMBT_OUTPUT       | stderr   | stderr, stdout, fd:N, tcp:HOST:PORT, or a file/device path       |
 * |                    |          | (opened O_APPEND|O_CREAT|O_NOCTTY, e.g. /dev/ttyS0)              |
 * | MEMBT_FORMAT       | wire     | wire (membt-host, docs/protocol.md) or text (for a human)        |
 * | MEMBT_DEPTH        | 16       | frames kept per call stack, 1..64                                |
 * | MEMBT_TOP          | 10       | call stacks listed per dump, 1..1000                             |
 * | MEMBT_BUDGET       | 64M      | bytes reserved once with mmap for all tables (K/M/G suffix),     |
 * |                    |          | at least 64K                                                     |
 * | MEMBT_SIGNAL       | 0        | signal number or name (USR2, SIGUSR2) that asks for a dump; 0 =  |
 * |                    |          | none (needs the reporter thread)                                 |
 * | MEMBT_UNWIND       | auto     | auto, fp (frame pointers), unwind (libgcc _Unwind_Backtrace,     |
 * |                    |          | ARM EHABI), glibc (backtrace(), not on musl), cached (unwind     |
 * |                    |          | behind a per-thread cache of validated captures; x86_64, aarch64)|
 * | MEMBT_UNWIND_VERIFY| 0        | 1: every cache hit is checked against a fresh capture; the C     |
 * |                    |          | record counts unwind_verified and unwind_mismatches              |
 * | MEMBT_FORK         | on       | on: a forked child keeps recording (own reporter, own pid);      |
 * |                    |          | off: the child stops recording                                   |
 * | MEMBT_DISABLE      | 0        | 1: the preloaded/linked hooks only pass through to libc          |
 * | MEMBT_QUIET        | 0        | 1: no start banner on stderr                                     |
 * | MEMBT_DUMP_AT_EXIT | 1        | 1: a last dump (reason exit) when the program exits              |
 */
#include "mbt_internal.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

#define MBT_MIN_BUDGET (64u * 1024u)
#define MBT_MAX_SECONDS 4294967u /* ms fit in 32 bits */

enum mbt_opt_kind {
    MBT_OPT_SECONDS, /* uint32_t milliseconds, written in seconds with up to 3 decimals */
    MBT_OPT_COUNT,   /* uint32_t whole number */
    MBT_OPT_BYTES,   /* size_t, optional K/M/G suffix (powers of 1024) */
    MBT_OPT_CHOICE,  /* char array, one of choices ("a|b|c") */
    MBT_OPT_OUTPUT,  /* char array, checked by the sink */
    MBT_OPT_SIGNAL,  /* int, number or name */
    MBT_OPT_SWITCH,  /* int 0/1: 1/0, on/off, yes/no, true/false */
};

struct mbt_option {
    const char *env;
    enum mbt_opt_kind kind;
    size_t offset; /* into struct mbt_settings */
    size_t size;   /* of a char array */
    uint64_t min, max;
    const char *choices;
    const char *expect; /* shown in the warning */
};

#define MBT_AT(field) offsetof(struct mbt_settings, field)
#define MBT_SZ(field) sizeof(((struct mbt_settings *)0)->field)

static const struct mbt_option mbt_options[] = {
    {"MEMBT_LEAK_AGE", MBT_OPT_SECONDS, MBT_AT(cfg.leak_age_ms), 0, 0, MBT_MAX_SECONDS, NULL,
     "seconds, e.g. 60 or 2.5"},
    {"MEMBT_INTERVAL", MBT_OPT_SECONDS, MBT_AT(cfg.interval_ms), 0, 0, MBT_MAX_SECONDS, NULL,
     "seconds, e.g. 20 or 0.5; 0 = on demand only"},
    {"MEMBT_OUTPUT", MBT_OPT_OUTPUT, MBT_AT(cfg.output), MBT_SZ(cfg.output), 0, 0, NULL,
     "stderr, stdout, fd:N, tcp:HOST:PORT or a path"},
    {"MEMBT_FORMAT", MBT_OPT_CHOICE, MBT_AT(cfg.format), MBT_SZ(cfg.format), 0, 0, "wire|text", "wire or text"},
    {"MEMBT_DEPTH", MBT_OPT_COUNT, MBT_AT(cfg.depth), 0, 1, MEMBT_MAX_DEPTH, NULL, "a whole number 1..64"},
    {"MEMBT_TOP", MBT_OPT_COUNT, MBT_AT(cfg.top), 0, 1, MBT_TOP_MAX, NULL, "a whole number 1..1000"},
    {"MEMBT_BUDGET", MBT_OPT_BYTES, MBT_AT(cfg.budget_bytes), 0, MBT_MIN_BUDGET, SIZE_MAX / 2, NULL,
     "bytes with optional K/M/G suffix, at least 64K"},
    {"MEMBT_SIGNAL", MBT_OPT_SIGNAL, MBT_AT(cfg.dump_signal), 0, 0, 0, NULL, "0, a signal number or a name like USR2"},
    {"MEMBT_UNWIND", MBT_OPT_CHOICE, MBT_AT(cfg.unwind), MBT_SZ(cfg.unwind), 0, 0, "auto|fp|unwind|glibc|cached",
     "auto, fp, unwind, glibc or cached"},
    {"MEMBT_UNWIND_VERIFY", MBT_OPT_SWITCH, MBT_AT(unwind_verify), 0, 0, 1, NULL, "0 or 1"},
    {"MEMBT_FORK", MBT_OPT_SWITCH, MBT_AT(fork_follow), 0, 0, 1, NULL, "on or off"},
    {"MEMBT_DISABLE", MBT_OPT_SWITCH, MBT_AT(disable), 0, 0, 1, NULL, "0 or 1"},
    {"MEMBT_QUIET", MBT_OPT_SWITCH, MBT_AT(quiet), 0, 0, 1, NULL, "0 or 1"},
    {"MEMBT_DUMP_AT_EXIT", MBT_OPT_SWITCH, MBT_AT(dump_at_exit), 0, 0, 1, NULL, "0 or 1"},
};

struct mbt_settings mbt_env;
static int mbt_env_loaded;

static void mbt_copy_text(char *dst, size_t size, const char *src)
{
    size_t n = strlen(src);
    if (n >= size)
        n = size - 1;
    memcpy(dst, src, n);
    dst[n] = 0;
}

void mbt_options_defaults(struct mbt_settings *s)
{
    memset(s, 0, sizeof *s);
    s->cfg.leak_age_ms = MEMBT_DEFAULT_LEAK_AGE_MS;
    s->cfg.interval_ms = MEMBT_DEFAULT_INTERVAL_MS;
    s->cfg.depth = MEMBT_DEFAULT_DEPTH;
    s->cfg.top = MEMBT_DEFAULT_TOP;
    s->cfg.budget_bytes = MEMBT_DEFAULT_BUDGET;
    mbt_copy_text(s->cfg.output, sizeof s->cfg.output, MEMBT_DEFAULT_OUTPUT);
    mbt_copy_text(s->cfg.format, sizeof s->cfg.format, MEMBT_DEFAULT_FORMAT);
    s->cfg.dump_signal = MEMBT_DEFAULT_SIGNAL;
    mbt_copy_text(s->cfg.unwind, sizeof s->cfg.unwind, MEMBT_DEFAULT_UNWIND);
    s->cfg.start_reporter = 1;
    s->fork_follow = MEMBT_DEFAULT_FORK;
    s->disable = MEMBT_DEFAULT_DISABLE;
    s->quiet = MEMBT_DEFAULT_QUIET;
    s->dump_at_exit = MEMBT_DEFAULT_DUMP_AT_EXIT;
}

/* "12", "2.5", "0.125" -> ms; -1 on anything else */
static int mbt_parse_seconds(const char *t, uint64_t max_s, uint64_t *ms)
{
    uint64_t whole = 0, frac = 0, scale = 100;
    const char *p = t;
    if (*p < '0' || *p > '9')
        return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        whole = whole * 10 + (uint64_t)(*p - '0');
        if (whole > max_s)
            return -1;
    }
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9')
            return -1;
        for (; *p >= '0' && *p <= '9'; p++) {
            frac += (uint64_t)(*p - '0') * scale; /* beyond milliseconds: ignored */
            scale /= 10;
        }
    }
    if (*p)
        return -1;
    *ms = whole * 1000 + frac;
    return *ms > max_s * 1000 ? -1 : 0;
}

static int mbt_parse_uint(const char *t, uint64_t max, uint64_t *v, const char **end)
{
    uint64_t x = 0;
    const char *p = t;
    if (*p < '0' || *p > '9')
        return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (x > (max - (uint64_t)(*p - '0')) / 10)
            return -1;
        x = x * 10 + (uint64_t)(*p - '0');
    }
    *v = x;
    *end = p;
    return 0;
}

static int mbt_parse_bytes(const char *t, uint64_t max, uint64_t *v)
{
    const char *p;
    uint64_t x, mult = 1;
    if (mbt_parse_uint(t, max, &x, &p) < 0)
        return -1;
    switch (*p) {
    case 'k': case 'K': mult = 1024u; p++; break;
    case 'm': case 'M': mult = 1024u * 1024u; p++; break;
    case 'g': case 'G': mult = 1024u * 1024u * 1024u; p++; break;
    default: break;
    }
    if (*p || (x && x > max / mult))
        return -1;
    *v = x * mult;
    return 0;
}

static int mbt_parse_switch(const char *t)
{
    static const char *const on[] = {"1", "on", "yes", "true"}, *const off[] = {"0", "off", "no", "false"};
    for (unsigned i = 0; i < 4; i++) {
        if (!strcasecmp(t, on[i]))
            return 1;
        if (!strcasecmp(t, off[i]))
            return 0;
    }
    return -1;
}

static int mbt_is_choice(const char *t, const char *choices)
{
    size_t n = strlen(t);
    for (const char *c = choices; *c;) {
        const char *bar = strchr(c, '|');
        size_t len = bar ? (size_t)(bar - c) : strlen(c);
        if (len == n && !memcmp(c, t, n))
            return 1;
        c += len + (bar ? 1 : 0);
    }
    return 0;
}

static const struct {
    const char *name;
    int sig;
} mbt_signals[] = {
    {"HUP", SIGHUP}, {"INT", SIGINT}, {"QUIT", SIGQUIT}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2},
    {"PIPE", SIGPIPE}, {"ALRM", SIGALRM}, {"TERM", SIGTERM}, {"CHLD", SIGCHLD}, {"CONT", SIGCONT},
    {"TSTP", SIGTSTP}, {"TTIN", SIGTTIN}, {"TTOU", SIGTTOU}, {"URG", SIGURG}, {"XCPU", SIGXCPU},
    {"XFSZ", SIGXFSZ}, {"VTALRM", SIGVTALRM}, {"PROF", SIGPROF}, {"WINCH", SIGWINCH}, {"IO", SIGIO},
    {"SYS", SIGSYS},
};

const char *mbt_signal_name(int sig)
{
    for (unsigned i = 0; i < sizeof mbt_signals / sizeof mbt_signals[0]; i++)
        if (mbt_signals[i].sig == sig)
            return mbt_signals[i].name;
    return NULL;
}

int mbt_signal_from_text(const char *t)
{
    uint64_t n;
    const char *end;
    if (mbt_parse_uint(t, 1024, &n, &end) == 0 && !*end) {
        if (n == 0)
            return 0;
        if (n >= (uint64_t)NSIG || n == SIGKILL || n == SIGSTOP)
            return -1;
        return (int)n;
    }
    if (!strncasecmp(t, "SIG", 3))
        t += 3;
    for (unsigned i = 0; i < sizeof mbt_signals / sizeof mbt_signals[0]; i++)
        if (!strcasecmp(t, mbt_signals[i].name))
            return mbt_signals[i].sig;
    if (!strncasecmp(t, "RTMIN+", 6) && mbt_parse_uint(t + 6, 64, &n, &end) == 0 && !*end &&
        SIGRTMIN + (int)n <= SIGRTMAX)
        return SIGRTMIN + (int)n;
    return -1;
}

/* The current (default) value of an option in the form the user would write it. */
static void mbt_option_value(struct mbt_buf *b, const struct mbt_option *o, const struct mbt_settings *s)
{
    const char *field = (const char *)s + o->offset;
    switch (o->kind) {
    case MBT_OPT_SECONDS: mbt_buf_secs_exact(b, *(const uint32_t *)field); break;
    case MBT_OPT_COUNT: mbt_buf_u64(b, *(const uint32_t *)field); break;
    case MBT_OPT_BYTES: mbt_buf_bytes(b, *(const size_t *)field); break;
    case MBT_OPT_CHOICE:
    case MBT_OPT_OUTPUT: mbt_buf_str(b, field); break;
    case MBT_OPT_SIGNAL: {
        const char *name = mbt_signal_name(*(const int *)field);
        if (name)
            mbt_buf_str(b, name);
        else
            mbt_buf_u64(b, (uint64_t)*(const int *)field);
        break;
    }
    case MBT_OPT_SWITCH:
        if (o->offset == MBT_AT(fork_follow))
            mbt_buf_str(b, *(const int *)field ? "on" : "off");
        else
            mbt_buf_u64(b, (uint64_t)*(const int *)field);
        break;
    }
}

static void mbt_option_warn(const struct mbt_option *o, const char *text, const char *why,
                            const struct mbt_settings *s)
{
    char mem[512];
    struct mbt_buf b;
    mbt_buf_init(&b, mem, sizeof mem);
    mbt_buf_str(&b, "ignoring ");
    mbt_buf_str(&b, o->env);
    mbt_buf_char(&b, '=');
    mbt_buf_escaped(&b, text, 64);
    mbt_buf_str(&b, " (expected ");
    mbt_buf_str(&b, why ? why : o->expect);
    mbt_buf_str(&b, "), keeping ");
    mbt_option_value(&b, o, s);
    mbt_say_buf(&b);
}

static void mbt_option_apply(const struct mbt_option *o, const char *text, struct mbt_settings *s)
{
    char *field = (char *)s + o->offset;
    uint64_t v;
    const char *end, *why = NULL;
    int x;
    switch (o->kind) {
    case MBT_OPT_SECONDS:
        if (mbt_parse_seconds(text, o->max, &v) < 0)
            break;
        *(uint32_t *)field = (uint32_t)v;
        return;
    case MBT_OPT_COUNT:
        if (mbt_parse_uint(text, o->max, &v, &end) < 0 || *end || v < o->min)
            break;
        *(uint32_t *)field = (uint32_t)v;
        return;
    case MBT_OPT_BYTES:
        if (mbt_parse_bytes(text, o->max, &v) < 0 || v < o->min)
            break;
        *(size_t *)field = (size_t)v;
        return;
    case MBT_OPT_CHOICE:
        if (!mbt_is_choice(text, o->choices))
            break;
        mbt_copy_text(field, o->size, text);
        return;
    case MBT_OPT_OUTPUT:
        if (strlen(text) >= o->size)
            why = "at most 255 characters";
        else if ((why = mbt_sink_check(text)) == NULL) {
            mbt_copy_text(field, o->size, text);
            return;
        }
        break;
    case MBT_OPT_SIGNAL:
        if ((x = mbt_signal_from_text(text)) < 0)
            break;
        *(int *)field = x;
        return;
    case MBT_OPT_SWITCH:
        if ((x = mbt_parse_switch(text)) < 0)
            break;
        *(int *)field = x;
        return;
    }
    mbt_option_warn(o, text, why, s);
}

void mbt_options_from_env(struct mbt_settings *s)
{
    for (unsigned i = 0; i < sizeof mbt_options / sizeof mbt_options[0]; i++) {
        const char *text = getenv(mbt_options[i].env);
        if (text)
            mbt_option_apply(&mbt_options[i], text, s);
    }
}

/* The process-wide switches are taken from the first reading of the environment. */
static void mbt_env_store(const struct mbt_settings *s)
{
    if (!__atomic_load_n(&mbt_env_loaded, __ATOMIC_ACQUIRE)) {
        mbt_env = *s;
        __atomic_store_n(&mbt_env_loaded, 1, __ATOMIC_RELEASE);
    }
}

void mbt_env_load_once(void)
{
    if (__atomic_load_n(&mbt_env_loaded, __ATOMIC_ACQUIRE))
        return;
    struct mbt_settings s;
    mbt_options_defaults(&s);
    mbt_options_from_env(&s);
    mbt_env_store(&s);
}

MBT_EXPORT void membt_config_init(membt_config *cfg)
{
    struct mbt_settings s;
    mbt_options_defaults(&s);
    mbt_options_from_env(&s);
    mbt_env_store(&s);
    *cfg = s.cfg;
}
