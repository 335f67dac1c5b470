/*
 * Open/closed-loop HTTP/1.1 load generator for the xks-proxy bench (compiled by the
 * bench with cc -O2; not part of CI's pass/fail). Same method as bench/loadgen.ts,
 * but it sleeps precisely (epoll_pwait2, nanosecond timeout) instead of spinning,
 * so on a 2-core machine it does not take a whole core away from the server.
 *
 *   loadgen MODE HOST PORT RATE CONNS WARMUP_MS DURATION_MS DRAIN_MS REQFILE OUTFILE
 *
 * MODE: open | closed. RATE: requests/s (open). REQFILE: u32 count, then per request
 * u32 length + bytes. OUTFILE: f64 window_ms, f64 cpu_core_fraction, i32 socket_errors,
 * i32 n, then n records { f64 latency_ms, f64 send_lag_ms, f64 done_ms (from window
 * start), i32 status (0 socket error, -1 no answer), i32 pad }.
 * Open loop: latency from each request's due time. Closed loop: from its send time.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
  uint8_t *p;
  uint32_t n;
} Req;
typedef struct {
  int fd;
  int busy;
  long req;          /* record index in flight, -1 none */
  const uint8_t *wp; /* pending write */
  size_t wleft;
  uint8_t *rbuf;
  size_t rlen, rcap;
  long need; /* total response length, -1 headers incomplete */
  int status;
} Conn;
typedef struct {
  double lat, lag, done;
  int32_t status, pad;
} Rec;

static Req *reqs;
static uint32_t nreq;
static Conn *conns;
static int nconn;
static int ep;
static struct sockaddr_in addr;
static double *due_at, *sent_at, *done_at;
static int32_t *st;
static long total, warm_n;
static long *backlog;
static long bhead, btail;
static int *freelist;
static int nfree;
static int socket_errors;
static int closed_mode;
static long next_req;
static double window_start, window_end;
static int measuring, stopped;
/* closed loop records */
static Rec *crec;
static long ncrec, ccap;

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}
static double cpu_ms(void) {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec * 1e3 + u.ru_utime.tv_usec / 1e3 + u.ru_stime.tv_sec * 1e3 + u.ru_stime.tv_usec / 1e3;
}

static int connect_one(int i) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
    close(fd);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  Conn *c = &conns[i];
  c->fd = fd;
  c->busy = 0;
  c->req = -1;
  c->wleft = 0;
  c->rlen = 0;
  c->need = -1;
  if (!c->rbuf) {
    c->rcap = 65536;
    c->rbuf = malloc(c->rcap);
  }
  struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
  epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  return 0;
}

static void flush_write(int i) {
  Conn *c = &conns[i];
  while (c->wleft > 0) {
    ssize_t w = write(c->fd, c->wp, c->wleft);
    if (w < 0) {
      if (errno == EAGAIN) {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        return;
      }
      return; /* the read side will see the error */
    }
    c->wp += w;
    c->wleft -= (size_t)w;
  }
}

static void send_on(int i, long idx) {
  Conn *c = &conns[i];
  Req *r = &reqs[(closed_mode ? (unsigned long)next_req++ : (unsigned long)idx) % nreq];
  c->busy = 1;
  c->req = idx;
  c->wp = r->p;
  c->wleft = r->n;
  flush_write(i);
}

static void closed_send(int i) {
  if (stopped) return;
  if (ncrec >= ccap) {
    ccap = ccap ? ccap * 2 : 1 << 16;
    crec = realloc(crec, ccap * sizeof *crec);
  }
  /* record slot reserved at completion; here we only keep the send time */
  conns[i].req = 0;
  due_at[i] = now_ms();
  send_on(i, 0);
}

static void on_response(int i, int status) {
  double t = now_ms();
  Conn *c = &conns[i];
  c->busy = 0;
  if (closed_mode) {
    if (measuring && !stopped) {
      if (ncrec >= ccap) {
        ccap = ccap ? ccap * 2 : 1 << 16;
        crec = realloc(crec, ccap * sizeof *crec);
      }
      Rec *r = &crec[ncrec++];
      r->lat = t - due_at[i];
      r->lag = 0;
      r->done = t - window_start;
      r->status = status;
      r->pad = 0;
    }
    closed_send(i);
    return;
  }
  long idx = c->req;
  c->req = -1;
  if (idx >= 0) {
    done_at[idx] = t;
    st[idx] = status;
  }
  if (stopped) return;
  if (bhead < btail) {
    long j = backlog[bhead++];
    sent_at[j] = now_ms();
    send_on(i, j);
  } else {
    freelist[nfree++] = i;
  }
}

