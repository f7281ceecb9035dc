/* Where dumps go (MEMBT_OUTPUT): stderr, stdout, fd:N, tcp:HOST:PORT (connected from the dumping
 * thread, retried at the next dump) or a path opened for append (a log file, /dev/ttyS0).
 * Plain write()/send() loops from the caller's fixed buffer; one warning line per outage.
 * Called with the dump lock held. */
#include "mbt_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MBT_CONNECT_TIMEOUT_MS 3000
#define MBT_WRITE_STALL_MS 5000

enum mbt_sink_kind { MBT_SINK_FD, MBT_SINK_PATH, MBT_SINK_TCP };

struct mbt_sink_spec {
    enum mbt_sink_kind kind;
    int fd;            /* MBT_SINK_FD */
    char target[256];  /* path, or tcp host */
    char port[8];
};

static struct mbt_sink_spec mbt_spec = {MBT_SINK_FD, 2, "", ""};
static int mbt_fd = 2;     /* -1 while a path or connection is not open */
static int mbt_warned;     /* a failure was reported and nothing was written since */

static const char *mbt_sink_parse(const char *spec, struct mbt_sink_spec *out)
{
    memset(out, 0, sizeof *out);
    if (!spec[0])
        return "an output, not an empty text";
    if (strlen(spec) >= sizeof out->target)
        return "at most 255 characters";
    if (!strcmp(spec, "stderr") || !strcmp(spec, "stdout")) {
        out->kind = MBT_SINK_FD;
        out->fd = spec[3] == 'e' ? 2 : 1;
        return NULL;
    }
    if (!strncmp(spec, "fd:", 3)) {
        long v = 0;
        const char *p = spec + 3;
        if (!*p)
            return "fd:N with a file descriptor number";
        for (; *p; p++) {
            if (*p < '0' || *p > '9' || (v = v * 10 + (*p - '0')) > 1000000)
                return "fd:N with a file descriptor number";
        }
        out->kind = MBT_SINK_FD;
        out->fd = (int)v;
        return NULL;
    }
    if (!strncmp(spec, "tcp:", 4)) {
        const char *host = spec + 4, *colon = strrchr(host, ':');
        if (!colon || colon == host || !colon[1] || strlen(colon + 1) >= sizeof out->port)
            return "tcp:HOST:PORT";
        long port = 0;
        for (const char *p = colon + 1; *p; p++) {
            if (*p < '0' || *p > '9')
                return "tcp:HOST:PORT with a numeric port";
            port = port * 10 + (*p - '0');
        }
        if (port < 1 || port > 65535)
            return "tcp:HOST:PORT with a port 1..65535";
        size_t hlen = (size_t)(colon - host);
        if (host[0] == '[' && hlen > 2 && host[hlen - 1] == ']') { /* tcp:[::1]:9000 */
            host++;
            hlen -= 2;
        }
        memcpy(out->target, host, hlen);
        out->target[hlen] = 0;
        memcpy(out->port, colon + 1, strlen(colon + 1) + 1);
        out->kind = MBT_SINK_TCP;
        return NULL;
    }
    out->kind = MBT_SINK_PATH;
    memcpy(out->target, spec, strlen(spec) + 1);
    return NULL;
}

const char *mbt_sink_check(const char *spec)
{
    struct mbt_sink_spec tmp;
    return mbt_sink_parse(spec, &tmp);
}

static void mbt_sink_warn(const char *what, const char *why)
{
    if (mbt_warned)
        return;
    mbt_warned = 1;
    char mem[512];
    struct mbt_buf b;
    mbt_buf_init(&b, mem, sizeof mem);
    mbt_buf_str(&b, what);
    mbt_buf_char(&b, ' ');
    if (mbt_spec.kind == MBT_SINK_TCP) {
        mbt_buf_str(&b, "tcp:");
        mbt_buf_str(&b, mbt_spec.target);
        mbt_buf_char(&b, ':');
        mbt_buf_str(&b, mbt_spec.port);
    } else if (mbt_spec.kind == MBT_SINK_PATH) {
        mbt_buf_escaped(&b, mbt_spec.target, 200);
    } else {
        mbt_buf_str(&b, "fd:");
        mbt_buf_u64(&b, (uint64_t)mbt_spec.fd);
    }
    mbt_buf_str(&b, ": ");
    mbt_buf_str(&b, why);
    mbt_buf_str(&b, " (trying again at the next dump)");
    mbt_say_buf(&b);
}

