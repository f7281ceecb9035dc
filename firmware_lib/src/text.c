/* Text formatting into fixed buffers (no stdio, no malloc: safe inside the recorder) and the
 * recorder's one-line messages on stderr. */
#include "mbt_internal.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

void mbt_buf_init(struct mbt_buf *b, char *mem, size_t cap)
{
    b->p = mem;
    b->len = 0;
    b->cap = cap;
    b->overflow = 0;
}

void mbt_buf_mem(struct mbt_buf *b, const char *s, size_t n)
{
    if (n > b->cap - b->len) {
        n = b->cap - b->len;
        b->overflow = 1;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

void mbt_buf_char(struct mbt_buf *b, char c) { mbt_buf_mem(b, &c, 1); }

void mbt_buf_str(struct mbt_buf *b, const char *s) { mbt_buf_mem(b, s, strlen(s)); }

void mbt_buf_u64(struct mbt_buf *b, uint64_t v)
{
    char tmp[24];
    size_t i = sizeof tmp;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    mbt_buf_mem(b, tmp + i, sizeof tmp - i);
}

void mbt_buf_hex(struct mbt_buf *b, uint64_t v)
{
    static const char digits[] = "0123456789abcdef";
    char tmp[16];
    size_t i = sizeof tmp;
    do {
        tmp[--i] = digits[v & 15];
        v >>= 4;
    } while (v);
    mbt_buf_mem(b, tmp + i, sizeof tmp - i);
}

void mbt_buf_secs(struct mbt_buf *b, uint64_t ms)
{
    uint64_t tenths = (ms + 50) / 100;
    mbt_buf_u64(b, tenths / 10);
    mbt_buf_char(b, '.');
    mbt_buf_char(b, (char)('0' + tenths % 10));
}

void mbt_buf_secs_exact(struct mbt_buf *b, uint64_t ms)
{
    mbt_buf_u64(b, ms / 1000);
    unsigned frac = (unsigned)(ms % 1000);
    if (!frac)
        return;
    char tmp[4] = {'.', (char)('0' + frac / 100), (char)('0' + frac / 10 % 10), (char)('0' + frac % 10)};
    size_t n = 4;
    while (tmp[n - 1] == '0')
        n--;
    mbt_buf_mem(b, tmp, n);
}

void mbt_buf_bytes(struct mbt_buf *b, uint64_t bytes)
{
    static const char units[] = "KMG";
    int u = -1;
    while (u < 2 && bytes >= 1024 && bytes % 1024 == 0) {
        bytes /= 1024;
        u++;
    }
    mbt_buf_u64(b, bytes);
    if (u >= 0)
        mbt_buf_char(b, units[u]);
}

void mbt_buf_escaped(struct mbt_buf *b, const char *s, size_t max_in)
{
    static const char digits[] = "0123456789ABCDEF";
    if (!s || !*s) {
        mbt_buf_char(b, '-');
        return;
    }
    if (s[0] == '-' && s[1] == 0) {
        mbt_buf_str(b, "%2D");
        return;
    }
    for (size_t i = 0; s[i] && i < max_in; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x21 || c > 0x7e || c == '%') {
            char esc[3] = {'%', digits[c >> 4], digits[c & 15]};
            mbt_buf_mem(b, esc, 3);
        } else {
            mbt_buf_char(b, (char)c);
        }
    }
}

static void mbt_write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t r = write(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return;
        p += r;
        n -= (size_t)r;
    }
}

void mbt_say(const char *text)
{
    char mem[512];
    struct mbt_buf b;
    mbt_buf_init(&b, mem, sizeof mem);
    mbt_buf_str(&b, text);
    mbt_say_buf(&b);
}

void mbt_say_buf(struct mbt_buf *msg)
{
    char mem[600];
    struct mbt_buf b;
    int saved = errno;
    mbt_buf_init(&b, mem, sizeof mem - 1);
    mbt_buf_str(&b, "membt: ");
    mbt_buf_mem(&b, msg->p, msg->len);
    b.p[b.len++] = '\n'; /* room kept by cap - 1 */
    mbt_write_all(2, b.p, b.len);
    errno = saved;
}

void mbt_say_disabled(const char *why, const char *detail)
{
    char mem[512];
    struct mbt_buf b;
    mbt_buf_init(&b, mem, sizeof mem);
    mbt_buf_str(&b, "disabled: ");
    mbt_buf_str(&b, why);
    if (detail) {
        mbt_buf_str(&b, ": ");
        mbt_buf_str(&b, detail);
    }
    mbt_say_buf(&b);
}