static void on_dead(int i) {
  Conn *c = &conns[i];
  epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  if (stopped) {
    c->fd = -1;
    return;
  }
  socket_errors++;
  int was_busy = c->busy;
  long idx = c->req;
  if (!closed_mode && was_busy && idx >= 0) {
    done_at[idx] = now_ms();
    st[idx] = 0;
  }
  if (closed_mode && measuring && was_busy) {
    if (ncrec >= ccap) {
      ccap = ccap ? ccap * 2 : 1 << 16;
      crec = realloc(crec, ccap * sizeof *crec);
    }
    Rec *r = &crec[ncrec++];
    r->lat = now_ms() - due_at[i];
    r->lag = 0;
    r->done = now_ms() - window_start;
    r->status = 0;
    r->pad = 0;
  }
  if (connect_one(i) < 0) {
    c->fd = -1;
    return;
  }
  if (closed_mode)
    closed_send(i);
  else
    on_response(i, -2); /* joins the free list / takes the backlog; -2 is not recorded (req -1) */
}

static long content_length(const uint8_t *b, size_t hdr_end) {
  static const char *names[] = {"Content-Length:", "content-length:", "Content-length:", "CONTENT-LENGTH:"};
  for (int k = 0; k < 4; k++) {
    const uint8_t *p = memmem(b, hdr_end, names[k], 15);
    if (p) return strtol((const char *)p + 15, NULL, 10);
  }
  return 0;
}

static void on_readable(int i) {
  Conn *c = &conns[i];
  for (;;) {
    if (c->rcap - c->rlen < 16384) {
      c->rcap *= 2;
      c->rbuf = realloc(c->rbuf, c->rcap);
    }
    ssize_t n = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
    if (n == 0) {
      on_dead(i);
      return;
    }
    if (n < 0) {
      if (errno == EAGAIN) break;
      on_dead(i);
      return;
    }
    c->rlen += (size_t)n;
    if ((size_t)n < c->rcap - c->rlen + (size_t)n) break;
  }
  size_t off = 0;
  for (;;) {
    uint8_t *b = c->rbuf + off;
    size_t len = c->rlen - off;
    if (c->need < 0) {
      uint8_t *e = memmem(b, len, "\r\n\r\n", 4);
      if (!e) break;
      size_t hdr = (size_t)(e - b);
      c->status = (b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0');
      c->need = (long)(hdr + 4) + content_length(b, hdr);
    }
    if ((long)len < c->need) break;
    off += (size_t)c->need;
    c->need = -1;
    on_response(i, c->status);
    if (c->fd < 0) return;
  }
  if (off > 0) {
    memmove(c->rbuf, c->rbuf + off, c->rlen - off);
    c->rlen -= off;
  }
}

static void poll_once(double until_ms) {
  struct epoll_event evs[256];
  double wait = until_ms - now_ms();
  if (wait < 0) wait = 0;
  struct timespec ts = {.tv_sec = (time_t)(wait / 1e3), .tv_nsec = (long)((wait - (time_t)(wait / 1e3) * 1e3) * 1e6)};
  int n = epoll_pwait2(ep, evs, 256, &ts, NULL);
  for (int k = 0; k < n; k++) {
    int i = (int)evs[k].data.u32;
    if (conns[i].fd < 0) continue;
    if (evs[k].events & EPOLLOUT) {
      flush_write(i);
      if (conns[i].wleft == 0) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_MOD, conns[i].fd, &ev);
      }
    }
    if (evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(i);
  }
}

