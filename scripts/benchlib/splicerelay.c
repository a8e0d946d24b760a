/* splicerelay: the bench's reference splice relay ("c-splice"): what a relay
 * built on splice(2), with no interpreter in it, costs on this kernel.
 *
 * usage: splicerelay LISTEN_PORT BACKEND_PORT WORKERS
 *
 * design: what etcd-gatewayd's bulk path does, and nothing else, in C: pre-fork
 * workers on one listener on 127.0.0.1 (EPOLLEXCLUSIVE, so one worker wakes per
 * new client), per client a non-blocking connect to 127.0.0.1:BACKEND_PORT and
 * one 1 MiB pipe per direction, edge-triggered epoll; on every event both
 * directions splice in (socket -> pipe) and out (pipe -> socket) until EAGAIN.
 * A direction whose read moved 64 KiB or more at once is streaming and gets the
 * gateway's low-water mark (SO_RCVLOWAT 512 KiB: the kernel wakes the worker for
 * half a pipe, or at EOF; a tail smaller than the mark waits for more bytes or
 * EOF, which the gateway bounds with a timer). No health checks, timers, limits
 * or logging: its CPU per GB is about what the kernel's loopback TCP and splice
 * cost any relay, so a proxy's figure next to it shows what that proxy adds on
 * top (within the spread of the machine: which process the kernel bills the
 * receiver's softirq work to moves every relay's figure from round to round).
 *
 * The master waits for SIGTERM, then stops its workers by PID. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define PIPE_BYTES (1 << 20)
#define STREAMING_READ (1 << 16)
#define LOWAT (1 << 19)
#define MAX_WORKERS 64

enum eof { OPEN, READ_EOF, CARRIED }; /* CARRIED: drained and shut down on dst */

struct dir {
    int src, dst, pr, pw; /* source and destination sockets, pipe read and write ends */
    size_t queued;        /* bytes in the pipe */
    enum eof eof;
    int lowat_set;
};

struct conn {
    int fd[2];            /* client, backend: both registrations point at the conn */
    struct dir d[2];      /* client -> backend, backend -> client */
    int closed;
};

static void pump(struct dir *d) {
    if (d->eof == CARRIED)
        return;
    for (;;) {
        int moved = 0;
        if (d->eof == OPEN && d->queued < PIPE_BYTES) {
            ssize_t n = splice(d->src, NULL, d->pw, NULL, PIPE_BYTES - d->queued, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) {
                d->queued += (size_t)n;
                moved = 1;
                if (!d->lowat_set && n >= STREAMING_READ) {
                    int lw = LOWAT;
                    setsockopt(d->src, SOL_SOCKET, SO_RCVLOWAT, &lw, sizeof lw);
                    d->lowat_set = 1;
                }
            } else if (n == 0 || errno != EAGAIN) {
                d->eof = READ_EOF;
            }
        }
        if (d->queued > 0) {
            ssize_t n = splice(d->pr, NULL, d->dst, NULL, d->queued, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) {
                d->queued -= (size_t)n;
                moved = 1;
            } else if (n < 0 && errno != EAGAIN) {
                d->eof = READ_EOF;
                d->queued = 0;
            }
        }
        if (d->eof == READ_EOF && d->queued == 0) {
            shutdown(d->dst, SHUT_WR);
            d->eof = CARRIED;
            return;
        }
        if (!moved)
            return;
    }
}

static int done(const struct conn *c) {
    return c->d[0].eof == CARRIED && c->d[1].eof == CARRIED;
}

static void close_conn(int ep, struct conn *c) {
    for (int i = 0; i < 2; i++) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd[i], NULL);
        close(c->fd[i]);
        close(c->d[i].pr);
        close(c->d[i].pw);
    }
}

/* a client accepted: its backend connection, pipes and registrations (on failure the
 * client is closed) */
