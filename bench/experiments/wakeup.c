/*
 * The machine's thread wake-up latency, the floor under any design that hands a request
 * from one thread to another (the proxy hands each HSM call to an HSM thread and back).
 * An experiment, not a regression figure: bench/experiments/wakeup.ts compiles it (cc -O2)
 * and runs it once per mode.
 *
 *   wakeup MODE COUNT GAP_US
 *
 * A waker thread sleeps GAP_US, takes the time and writes an eventfd; the sleeper,
 * blocked in read(), takes the time when it runs; then it acknowledges on a second
 * eventfd so that exactly one wake-up is in flight. MODE: any (the scheduler places
 * both threads), cross (pinned to different CPUs), same (both on one CPU).
 * Prints one JSON line: {"mode":..,"n":..,"p50":..,"p90":..,"p99":..,"p999":..,"max":..}
 * in microseconds, or {"mode":..,"skipped":"reason"} when MODE cannot be set up.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static int go_fd, ack_fd;
static long count;
static int sleeper_cpu = -1;
static _Atomic uint64_t sent_ns;
static uint64_t *lat_ns;

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  return pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

static void *sleeper(void *arg) {
  (void)arg;
  if (sleeper_cpu >= 0) pin(sleeper_cpu);
  for (long i = 0; i < count; i++) {
    uint64_t v;
    if (read(go_fd, &v, sizeof v) != sizeof v) return NULL;
    lat_ns[i] = now_ns() - sent_ns;
    v = 1;
    if (write(ack_fd, &v, sizeof v) != sizeof v) return NULL;
  }
  return NULL;
}

static int cmp(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static double us_at(double q) {
  long i = (long)(q * (double)(count - 1));
  return (double)lat_ns[i] / 1e3;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: wakeup any|cross|same COUNT GAP_US\n");
    return 2;
  }
  const char *mode = argv[1];
  count = atol(argv[2]);
  long gap_us = atol(argv[3]);
  if (count < 10 || gap_us < 1) {
    fprintf(stderr, "wakeup: COUNT >= 10 and GAP_US >= 1\n");
    return 2;
  }
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  int waker_cpu = -1;
  if (strcmp(mode, "any") != 0) {
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return 1;
    int first = -1, second = -1;
    for (int c = 0; c < CPU_SETSIZE && second < 0; c++) {
      if (!CPU_ISSET(c, &allowed)) continue;
      if (first < 0)
        first = c;
      else
        second = c;
    }
    if (strcmp(mode, "same") == 0) {
      waker_cpu = sleeper_cpu = first;
    } else if (strcmp(mode, "cross") == 0) {
      if (second < 0) {
        printf("{\"mode\":\"cross\",\"skipped\":\"one CPU\"}\n");
        return 0;
      }
      waker_cpu = first;
      sleeper_cpu = second;
    } else {
      fprintf(stderr, "wakeup: MODE is any, cross or same\n");
      return 2;
    }
  }
  lat_ns = calloc((size_t)count, sizeof *lat_ns);
  go_fd = eventfd(0, 0);
  ack_fd = eventfd(0, 0);
  if (lat_ns == NULL || go_fd < 0 || ack_fd < 0) return 1;
  if (waker_cpu >= 0 && pin(waker_cpu) != 0) return 1;
  pthread_t t;
  if (pthread_create(&t, NULL, sleeper, NULL) != 0) return 1;
  struct timespec gap = {.tv_sec = gap_us / 1000000, .tv_nsec = (gap_us % 1000000) * 1000};
  for (long i = 0; i < count; i++) {
    nanosleep(&gap, NULL);
    uint64_t v = 1;
    sent_ns = now_ns();
    if (write(go_fd, &v, sizeof v) != sizeof v) return 1;
    if (read(ack_fd, &v, sizeof v) != sizeof v) return 1;
  }
  pthread_join(t, NULL);
  qsort(lat_ns, (size_t)count, sizeof *lat_ns, cmp);
  printf("{\"mode\":\"%s\",\"n\":%ld,\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f}\n", mode, count,
         us_at(0.5), us_at(0.9), us_at(0.99), us_at(0.999), (double)lat_ns[count - 1] / 1e3);
  return 0;
}
