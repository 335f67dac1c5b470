/*
 * The cost of one modelled HSM call: what the fault module's `rtt <ms>` rule does per call
 * (native-test/faulty/faulty_pkcs11.c, sleep_ns: clock_nanosleep to now + rtt on
 * CLOCK_MONOTONIC, absolute), timed here on this machine, so that the bench's floor uses
 * the sleep as it really is (timer slack, wake-up of an idle vCPU) rather than its nominal
 * length.
 *
 *   sleepcost <rtt_ns> <count>     prints "<median_ns> <mean_ns> <p99_ns>"
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int cmp(const void* a, const void* b) {
  long long x = *(const long long*)a, y = *(const long long*)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: sleepcost <rtt_ns> <count>\n");
    return 2;
  }
  const long long rtt = atoll(argv[1]);
  const int count = atoi(argv[2]);
  if (rtt < 0 || count < 1 || count > 1000000) {
    fprintf(stderr, "sleepcost: rtt_ns >= 0 and count in 1..1000000\n");
    return 2;
  }
  long long* took = malloc(sizeof *took * (size_t)count);
  if (took == NULL) return 1;
  double sum = 0;
  for (int i = 0; i < count; ++i) {
    const long long t0 = now_ns();
    struct timespec until = {(time_t)((t0 + rtt) / 1000000000LL), (long)((t0 + rtt) % 1000000000LL)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) != 0) {
    }
    took[i] = now_ns() - t0;
    sum += (double)took[i];
  }
  qsort(took, (size_t)count, sizeof *took, cmp);
  printf("%lld %.0f %lld\n", took[count / 2], sum / count, took[(count * 99) / 100]);
  free(took);
  return 0;
}
