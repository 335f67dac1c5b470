/*
 * clocklock: an LD_PRELOAD shim for ThreadSanitizer runs of the addon (docs/development.md).
 * Build: gcc -shared -fPIC -O1 -o /tmp/clocklock.so native-test/tsan/clocklock.c
 */
// TSan (GCC 12) does not intercept pthread_rwlock_clockwrlock/clockrdlock, which libstdc++'s
// shared_timed_mutex::try_lock_for uses: forward them to the timed versions TSan does see.
#define _GNU_SOURCE
#include <pthread.h>
#include <time.h>
static struct timespec toRealtime(clockid_t clk, const struct timespec* abs) {
  struct timespec now, real, out;
  clock_gettime(clk, &now);
  clock_gettime(CLOCK_REALTIME, &real);
  long long ns = (abs->tv_sec - now.tv_sec) * 1000000000LL + (abs->tv_nsec - now.tv_nsec);
  long long r = real.tv_sec * 1000000000LL + real.tv_nsec + (ns > 0 ? ns : 0);
  out.tv_sec = r / 1000000000LL;
  out.tv_nsec = r % 1000000000LL;
  return out;
}
int pthread_rwlock_clockwrlock(pthread_rwlock_t* l, clockid_t clk, const struct timespec* abs) {
  struct timespec t = toRealtime(clk, abs);
  return pthread_rwlock_timedwrlock(l, &t);
}
int pthread_rwlock_clockrdlock(pthread_rwlock_t* l, clockid_t clk, const struct timespec* abs) {
  struct timespec t = toRealtime(clk, abs);
  return pthread_rwlock_timedrdlock(l, &t);
}
