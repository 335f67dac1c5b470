/*
 * What one synchronized write of an audit group costs on this machine's disk, for the audit
 * rows (bench/audit.ts): `append` is what before-response does (an O_DSYNC append to the trail,
 * which must also write the file's new size), `overwrite` an O_DIRECT | O_DSYNC overwrite of
 * blocks already allocated, written and synced (a preallocated file: the same data, no size).
 *
 *   disksync <append|overwrite> <file> <count>
 *     prints "<p50_ns> <p99_ns> <thread_cpu_ns_per_write>"; <file> is created and removed.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { kAppend = 2048, kBlock = 4096 };

static long long now_ns(clockid_t c) {
  struct timespec t;
  clock_gettime(c, &t);
  return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int cmp(const void* a, const void* b) {
  long long x = *(const long long*)a, y = *(const long long*)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char** argv) {
  if (argc != 4 || (strcmp(argv[1], "append") != 0 && strcmp(argv[1], "overwrite") != 0)) {
    fprintf(stderr, "usage: disksync <append|overwrite> <file> <count>\n");
    return 2;
  }
  const int append = strcmp(argv[1], "append") == 0;
  const char* path = argv[2];
  const int n = atoi(argv[3]);
  if (n <= 0) return 2;
  char* buf;
  if (posix_memalign((void**)&buf, kBlock, kBlock) != 0) return 1;
  memset(buf, 'x', kBlock);
  buf[kBlock - 1] = '\n';
  int fd;
  if (append) {
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_DSYNC, 0600);
  } else {
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    for (int i = 0; fd >= 0 && i < n; i++) {
      if (write(fd, buf, kBlock) != kBlock) {
        perror("disksync: preallocate");
        return 1;
      }
    }
    if (fd >= 0 && fsync(fd) != 0) return 1;
    if (fd >= 0) close(fd);
    fd = open(path, O_WRONLY | O_DSYNC | O_DIRECT);
  }
  if (fd < 0) {
    perror("disksync: open");
    return 1;
  }
  long long* lat = malloc(sizeof(long long) * (size_t)n);
  if (lat == NULL) return 1;
  const long long cpu0 = now_ns(CLOCK_THREAD_CPUTIME_ID);
  for (int i = 0; i < n; i++) {
    const long long t0 = now_ns(CLOCK_MONOTONIC);
    const ssize_t w = append ? write(fd, buf, kAppend) : pwrite(fd, buf, kBlock, (off_t)i * kBlock);
    if (w < 0) {
      perror("disksync: write");
      return 1;
    }
    lat[i] = now_ns(CLOCK_MONOTONIC) - t0;
  }
  const long long cpu = now_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
  close(fd);
  unlink(path);
  qsort(lat, (size_t)n, sizeof lat[0], cmp);
  printf("%lld %lld %lld\n", lat[n / 2], lat[(long long)n * 99 / 100], cpu / n);
  return 0;
}