int main(int argc, char **argv) {
  if (argc != 11) {
    fprintf(stderr, "usage: loadgen open|closed HOST PORT RATE CONNS WARMUP_MS DURATION_MS DRAIN_MS REQFILE OUTFILE\n");
    return 2;
  }
  closed_mode = strcmp(argv[1], "closed") == 0;
  /* Timers fire up to timer_slack late (50 us by default): that lateness would count in
   * every open-loop latency (from due time), so ask for 1 ns. */
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  double rate = atof(argv[4]);
  nconn = atoi(argv[5]);
  double warm_ms = atof(argv[6]), dur_ms = atof(argv[7]), drain_ms = atof(argv[8]);
  FILE *f = fopen(argv[9], "rb");
  if (!f || fread(&nreq, 4, 1, f) != 1 || nreq == 0) {
    fprintf(stderr, "loadgen: bad request file\n");
    return 2;
  }
  reqs = calloc(nreq, sizeof *reqs);
  for (uint32_t k = 0; k < nreq; k++) {
    if (fread(&reqs[k].n, 4, 1, f) != 1) return 2;
    reqs[k].p = malloc(reqs[k].n);
    if (fread(reqs[k].p, 1, reqs[k].n, f) != reqs[k].n) return 2;
  }
  fclose(f);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)atoi(argv[3]));
  inet_pton(AF_INET, argv[2], &addr.sin_addr);
  ep = epoll_create1(0);
  conns = calloc((size_t)nconn, sizeof *conns);
  freelist = calloc((size_t)nconn, sizeof *freelist);
  for (int i = 0; i < nconn; i++) {
    if (connect_one(i) < 0) {
      fprintf(stderr, "loadgen: cannot connect to %s:%s\n", argv[2], argv[3]);
      return 1;
    }
  }
  double cpu0 = 0, wall0 = 0, interval = closed_mode ? 0 : 1e3 / rate;
  if (closed_mode) {
    due_at = calloc((size_t)nconn, sizeof *due_at);
    for (int i = 0; i < nconn; i++) closed_send(i);
    double t = now_ms();
    while (now_ms() < t + warm_ms) poll_once(t + warm_ms);
    cpu0 = cpu_ms();
    window_start = wall0 = now_ms();
    measuring = 1;
    while (now_ms() < window_start + dur_ms) poll_once(window_start + dur_ms);
    window_end = now_ms();
    stopped = 1;
  } else {
    warm_n = (long)(warm_ms * rate / 1e3);
    total = warm_n + (long)(dur_ms * rate / 1e3);
    due_at = malloc(total * sizeof *due_at);
    sent_at = malloc(total * sizeof *sent_at);
    done_at = malloc(total * sizeof *done_at);
    st = malloc(total * sizeof *st);
    backlog = malloc(total * sizeof *backlog);
    for (long k = 0; k < total; k++) {
      sent_at[k] = -1;
      done_at[k] = -1;
      st[k] = -1;
    }
    for (int i = 0; i < nconn; i++) freelist[nfree++] = i;
    double t0 = now_ms() + 5;
    for (long k = 0; k < total; k++) due_at[k] = t0 + k * interval;
    window_start = t0 + warm_n * interval;
    cpu0 = cpu_ms();
    wall0 = now_ms();
    long next = 0;
    while (next < total) {
      double t = now_ms();
      while (next < total && due_at[next] <= t) {
        if (nfree > 0) {
          int i = freelist[--nfree];
          sent_at[next] = t;
          send_on(i, next);
        } else
          backlog[btail++] = next;
        next++;
      }
      if (next < total) poll_once(due_at[next]);
    }
    double deadline = now_ms() + drain_ms;
    for (;;) {
      int pending = 0;
      for (long k = total - 1; k >= warm_n; k--)
        if (done_at[k] < 0) {
          pending = 1;
          break;
        }
      if (!pending || now_ms() >= deadline) break;
      poll_once(now_ms() + 5 < deadline ? now_ms() + 5 : deadline);
    }
    window_end = now_ms();
    stopped = 1;
  }
  double cpu_frac = (cpu_ms() - cpu0) / (window_end - wall0);
  FILE *o = fopen(argv[10], "wb");
  if (!o) return 1;
  double window_ms = closed_mode ? window_end - window_start : (total - warm_n) * interval;
  int32_t se = socket_errors;
  fwrite(&window_ms, 8, 1, o);
  fwrite(&cpu_frac, 8, 1, o);
  fwrite(&se, 4, 1, o);
  if (closed_mode) {
    int32_t n = (int32_t)ncrec;
    fwrite(&n, 4, 1, o);
    fwrite(crec, sizeof *crec, (size_t)ncrec, o);
  } else {
    int32_t n = (int32_t)(total - warm_n);
    fwrite(&n, 4, 1, o);
    for (long k = warm_n; k < total; k++) {
      Rec r;
      int answered = done_at[k] >= 0;
      r.lat = (answered ? done_at[k] : window_end) - due_at[k];
      r.lag = sent_at[k] >= 0 ? sent_at[k] - due_at[k] : -1;
      r.done = answered ? done_at[k] - window_start : -1;
      r.status = answered ? st[k] : -1;
      r.pad = 0;
      fwrite(&r, sizeof r, 1, o);
    }
  }
  fclose(o);
  for (int i = 0; i < nconn; i++)
    if (conns[i].fd >= 0) close(conns[i].fd);
  return 0;
}
