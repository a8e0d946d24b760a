/*
 * loadgen: the bench's load generator and backend, one epoll loop per process.
 *
 * design: every mode is a single-threaded, non-blocking epoll loop over plain
 * TCP sockets on 127.0.0.1, so that it costs far less CPU per request than any
 * proxy it measures (the bench prints "direct" next to the proxies to show it).
 * Every loop is bounded by a monotonic deadline; latencies go to a log-linear
 * histogram (1/64 = 1.6 % resolution) so that recording costs no allocation.
 *
 *   loadgen server   -p PORT                       echo server (backend of rr/churn/idle)
 *   loadgen pingpong -a HOST:PORT -c C [-P N] -d S -w S -s BYTES   persistent request/response
 *   loadgen churn    -a HOST:PORT -c C [-P N] -d S -w S -s BYTES   connect, request, reply, close
 *   loadgen http     -a HOST:PORT -c C [-P N] -d S -w S -o put|range   etcd JSON gateway, keep-alive
 *
 * -P N spreads the C connections over N forked processes (one epoll loop
 * each) recording over the same window; their histograms are merged.
 *   loadgen idle     -a HOST:PORT -n N [-i INFLIGHT] [-W S]  hold N connections; commands on stdin
 *
 * Measuring modes print one JSON object on stdout.  "idle" prints
 * "OPEN ok=.. fail=.." once its connections are open and each has echoed one
 * byte, then answers "check" with "CHECK ok=.. fail=.." and exits on "quit"
 * or EOF (or after -T seconds, default 600).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAXEV 512
#define NBUCKETS (64 * 60)

static uint64_t hist[NBUCKETS];
static uint64_t n_ok, n_err, n_err_connect, n_err_io;
static uint64_t n_all; /* every completed exchange, warm-up included: divides a proxy's CPU */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static int bucket_of(uint64_t v) {
    if (v < 64) return (int)v;
    int e = 63 - __builtin_clzll(v);
    int i = (e - 5) * 64 + (int)((v >> (e - 6)) - 64);
    return i < NBUCKETS ? i : NBUCKETS - 1;
}

/* middle of bucket i, in ns */
static double bucket_mid(int i) {
    if (i < 64) return i;
    int e = i / 64 + 5;
    uint64_t m = (uint64_t)(i % 64) + 64;
    double lo = (double)(m << (e - 6));
    double width = (double)(1ull << (e - 6));
    return lo + width / 2.0;
}

static double percentile_us(double p) {
    uint64_t total = 0;
    for (int i = 0; i < NBUCKETS; i++) total += hist[i];
    if (!total) return -1;
    uint64_t want = (uint64_t)(p * total);
    if (want >= total) want = total - 1;
    uint64_t acc = 0;
    for (int i = 0; i < NBUCKETS; i++) {
        acc += hist[i];
        if (acc > want) return bucket_mid(i) / 1000.0;
    }
    return -1;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static struct sockaddr_in target;

static void parse_addr(const char *s) {
    char host[64];
    const char *colon = strrchr(s, ':');
    if (!colon || colon - s >= (long)sizeof(host)) {
        fprintf(stderr, "bad address %s\n", s);
        exit(2);
    }
    memcpy(host, s, colon - s);
    host[colon - s] = 0;
    memset(&target, 0, sizeof(target));
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &target.sin_addr) != 1) {
        fprintf(stderr, "bad host %s\n", host);
        exit(2);
    }
}

