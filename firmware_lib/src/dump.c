/* One dump: age scan, top call stacks, module map, then lines in the wire format of
 * docs/protocol.md (marker, numbering, CRC-32 per line) or as text for a human on the console.
 * All buffers are static: a dump never allocates, and its size is bounded by MEMBT_TOP/DEPTH. */
#include "mbt_internal.h"

#include <string.h>
#include <unistd.h>

#define MBT_LINE_MAX 4096 /* protocol limit */
#define MBT_MODULES_MAX 256
#define MBT_PATH_MAX_IN 1024 /* a longer path is cut: its escaped form must fit in one line */

struct mbt_group {
    uint32_t id, oldest_ms;
    size_t live_blocks, live_bytes, old_blocks, old_bytes;
};

/* Writes of at most 4096 bytes of whole lines: atomic on pipes, so dumps of a parent and a
 * forked child, or the program's own output, do not cut our lines in half. */
static char mbt_out_mem[4096];
static char mbt_line_mem[MBT_LINE_MAX];
static struct mbt_group mbt_groups[MBT_TOP_MAX];
static struct mbt_module mbt_mods[MBT_MODULES_MAX];
static char mbt_mod_arena[16384];
static char mbt_exe[MBT_PATH_MAX_IN + 1];
static unsigned long mbt_dump_no;

struct mbt_dump {
    struct mbt_buf out, line;
    unsigned long no;
    unsigned seq;
    long written;
    int failed;
    int text;
};

void mbt_dump_reset_numbering(void) { mbt_dump_no = 0; }

/* zlib's CRC-32 (reflected 0xEDB88320), a nibble at a time: small table, fast enough for lines */
static uint32_t mbt_crc32(const char *p, size_t n)
{
    static const uint32_t t[16] = {0x00000000, 0x1db71064, 0x3b6e20c8, 0x26d930ac, 0x76dc4190, 0x6b6b51f4,
                                   0x4db26158, 0x5005713c, 0xedb88320, 0xf00f9344, 0xd6d6a3e8, 0xcb61b38c,
                                   0x9b64c2b0, 0x86d3d2d4, 0xa00ae278, 0xbdbdf21c};
    uint32_t c = ~0u;
    for (size_t i = 0; i < n; i++) {
        c ^= (unsigned char)p[i];
        c = (c >> 4) ^ t[c & 15];
        c = (c >> 4) ^ t[c & 15];
    }
    return ~c;
}

static void mbt_flush(struct mbt_dump *d)
{
    if (!d->out.len)
        return;
    if (!d->failed) {
        long n = mbt_sink_write(d->out.p, d->out.len);
        if (n < 0)
            d->failed = 1;
        else
            d->written += n;
    }
    d->out.len = 0;
}

static struct mbt_buf *mbt_line(struct mbt_dump *d, char tag)
{
    struct mbt_buf *l = &d->line;
    mbt_buf_init(l, mbt_line_mem, sizeof mbt_line_mem - 12); /* room for " *crc\n" */
    if (d->text)
        return l;
    mbt_buf_str(l, "@MBT ");
    mbt_buf_u64(l, MEMBT_WIRE_VERSION);
    mbt_buf_char(l, ' ');
    mbt_buf_u64(l, d->no);
    mbt_buf_char(l, ' ');
    mbt_buf_u64(l, d->seq);
    mbt_buf_char(l, ' ');
    mbt_buf_char(l, tag);
    return l;
}

static void mbt_line_end(struct mbt_dump *d)
{
    static const char digits[] = "0123456789abcdef";
    struct mbt_buf *l = &d->line;
    if (!d->text) {
        uint32_t crc = mbt_crc32(l->p, l->len);
        char tail[10] = {' ', '*'};
        for (int i = 0; i < 8; i++)
            tail[2 + i] = digits[(crc >> (28 - 4 * i)) & 15];
        memcpy(l->p + l->len, tail, sizeof tail);
        l->len += sizeof tail;
    }
    l->p[l->len++] = '\n';
    if (d->out.len + l->len > d->out.cap)
        mbt_flush(d);
    mbt_buf_mem(&d->out, l->p, l->len);
    d->seq++;
}