static int mbt_wait_fd(int fd, short events, int timeout_ms)
{
    struct pollfd p = {fd, events, 0};
    int r;
    do
        r = poll(&p, 1, timeout_ms);
    while (r < 0 && errno == EINTR);
    return r;
}

static int mbt_tcp_connect(const char **why)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int rc = getaddrinfo(mbt_spec.target, mbt_spec.port, &hints, &res);
    if (rc) {
        *why = gai_strerror(rc);
        return -1;
    }
    int fd = -1;
    *why = "connection failed";
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            continue;
        int err = 0;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
            err = errno;
            if (err == EINPROGRESS) {
                socklen_t len = sizeof err;
                if (mbt_wait_fd(fd, POLLOUT, MBT_CONNECT_TIMEOUT_MS) <= 0)
                    err = ETIMEDOUT;
                else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                    err = errno;
            }
        }
        if (!err) {
            fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
            break;
        }
        *why = strerror(err);
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

static int mbt_sink_ready(void)
{
    if (mbt_fd >= 0)
        return 0;
    const char *why;
    if (mbt_spec.kind == MBT_SINK_PATH) {
        mbt_fd = open(mbt_spec.target, O_WRONLY | O_APPEND | O_CREAT | O_NOCTTY | O_CLOEXEC, 0644);
        if (mbt_fd < 0) {
            mbt_sink_warn("cannot open output", strerror(errno));
            return -1;
        }
    } else if (mbt_spec.kind == MBT_SINK_TCP) {
        mbt_fd = mbt_tcp_connect(&why);
        if (mbt_fd < 0) {
            mbt_sink_warn("cannot connect output", why);
            return -1;
        }
    }
    return mbt_fd >= 0 ? 0 : -1;
}

int mbt_sink_open(const char *spec)
{
    struct mbt_sink_spec next;
    if (mbt_sink_parse(spec, &next))
        return -1;
    mbt_sink_close();
    mbt_spec = next;
    mbt_warned = 0;
    mbt_fd = next.kind == MBT_SINK_FD ? next.fd : -1;
    if (next.kind == MBT_SINK_PATH) /* say early when a path cannot be opened */
        mbt_sink_ready();
    return 0;
}

long mbt_sink_write(const char *buf, size_t n)
{
    if (mbt_sink_ready() < 0)
        return -1;
    size_t done = 0;
    while (done < n) {
        ssize_t r = mbt_spec.kind == MBT_SINK_TCP ? send(mbt_fd, buf + done, n - done, MSG_NOSIGNAL)
                                                 : write(mbt_fd, buf + done, n - done);
        if (r > 0) {
            done += (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) &&
            mbt_wait_fd(mbt_fd, POLLOUT, MBT_WRITE_STALL_MS) > 0)
            continue;
        mbt_sink_warn("cannot write output", r < 0 ? strerror(errno) : "nothing written");
        if (mbt_spec.kind != MBT_SINK_FD) { /* reopen / reconnect at the next dump */
            close(mbt_fd);
            mbt_fd = -1;
        }
        return -1;
    }
    mbt_warned = 0;
    return (long)n;
}

void mbt_sink_close(void)
{
    if (mbt_spec.kind != MBT_SINK_FD && mbt_fd >= 0)
        close(mbt_fd);
    mbt_fd = mbt_spec.kind == MBT_SINK_FD ? mbt_spec.fd : -1;
}

void mbt_sink_child(void)
{
    if (mbt_spec.kind == MBT_SINK_TCP && mbt_fd >= 0) {
        close(mbt_fd); /* the parent's connection; the child connects its own */
        mbt_fd = -1;
    }
}