static void open_conn(int ep, int client, const struct sockaddr_in *backend) {
    struct conn *c = calloc(1, sizeof *c);
    int p0[2], p1[2];
    int b = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (!c || b < 0 || pipe2(p0, O_NONBLOCK | O_CLOEXEC) < 0) {
        if (b >= 0) close(b);
        free(c); close(client);
        return;
    }
    if (pipe2(p1, O_NONBLOCK | O_CLOEXEC) < 0) {
        close(p0[0]); close(p0[1]); close(b);
        free(c); close(client);
        return;
    }
    if (connect(b, (const struct sockaddr *)backend, sizeof *backend) < 0 && errno != EINPROGRESS) {
        close(p0[0]); close(p0[1]); close(p1[0]); close(p1[1]); close(b);
        free(c); close(client);
        return;
    }
    fcntl(p0[1], F_SETPIPE_SZ, PIPE_BYTES);
    fcntl(p1[1], F_SETPIPE_SZ, PIPE_BYTES);
    c->fd[0] = client;
    c->fd[1] = b;
    c->d[0] = (struct dir){ .src = client, .dst = b, .pr = p0[0], .pw = p0[1] };
    c->d[1] = (struct dir){ .src = b, .dst = client, .pr = p1[0], .pw = p1[1] };
    for (int i = 0; i < 2; i++) {
        struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c };
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd[i], &ev);
    }
}

static void worker(int lfd, const struct sockaddr_in *backend) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = { .events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = NULL };
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0) {
        perror("splicerelay: epoll");
        _exit(1);
    }
    struct epoll_event evs[64];
    /* connections closed during this batch: freed after it, as a later event of the
     * same batch may point at them */
    struct conn *closed[64];
    for (;;) {
        int n = epoll_wait(ep, evs, 64, -1);
        int nclosed = 0;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                int a;
                while ((a = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0)
                    open_conn(ep, a, backend);
                continue;
            }
            struct conn *c = evs[i].data.ptr;
            if (c->closed)
                continue; /* closed earlier in this batch */
            pump(&c->d[0]);
            pump(&c->d[1]);
            if (done(c) || (evs[i].events & EPOLLERR)) {
                close_conn(ep, c);
                c->closed = 1;
                closed[nclosed++] = c;
            }
        }
        for (int i = 0; i < nclosed; i++)
            free(closed[i]);
    }
}

static volatile sig_atomic_t stopping;

static void on_term(int sig) {
    (void)sig;
    stopping = 1;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: splicerelay LISTEN_PORT BACKEND_PORT WORKERS\n");
        return 2;
    }
    int lport = atoi(argv[1]), bport = atoi(argv[2]), workers = atoi(argv[3]);
    if (lport <= 0 || lport > 65535 || bport <= 0 || bport > 65535 || workers < 1 || workers > MAX_WORKERS) {
        fprintf(stderr, "splicerelay: bad arguments\n");
        return 2;
    }
    struct sockaddr_in la = { .sin_family = AF_INET, .sin_port = htons((uint16_t)lport) };
    struct sockaddr_in ba = { .sin_family = AF_INET, .sin_port = htons((uint16_t)bport) };
    inet_pton(AF_INET, "127.0.0.1", &la.sin_addr);
    inet_pton(AF_INET, "127.0.0.1", &ba.sin_addr);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&la, sizeof la) < 0 || listen(lfd, 4096) < 0) {
        perror("splicerelay: listen");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = { .sa_handler = on_term };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigset_t term, none;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigaddset(&term, SIGINT);
    sigemptyset(&none);
    sigprocmask(SIG_BLOCK, &term, NULL); /* delivered only inside sigsuspend below */
    pid_t pids[MAX_WORKERS];
    for (int i = 0; i < workers; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            signal(SIGTERM, SIG_DFL);
            signal(SIGINT, SIG_DFL);
            sigprocmask(SIG_UNBLOCK, &term, NULL);
            worker(lfd, &ba);
        }
        if (pids[i] < 0) {
            perror("splicerelay: fork");
            stopping = 1;
            workers = i;
            break;
        }
    }
    while (!stopping)
        sigsuspend(&none);
    for (int i = 0; i < workers; i++)
        kill(pids[i], SIGTERM);
    for (int i = 0; i < workers; i++)
        waitpid(pids[i], NULL, 0);
    return 0;
}