static void set_nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* Non-blocking connect; returns fd (connect in progress or done) or -1. */
static int start_connect(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    set_nodelay(fd);
    if (connect(fd, (struct sockaddr *)&target, sizeof(target)) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

/* A connect() to a port nobody listens on, from the ephemeral range, can
 * "succeed" by connecting the socket to itself (TCP simultaneous open); it
 * would then echo our own bytes back.  Such a connection must count as a
 * failure, or a dead proxy would look alive. */
static int self_connected(int fd) {
    struct sockaddr_in local;
    socklen_t len = sizeof(local);
    if (getsockname(fd, (struct sockaddr *)&local, &len) < 0) return 1;
    return local.sin_port == target.sin_port && local.sin_addr.s_addr == target.sin_addr.s_addr;
}

/* ------------------------------------------------------------------ server */

struct sconn {
    char *pend;      /* bytes read but not yet echoed */
    size_t plen, poff;
};

static volatile sig_atomic_t stop_flag;
static void on_term(int sig) { (void)sig; stop_flag = 1; }

static int run_server(int port, double max_secs) {
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    size_t cap = rl.rlim_cur + 16;
    struct sconn *conns = calloc(cap, sizeof(*conns));
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0) die("bind");
    if (listen(lfd, 4096) < 0) die("listen");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    printf("READY %d\n", port);
    fflush(stdout);
    static char buf[65536];
    struct epoll_event evs[MAXEV];
    double deadline = now_s() + max_secs;
    while (!stop_flag && now_s() < deadline) {
        int n = epoll_wait(ep, evs, MAXEV, 200);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                for (int k = 0; k < 256; k++) {
                    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (c < 0) {
                        if (errno == EMFILE || errno == ENFILE) usleep(1000);
                        break;
                    }
                    if ((size_t)c >= cap) {
                        close(c);
                        continue;
                    }
                    set_nodelay(c);
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                }
                continue;
            }
            struct sconn *sc = &conns[fd];
            int closeit = 0;
            if (sc->plen) { /* flush pending first */
                ssize_t w = send(fd, sc->pend + sc->poff, sc->plen - sc->poff, MSG_NOSIGNAL);
                if (w < 0 && errno != EAGAIN) closeit = 1;
                if (w > 0) sc->poff += (size_t)w;
                if (!closeit && sc->poff == sc->plen) {
                    free(sc->pend);
                    sc->pend = NULL;
                    sc->plen = sc->poff = 0;
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = fd};
                    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ce);
                }
            } else {
                for (int rounds = 0; rounds < 16 && !closeit; rounds++) {
                    ssize_t r = recv(fd, buf, sizeof(buf), 0);
                    if (r == 0) { closeit = 1; break; }
                    if (r < 0) {
                        if (errno != EAGAIN) closeit = 1;
                        break;
                    }
                    ssize_t w = send(fd, buf, (size_t)r, MSG_NOSIGNAL);
                    if (w < 0) {
                        if (errno != EAGAIN) { closeit = 1; break; }
                        w = 0;
                    }
                    if (w < r) {
                        sc->plen = (size_t)(r - w);
                        sc->poff = 0;
                        sc->pend = malloc(sc->plen);
                        memcpy(sc->pend, buf + w, sc->plen);
                        struct epoll_event ce = {.events = EPOLLOUT, .data.fd = fd};
                        epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ce);
                        break;
                    }
                    if (r < (ssize_t)sizeof(buf)) break;
                }
            }
            if (closeit) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                free(sc->pend);
                sc->pend = NULL;
                sc->plen = sc->poff = 0;
                close(fd);
            }
        }
    }
    return 0;
}

/* ----------------------------------------------------- request/response */

enum mode { M_PINGPONG, M_CHURN, M_HTTP };

struct conn {
    int fd;
    int connecting;
    uint64_t t_start;   /* request (or connect, for churn) start, ns */
    size_t sent, req_len;
    size_t got;         /* response bytes received */
    char req[512];
    char resp[4096];
    uint32_t seq;
    uint64_t retry_at;  /* after a failure, reopen no earlier than this (ns) */
};

static enum mode g_mode;
static size_t g_size = 64;
static int g_put = 1;
static uint64_t rec_from, rec_to; /* record completions in [rec_from, rec_to) */

static const char b64tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static size_t b64(const char *in, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint8_t)in[i] << 16;
        if (i + 1 < n) v |= (uint8_t)in[i + 1] << 8;
        if (i + 2 < n) v |= (uint8_t)in[i + 2];
        out[o++] = b64tab[(v >> 18) & 63];
        out[o++] = b64tab[(v >> 12) & 63];
        out[o++] = i + 1 < n ? b64tab[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? b64tab[v & 63] : '=';
    }
    out[o] = 0;
    return o;
}