static void mbt_kv(struct mbt_buf *l, const char *key, uint64_t v)
{
    mbt_buf_char(l, ' ');
    mbt_buf_str(l, key);
    mbt_buf_char(l, '=');
    mbt_buf_u64(l, v);
}

static int mbt_group_worse(const struct mbt_group *a, const struct mbt_group *b)
{
    if (a->old_bytes != b->old_bytes)
        return a->old_bytes < b->old_bytes;
    if (a->live_bytes != b->live_bytes)
        return a->live_bytes < b->live_bytes;
    return a->id > b->id;
}

/* Keep the best `top` groups in a min-heap whose root is the worst kept: O(stacks log top). */
static void mbt_heap_down(struct mbt_group *h, unsigned n, unsigned i)
{
    for (;;) {
        unsigned l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && mbt_group_worse(&h[l], &h[w]))
            w = l;
        if (r < n && mbt_group_worse(&h[r], &h[w]))
            w = r;
        if (w == i)
            return;
        struct mbt_group t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

static void mbt_heap_up(struct mbt_group *h, unsigned i)
{
    while (i) {
        unsigned p = (i - 1) / 2;
        if (!mbt_group_worse(&h[i], &h[p]))
            return;
        struct mbt_group t = h[i];
        h[i] = h[p];
        h[p] = t;
        i = p;
    }
}

struct mbt_selection {
    unsigned n;
    uint64_t groups_total;
};

static void mbt_select(const struct mbt_age_scan *scan, uint32_t nstacks, unsigned top, struct mbt_selection *sel)
{
    sel->n = 0;
    sel->groups_total = 0;
    for (uint32_t id = 0; id < nstacks; id++) {
        struct mbt_group g;
        g.live_blocks = scan[id].live_blocks;
        if (!g.live_blocks)
            continue;
        sel->groups_total++;
        g.id = id;
        g.live_bytes = scan[id].live_bytes;
        g.old_blocks = scan[id].old_blocks;
        g.old_bytes = scan[id].old_bytes;
        g.oldest_ms = scan[id].oldest_age * MBT_TICK_MS;
        if (sel->n < top) {
            mbt_groups[sel->n] = g;
            mbt_heap_up(mbt_groups, sel->n++);
        } else if (mbt_group_worse(&mbt_groups[0], &g)) {
            mbt_groups[0] = g;
            mbt_heap_down(mbt_groups, sel->n, 0);
        }
    }
    /* best first */
    for (unsigned i = 1; i < sel->n; i++) {
        struct mbt_group g = mbt_groups[i];
        unsigned j = i;
        for (; j && mbt_group_worse(&mbt_groups[j - 1], &g); j--)
            mbt_groups[j] = mbt_groups[j - 1];
        mbt_groups[j] = g;
    }
}

static int mbt_module_wanted(uintptr_t lo, uintptr_t hi, void *arg)
{
    const struct mbt_selection *sel = arg;
    for (unsigned i = 0; i < sel->n; i++) {
        const struct mbt_stack *s = mbt_stack_get(mbt_groups[i].id);
        if (!mbt_groups[i].id)
            continue;
        const uintptr_t *f = mbt_stack_frames(s);
        for (unsigned k = 0; k < s->nframes; k++)
            if (f[k] >= lo && f[k] < hi)
                return 1;
    }
    return 0;
}

static const struct mbt_module *mbt_module_of(unsigned nmods, uintptr_t addr)
{
    for (unsigned i = 0; i < nmods; i++)
        if (addr >= mbt_mods[i].lo && addr < mbt_mods[i].hi)
            return &mbt_mods[i];
    return NULL;
}

static const char *mbt_basename(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

struct mbt_dump_input {
    const char *reason;
    const membt_config *cfg;
    uint64_t up_ms;
    struct mbt_scan_totals tot;
    struct mbt_selection sel;
    struct mbt_thread_totals threads;
    unsigned nmods;
};

static void mbt_emit_wire(struct mbt_dump *d, const struct mbt_dump_input *in)
{
    struct mbt_buf *l;
    unsigned nstack_lines = 0;

    l = mbt_line(d, 'B');
    mbt_kv(l, "pid", (uint64_t)getpid());
    mbt_kv(l, "up_ms", in->up_ms);
    mbt_kv(l, "leak_age_ms", in->cfg->leak_age_ms);
    mbt_kv(l, "interval_ms", in->cfg->interval_ms);
    mbt_kv(l, "depth", in->cfg->depth);
    mbt_kv(l, "top", in->cfg->top);
    mbt_kv(l, "ptr_bits", sizeof(void *) * 8);
    mbt_buf_str(l, " reason=");
    mbt_buf_str(l, in->reason);
    mbt_buf_str(l, " exe=");
    mbt_buf_escaped(l, mbt_exe, MBT_PATH_MAX_IN);
    mbt_line_end(d);

    l = mbt_line(d, 'C');
    mbt_kv(l, "live_blocks", in->tot.live_blocks);
    mbt_kv(l, "live_bytes", in->tot.live_bytes);
    mbt_kv(l, "old_blocks", in->tot.old_blocks);
    mbt_kv(l, "old_bytes", in->tot.old_bytes);
    mbt_kv(l, "stacks", mbt_stacks_count());
    mbt_kv(l, "groups", in->sel.groups_total);
    mbt_kv(l, "block_cap", mbt_blocks_capacity());
    mbt_kv(l, "stack_cap", mbt_regions.stack_cap);
    mbt_kv(l, "dropped_blocks", mbt_load(mbt_counters.dropped_blocks));
    mbt_kv(l, "dropped_stacks", mbt_load(mbt_counters.dropped_stacks));
    mbt_kv(l, "truncated_stacks", in->threads.truncated);
    mbt_kv(l, "unknown_frees", mbt_load(mbt_counters.unknown_frees));
    mbt_kv(l, "budget_used", mbt_budget_used(&mbt_regions));
    mbt_kv(l, "budget_total", mbt_regions.total);
    if (mbt_unwind_cached()) { /* how the capture cache did (a reader ignores keys it does not know) */
        mbt_kv(l, "unwind_cache_hits", in->threads.hits);
        mbt_kv(l, "unwind_cache_misses", in->threads.misses);
        if (mbt_run.unwind_verify) {
            mbt_kv(l, "unwind_verified", in->threads.verified);
            mbt_kv(l, "unwind_mismatches", in->threads.mismatches);
        }
    }
    mbt_line_end(d);

    for (unsigned i = 0; i < in->nmods; i++) {
        const struct mbt_module *m = &mbt_mods[i];
        l = mbt_line(d, 'M');
        mbt_buf_char(l, ' ');
        mbt_buf_u64(l, i + 1);
        mbt_buf_char(l, ' ');
        mbt_buf_hex(l, m->bias);
        mbt_buf_char(l, ' ');
        mbt_buf_hex(l, m->lo);
        mbt_buf_char(l, ' ');
        mbt_buf_hex(l, m->hi);
        mbt_buf_char(l, ' ');
        mbt_buf_str(l, m->build_id[0] ? m->build_id : "-");
        mbt_buf_char(l, ' ');
        mbt_buf_escaped(l, m->path, MBT_PATH_MAX_IN);
        mbt_line_end(d);
    }

    for (unsigned i = 0; i < in->sel.n; i++) {
        const struct mbt_group *g = &mbt_groups[i];
        const struct mbt_stack *s = mbt_stack_get(g->id);
        if (g->id) {
            const uintptr_t *f = mbt_stack_frames(s);
            l = mbt_line(d, 'S');
            mbt_buf_char(l, ' ');
            mbt_buf_u64(l, g->id);
            mbt_buf_str(l, s->truncated ? " t" : " -");
            for (unsigned k = 0; k < s->nframes; k++) {
                mbt_buf_char(l, ' ');
                mbt_buf_hex(l, f[k]);
            }
            if (!s->nframes)
                mbt_buf_str(l, " 0");
            mbt_line_end(d);
            nstack_lines++;
        }
        l = mbt_line(d, 'G');
        mbt_buf_char(l, ' ');
        mbt_buf_u64(l, g->id);
        mbt_buf_char(l, ' ');
        mbt_buf_u64(l, g->live_blocks);
        mbt_buf_char(l, ' ');
        mbt_buf_u64(l, g->live_bytes);
        mbt_buf_char(l, ' ');
        mbt_buf_u64(l, g->old_blocks);
        mbt_buf_char(l, ' ');
        mbt_buf_u64(l, g->old_bytes);
        mbt_buf_char(l, ' ');
        mbt_buf_u64(l, g->oldest_ms);
        mbt_buf_char(l, ' ');
        mbt_buf_escaped(l, s->thread, sizeof s->thread);
        mbt_line_end(d);
    }

    l = mbt_line(d, 'E');
    mbt_kv(l, "lines", d->seq + 1);
    mbt_kv(l, "modules", in->nmods);
    mbt_kv(l, "stacks", nstack_lines);
    mbt_kv(l, "groups", in->sel.n);
    mbt_kv(l, "groups_total", in->sel.groups_total);
    mbt_line_end(d);
}

static void mbt_blocks_bytes(struct mbt_buf *l, uint64_t blocks, uint64_t bytes)
{
    mbt_buf_u64(l, blocks);
    mbt_buf_str(l, blocks == 1 ? " block / " : " blocks / ");
    mbt_buf_u64(l, bytes);
    mbt_buf_str(l, " bytes");
}

/* Seed-like text for a person at the console; addresses as module+0xoffset, never symbols. */
static void mbt_emit_text(struct mbt_dump *d, const struct mbt_dump_input *in)
{
    struct mbt_buf *l;
    const membt_config *cfg = in->cfg;

    l = mbt_line(d, 0);
    mbt_buf_str(l, "=== membt dump ");
    mbt_buf_u64(l, d->no);
    mbt_buf_str(l, " (");
    mbt_buf_str(l, in->reason);
    mbt_buf_str(l, ") pid ");
    mbt_buf_u64(l, (uint64_t)getpid());
    mbt_buf_str(l, ", up ");
    mbt_buf_secs(l, in->up_ms);
    mbt_buf_str(l, "s, ");
    mbt_buf_escaped(l, mbt_exe, MBT_PATH_MAX_IN);
    mbt_buf_str(l, " ===");
    mbt_line_end(d);

    l = mbt_line(d, 0);
    mbt_buf_str(l, "current malloc buffer count: ");
    mbt_blocks_bytes(l, in->tot.live_blocks, in->tot.live_bytes);
    mbt_buf_str(l, " in ");
    mbt_buf_u64(l, in->sel.groups_total);
    mbt_buf_str(l, " call stacks");
    mbt_line_end(d);

    l = mbt_line(d, 0);
    mbt_buf_str(l, "maybe leak buffer count (older than ");
    mbt_buf_secs(l, cfg->leak_age_ms);
    mbt_buf_str(l, "s): ");
    mbt_blocks_bytes(l, in->tot.old_blocks, in->tot.old_bytes);
    mbt_line_end(d);

    l = mbt_line(d, 0);
    mbt_buf_str(l, "tables: stacks ");
    mbt_buf_u64(l, mbt_stacks_count());
    mbt_buf_char(l, '/');
    mbt_buf_u64(l, mbt_regions.stack_cap);
    mbt_buf_str(l, ", block capacity ");
    mbt_buf_u64(l, mbt_blocks_capacity());
    mbt_buf_str(l, ", budget ");
    mbt_buf_u64(l, mbt_budget_used(&mbt_regions));
    mbt_buf_char(l, '/');
    mbt_buf_u64(l, mbt_regions.total);
    mbt_buf_str(l, " bytes; dropped blocks ");
    mbt_buf_u64(l, mbt_load(mbt_counters.dropped_blocks));
    mbt_buf_str(l, ", dropped stacks ");
    mbt_buf_u64(l, mbt_load(mbt_counters.dropped_stacks));
    mbt_buf_str(l, ", truncated stacks ");
    mbt_buf_u64(l, in->threads.truncated);
    mbt_buf_str(l, ", unknown frees ");
    mbt_buf_u64(l, mbt_load(mbt_counters.unknown_frees));
    mbt_line_end(d);

    for (unsigned i = 0; i < in->sel.n; i++) {
        const struct mbt_group *g = &mbt_groups[i];
        const struct mbt_stack *s = mbt_stack_get(g->id);
        l = mbt_line(d, 0);
        mbt_buf_str(l, g->old_blocks ? "[maybe leak] " : "[live] ");
        if (g->id) {
            mbt_buf_str(l, "stack ");
            mbt_buf_u64(l, g->id);
        } else {
            mbt_buf_str(l, "overflow stack (stack table full)");
        }
        mbt_buf_str(l, ", thread ");
        mbt_buf_escaped(l, s->thread, sizeof s->thread);
        mbt_buf_str(l, ": ");
        if (g->old_blocks) {
            mbt_blocks_bytes(l, g->old_blocks, g->old_bytes);
            mbt_buf_str(l, " old, of ");
        }
        mbt_blocks_bytes(l, g->live_blocks, g->live_bytes);
        mbt_buf_str(l, " live; oldest ");
        mbt_buf_secs(l, g->oldest_ms);
        mbt_buf_char(l, 's');
        if (s->truncated)
            mbt_buf_str(l, " (stack cut at MEMBT_DEPTH)");
        mbt_line_end(d);
        const uintptr_t *f = mbt_stack_frames(s);
        for (unsigned k = 0; g->id && k < s->nframes; k++) {
            const struct mbt_module *m = mbt_module_of(in->nmods, f[k]);
            l = mbt_line(d, 0);
            mbt_buf_str(l, "    [");
            mbt_buf_char(l, (char)('0' + k / 10));
            mbt_buf_char(l, (char)('0' + k % 10));
            mbt_buf_str(l, "] 0x");
            mbt_buf_hex(l, f[k]);
            if (m) {
                mbt_buf_char(l, ' ');
                mbt_buf_escaped(l, mbt_basename(m->path), 256);
                mbt_buf_str(l, "+0x");
                mbt_buf_hex(l, f[k] - m->bias);
            }
            mbt_line_end(d);
        }
    }

    l = mbt_line(d, 0);
    mbt_buf_str(l, "=== end of membt dump ");
    mbt_buf_u64(l, d->no);
    mbt_buf_str(l, ": ");
    mbt_buf_u64(l, in->sel.n);
    mbt_buf_str(l, " of ");
    mbt_buf_u64(l, in->sel.groups_total);
    mbt_buf_str(l, " call stacks shown ===");
    mbt_line_end(d);
}

long mbt_dump_run(const char *reason)
{
    struct mbt_dump d;
    struct mbt_dump_input in;
    const membt_config *cfg = &mbt_run.cfg;

    memset(&d, 0, sizeof d);
    memset(&in, 0, sizeof in);
    mbt_buf_init(&d.out, mbt_out_mem, sizeof mbt_out_mem);
    d.no = ++mbt_dump_no;
    d.text = !strcmp(cfg->format, "text");
    in.reason = reason;
    in.cfg = cfg;

    uint32_t now_tick = mbt_tick_now();
    in.up_ms = mbt_now_ms();
    uint32_t nstacks = mbt_stacks_count() + 1;
    memset(mbt_regions.scan, 0, nstacks * sizeof *mbt_regions.scan);
    mbt_blocks_scan(mbt_regions.scan, nstacks, now_tick, cfg->leak_age_ms, &in.tot);
    mbt_select(mbt_regions.scan, nstacks, cfg->top < MBT_TOP_MAX ? cfg->top : MBT_TOP_MAX, &in.sel);
    mbt_threads_totals(&in.threads);
    in.nmods = mbt_modules_collect(mbt_module_wanted, &in.sel, mbt_mods, MBT_MODULES_MAX, mbt_mod_arena,
                                   sizeof mbt_mod_arena);
    if (mbt_exe_path(mbt_exe, sizeof mbt_exe) < 0)
        mbt_exe[0] = 0;

    if (d.text)
        mbt_emit_text(&d, &in);
    else
        mbt_emit_wire(&d, &in);
    mbt_flush(&d);
    mbt_count_add(mbt_counters.dumps, 1);
    return d.failed ? -1 : d.written;
}