static void build_request(struct conn *c, int idx) {
    c->sent = 0;
    c->got = 0;
    if (g_mode != M_HTTP) {
        c->req_len = g_size;
        return;
    }
    char key[40], val[64], kb[64], vb[96], body[256];
    snprintf(key, sizeof(key), "bench/%04d/%03u", idx, c->seq % 256);
    c->seq++;
    memset(val, 'v', 48);
    size_t kl = b64(key, strlen(key), kb);
    (void)kl;
    int bl;
    if (g_put) {
        b64(val, 48, vb);
        bl = snprintf(body, sizeof(body), "{\"key\":\"%s\",\"value\":\"%s\"}", kb, vb);
    } else {
        bl = snprintf(body, sizeof(body), "{\"key\":\"%s\"}", kb);
    }
    c->req_len = (size_t)snprintf(c->req, sizeof(c->req),
        "POST /v3/kv/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: %d\r\n\r\n%s", g_put ? "put" : "range", bl, body);
}

/* 1 = a full response is in c->resp, 0 = need more, -1 = protocol error */
static int response_complete(struct conn *c) {
    if (g_mode != M_HTTP) return c->got >= g_size ? 1 : 0;
    c->resp[c->got < sizeof(c->resp) ? c->got : sizeof(c->resp) - 1] = 0;
    char *hend = strstr(c->resp, "\r\n\r\n");
    if (!hend) return c->got >= sizeof(c->resp) - 1 ? -1 : 0;
    if (strncmp(c->resp, "HTTP/1.1 200", 12) != 0) return -1;
    size_t hlen = (size_t)(hend - c->resp) + 4;
    char *cl = strcasestr(c->resp, "\r\nContent-Length:");
    if (cl && cl < hend) {
        size_t blen = (size_t)strtoul(cl + 17, NULL, 10);
        if (hlen + blen > sizeof(c->resp) - 1) return -1;
        return c->got >= hlen + blen ? 1 : 0;
    }
    char *te = strcasestr(c->resp, "\r\nTransfer-Encoding: chunked");
    if (te && te < hend) return strstr(hend, "\r\n0\r\n\r\n") || strncmp(hend + 4, "0\r\n\r\n", 5) == 0 ? 1 : 0;
    return -1;
}

static char payload[65536];

#define RETRY_NS 5000000ull /* 5 ms back-off after a failed connection: no busy loop */

static int conn_open(int ep, struct conn *c, int idx) {
    c->fd = start_connect();
    if (c->fd < 0) {
        c->retry_at = now_ns() + RETRY_NS;
        return -1;
    }
    c->connecting = 1;
    c->t_start = now_ns();
    build_request(c, idx);
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)idx};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    return 0;
}

static void conn_close(int ep, struct conn *c) {
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
}

static void conn_fail(int ep, struct conn *c) {
    conn_close(ep, c);
    c->retry_at = now_ns() + RETRY_NS;
}

/* try to send the rest of the request; returns -1 on error */
static int conn_send(int ep, struct conn *c, int idx) {
    const char *src = g_mode == M_HTTP ? c->req : payload;
    while (c->sent < c->req_len) {
        ssize_t w = send(c->fd, src + c->sent, c->req_len - c->sent, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN) {
                struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)idx};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                return 0;
            }
            return -1;
        }
        c->sent += (size_t)w;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)idx};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    return 0;
}

/* One process's share of a measurement: nconn connections until rec_to;
 * fills hist and the counters; returns the measured span in seconds. */
static double rr_loop(int nconn, double dur, double warm) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct conn *cs = calloc((size_t)nconn, sizeof(*cs));
    double hard_end = now_s() + warm + dur + 10.0; /* bounded even if nothing answers */
    for (int i = 0; i < nconn; i++) {
        cs[i].fd = -1;
        if (conn_open(ep, &cs[i], i) < 0) n_err_connect++;
    }
    struct epoll_event evs[MAXEV];
    for (;;) {
        uint64_t t = now_ns();
        if (t >= rec_to) break;
        if (now_s() > hard_end) break;
        /* reopen any failed connection slots (bounded by the deadline) */
        for (int i = 0; i < nconn; i++)
            if (cs[i].fd < 0 && t >= cs[i].retry_at && conn_open(ep, &cs[i], i) < 0) n_err_connect++;
        int n = epoll_wait(ep, evs, MAXEV, 50);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int k = 0; k < n; k++) {
            int idx = (int)evs[k].data.u32;
            struct conn *c = &cs[idx];
            if (c->fd < 0) continue;
            int err = 0;
            if (c->connecting) {
                int soerr = 0;
                socklen_t sl = sizeof(soerr);
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
                if (soerr || self_connected(c->fd)) {
                    n_err_connect++;
                    conn_fail(ep, c);
                    continue;
                }
                c->connecting = 0;
                if (g_mode != M_CHURN) c->t_start = now_ns();
                if (conn_send(ep, c, idx) < 0) err = 1;
            } else if (evs[k].events & EPOLLOUT && c->sent < c->req_len) {
                if (conn_send(ep, c, idx) < 0) err = 1;
            } else {
                for (;;) {
                    size_t room = g_mode == M_HTTP ? sizeof(c->resp) - 1 - c->got : g_size - c->got;
                    if (room == 0) { err = 1; break; }
                    char *dst = g_mode == M_HTTP ? c->resp + c->got : c->resp;
                    if (g_mode != M_HTTP && room > sizeof(c->resp)) room = sizeof(c->resp);
                    ssize_t r = recv(c->fd, dst, room, 0);
                    if (r == 0) { err = 1; break; }
                    if (r < 0) {
                        if (errno != EAGAIN) err = 1;
                        break;
                    }
                    c->got += (size_t)r;
                    int done = response_complete(c);
                    if (done < 0) { err = 1; break; }
                    if (done == 1) {
                        uint64_t te = now_ns();
                        n_all++;
                        if (te >= rec_from && te < rec_to) {
                            hist[bucket_of(te - c->t_start)]++;
                            n_ok++;
                        }
                        if (g_mode == M_CHURN) {
                            conn_close(ep, c);
                            if (conn_open(ep, c, idx) < 0) n_err_connect++;
                        } else {
                            build_request(c, idx);
                            c->t_start = te;
                            if (conn_send(ep, c, idx) < 0) err = 1;
                        }
                        break;
                    }
                }
            }
            if (err) {
                n_err_io++;
                conn_fail(ep, c);
            }
        }
    }
    double span = (double)(rec_to - rec_from) / 1e9;
    uint64_t t_end = now_ns();
    if (t_end < rec_to) span = t_end > rec_from ? (double)(t_end - rec_from) / 1e9 : 0.0;
    for (int i = 0; i < nconn; i++) conn_close(ep, &cs[i]);
    close(ep);
    free(cs);
    return span;
}

struct share {
    uint64_t ok, all, err_connect, err_io;
    double span;
};

static int read_full(int fd, void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t n) {
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, (const char *)buf + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        done += (size_t)w;
    }
    return 0;
}

/* nconn connections spread over nproc processes (fork; each its own epoll
 * loop), all recording over the same window; histograms merged here. */
static int run_rr(int nconn, int nproc, double dur, double warm) {
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    memset(payload, 'x', sizeof(payload));
    if (nproc < 1) nproc = 1;
    if (nproc > nconn) nproc = nconn;
    uint64_t t0 = now_ns();
    rec_from = t0 + (uint64_t)(warm * 1e9);
    rec_to = rec_from + (uint64_t)(dur * 1e9);
    double span;
    if (nproc == 1) {
        span = rr_loop(nconn, dur, warm);
    } else {
        int fds[64][2];
        pid_t pids[64];
        if (nproc > 64) nproc = 64;
        for (int p = 0; p < nproc; p++) {
            if (pipe(fds[p]) < 0) die("pipe");
            int share = nconn / nproc + (p < nconn % nproc ? 1 : 0);
            pids[p] = fork();
            if (pids[p] < 0) die("fork");
            if (pids[p] == 0) {
                close(fds[p][0]);
                struct share sh;
                sh.span = rr_loop(share, dur, warm);
                sh.ok = n_ok;
                sh.all = n_all;
                sh.err_connect = n_err_connect;
                sh.err_io = n_err_io;
                if (write_full(fds[p][1], &sh, sizeof(sh)) < 0 || write_full(fds[p][1], hist, sizeof(hist)) < 0)
                    _exit(3);
                _exit(0);
            }
            close(fds[p][1]);
        }
        static uint64_t h[NBUCKETS];
        span = 0;
        for (int p = 0; p < nproc; p++) {
            struct share sh;
            if (read_full(fds[p][0], &sh, sizeof(sh)) == 0 && read_full(fds[p][0], h, sizeof(h)) == 0) {
                n_ok += sh.ok;
                n_all += sh.all;
                n_err_connect += sh.err_connect;
                n_err_io += sh.err_io;
                if (sh.span > span) span = sh.span;
                for (int i = 0; i < NBUCKETS; i++) hist[i] += h[i];
            } else {
                n_err_io++;
            }
            close(fds[p][0]);
            waitpid(pids[p], NULL, 0);
        }
    }
    n_err = n_err_connect + n_err_io;
    printf("{\"ok\": %llu, \"all\": %llu, \"errors\": %llu, \"connect_errors\": %llu, \"io_errors\": %llu, "
           "\"seconds\": %.4f, \"rate\": %.1f, \"p50_us\": %.2f, \"p90_us\": %.2f, \"p99_us\": %.2f, "
           "\"p999_us\": %.2f, \"max_us\": %.2f}\n",
           (unsigned long long)n_ok, (unsigned long long)n_all, (unsigned long long)n_err, (unsigned long long)n_err_connect,
           (unsigned long long)n_err_io, span, span > 0 ? n_ok / span : 0.0, percentile_us(0.50),
           percentile_us(0.90), percentile_us(0.99), percentile_us(0.999), percentile_us(1.0));
    fflush(stdout);
    return 0;
}

/* -------------------------------------------------------------------- idle */

struct iconn {
    int fd;
    uint8_t state; /* 0 free/failed, 1 connecting, 2 wait echo, 3 idle ok */
};

/* Sends one byte on every connection in state 3 (or completes the first exchange
 * for state 1/2) and waits until all have echoed or the deadline passes. */
static void exchange(int ep, struct iconn *cs, int n, int inflight, double timeout, int *ok, int *fail,
                     int open_phase) {
    int next = 0, pending = 0, done_ok = 0, done_fail = 0;
    struct epoll_event evs[MAXEV];
    double deadline = now_s() + timeout;
    char b = 'i';
    while (now_s() < deadline) {
        /* start new work while below the in-flight bound */
        while (next < n && pending < inflight) {
            struct iconn *c = &cs[next];
            if (open_phase) {
                c->fd = start_connect();
                if (c->fd < 0) {
                    c->state = 0;
                    done_fail++;
                    next++;
                    continue;
                }
                c->state = 1;
                struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)next};
                epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
            } else {
                if (c->state != 3) {
                    done_fail++;
                    next++;
                    continue;
                }
                if (send(c->fd, &b, 1, MSG_NOSIGNAL) != 1) {
                    c->state = 0;
                    done_fail++;
                    next++;
                    continue;
                }
                c->state = 2;
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)next};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            }
            pending++;
            next++;
        }
        if (next >= n && pending == 0) break;
        int k = epoll_wait(ep, evs, MAXEV, 50);
        if (k < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int j = 0; j < k; j++) {
            int idx = (int)evs[j].data.u32;
            struct iconn *c = &cs[idx];
            if (c->state == 1) {
                int soerr = 0;
                socklen_t sl = sizeof(soerr);
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
                if (soerr || self_connected(c->fd) || send(c->fd, &b, 1, MSG_NOSIGNAL) != 1) {
                    c->state = 0;
                    pending--;
                    done_fail++;
                    continue;
                }
                c->state = 2;
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)idx};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            } else if (c->state == 2) {
                char r;
                ssize_t got = recv(c->fd, &r, 1, 0);
                if (got < 0 && errno == EAGAIN) continue;
                pending--;
                if (got == 1) {
                    c->state = 3;
                    done_ok++;
                    /* stop watching: an idle connection needs no events here */
                    struct epoll_event ev = {.events = 0, .data.u32 = (uint32_t)idx};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                } else {
                    c->state = 0;
                    done_fail++;
                }
            }
        }
    }
    /* whatever is still pending at the deadline failed */
    for (int i = 0; i < n; i++)
        if (cs[i].state == 1 || cs[i].state == 2) {
            cs[i].state = 0;
            done_fail++;
        }
    done_fail += n - next; /* never started */
    *ok = done_ok;
    *fail = done_fail;
}

static int run_idle(int n, int inflight, double max_secs, double wait_secs) {
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct iconn *cs = calloc((size_t)n, sizeof(*cs));
    for (int i = 0; i < n; i++) cs[i].fd = -1;
    double t0 = now_s();
    double hard_end = t0 + max_secs;
    int ok = 0, fail = 0;
    exchange(ep, cs, n, inflight, wait_secs, &ok, &fail, 1);
    printf("OPEN ok=%d fail=%d seconds=%.3f\n", ok, fail, now_s() - t0);
    fflush(stdout);
    char line[128];
    /* stdin commands; bounded by hard_end via alarm */
    alarm((unsigned)(max_secs > 1 ? max_secs : 1));
    while (now_s() < hard_end && fgets(line, sizeof(line), stdin)) {
        if (strncmp(line, "check", 5) == 0) {
            double t1 = now_s();
            exchange(ep, cs, n, inflight, wait_secs / 2, &ok, &fail, 0);
            printf("CHECK ok=%d fail=%d seconds=%.3f\n", ok, fail, now_s() - t1);
            fflush(stdout);
        } else if (strncmp(line, "quit", 4) == 0) {
            break;
        }
    }
    for (int i = 0; i < n; i++)
        if (cs[i].fd >= 0) close(cs[i].fd);
    return 0;
}

/* -------------------------------------------------------------------- main */

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen server -p PORT [-T SECS]\n"
            "       loadgen pingpong|churn -a HOST:PORT -c CONNS [-P PROCS] -d SECS [-w SECS] [-s BYTES]\n"
            "       loadgen http -a HOST:PORT -c CONNS [-P PROCS] -d SECS [-w SECS] -o put|range\n"
            "       loadgen idle -a HOST:PORT -n CONNS [-i INFLIGHT] [-T SECS] [-W OPEN_WAIT_SECS]\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    const char *mode = argv[1];
    int port = 0, conns = 1, n = 0, inflight = 256, nproc = 1;
    double dur = 3, warm = 0.5, maxsecs = 600, waitsecs = 60;
    const char *addr = NULL;
    int opt;
    optind = 2;
    while ((opt = getopt(argc, argv, "p:a:c:d:w:s:o:n:i:T:W:P:")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'a': addr = optarg; break;
        case 'c': conns = atoi(optarg); break;
        case 'd': dur = atof(optarg); break;
        case 'w': warm = atof(optarg); break;
        case 's': g_size = (size_t)atol(optarg); break;
        case 'o': g_put = strcmp(optarg, "put") == 0; break;
        case 'n': n = atoi(optarg); break;
        case 'i': inflight = atoi(optarg); break;
        case 'T': maxsecs = atof(optarg); break;
        case 'W': waitsecs = atof(optarg); break;
        case 'P': nproc = atoi(optarg); break;
        default: usage();
        }
    }
    if (g_size < 1 || g_size > 4096) g_size = 64;
    if (strcmp(mode, "server") == 0) return run_server(port, maxsecs);
    if (!addr) usage();
    parse_addr(addr);
    if (strcmp(mode, "pingpong") == 0) g_mode = M_PINGPONG;
    else if (strcmp(mode, "churn") == 0) g_mode = M_CHURN;
    else if (strcmp(mode, "http") == 0) g_mode = M_HTTP;
    else if (strcmp(mode, "idle") == 0) return run_idle(n, inflight, maxsecs, waitsecs);
    else usage();
    if (conns < 1) conns = 1;
    return run_rr(conns, nproc, dur, warm);
}
