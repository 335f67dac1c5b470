#include "workers.h"

#include <algorithm>
#include <cmath>
#include <ctime>

#include <pthread.h>
#include <sys/resource.h>

namespace xks {

namespace {

// What a sampled job cost its thread: CPU time (CLOCK_THREAD_CPUTIME_ID) and voluntary context
// switches (getrusage RUSAGE_THREAD: the thread went to sleep on a socket, a timer or a lock).
// Wall time off the CPU counts as blocked only when the thread slept: a thread that was merely
// preempted or waited for a CPU (SoftHSM2 on the same cores, a busy machine) made no voluntary
// switch, so waiting for a CPU never asks for more threads. (The kernel's run-queue delay in
// /proc/thread-self/schedstat would be more exact but is not kept on every kernel.)
struct ThreadCost {
  uint64_t cpuNs = 0;
  uint64_t sleeps = 0;

  static ThreadCost now() {
    ThreadCost c;
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    c.cpuNs = static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
#ifdef RUSAGE_THREAD
    rusage ru{};
    if (getrusage(RUSAGE_THREAD, &ru) == 0) c.sleeps = static_cast<uint64_t>(ru.ru_nvcsw);
#endif
    return c;
  }
};

constexpr uint32_t kSampleEvery = 4;  // jobs per thread between two samples
constexpr uint32_t kMinSamples = 16;  // per decision
// A network HSM's calls: when at least 3 in 4 sampled jobs each blocked this long, a decision
// needs only kFewSamples and grows the target to what the jobs want at once (not doubling): with
// 10 ms jobs, 16 samples on 2 threads take 320 ms and each doubling more, while a burst queues
// behind the deadline. A module on the same cores blocks this long on its own locks only now and
// then, when the machine is loaded (a mean over the samples would count those few), so the
// doubling that keeps such a module from running away is kept for it.
constexpr uint32_t kFewSamples = 4;
constexpr uint64_t kNetworkBlockedNs = 500000;
constexpr std::chrono::milliseconds kAdaptEvery{100};
// Jobs that sleep less than this times their CPU time count as CPU-bound. A module on the same
// cores sleeps on its own locks, more so the more threads contend (SoftHSM2: ~0.6x its CPU time
// with 2 threads, 10x with 20), so read as blocking that sleep would keep adding threads; a
// network HSM's round trips sleep many times a call's CPU time (1 ms against ~0.1 ms).
constexpr double kSleepOverCpu = 1.5;
// A growth (by doubling) must raise the jobs done per second by this much by the next decision,
// or the pool goes back to where it was and does not grow again for kHoldGrowth. A module whose
// calls sleep on its own locks gets no faster with more threads: on a VM whose host steals CPU in
// bursts, SoftHSM2's lock waits passed kSleepOverCpu, more threads made them longer, and the pool
// ran away to 16 (seen in CI). A network HSM's jobs per second grow with the threads.
constexpr double kGrowthPayoff = 1.15;
constexpr std::chrono::milliseconds kHoldGrowth{1000};

}  // namespace

void nameThread(std::thread& t, const char* name) {
#ifdef __linux__
  pthread_setname_np(t.native_handle(), name);
#else
  (void)t;
  (void)name;
#endif
}

Workers::Workers(const EngineConfig& cfg, SessionPool& pool, Host& host, const std::atomic<bool>& aborting)
    : cfg_(cfg), pool_(pool), host_(host), aborting_(aborting) {
  maxStuck_ = cfg_.opTimeoutMs != 0 ? std::max<uint32_t>(cfg_.threads, 2) : 0;
  target_.store(cfg_.adaptCores != 0 ? std::min(cfg_.adaptCores, cfg_.threads) : cfg_.threads);
}

void Workers::complete(Job* j) {
  if (!done_.push(j)) return;
  // Announced before the check, so that disableNotify() waits for a call already past it.
  notifying_.fetch_add(1, std::memory_order_seq_cst);
  if (notifyEnabled_.load(std::memory_order_seq_cst) && notify_ != nullptr) notify_(notifyCtx_);
  notifying_.fetch_sub(1, std::memory_order_release);
}

void Workers::disableNotify() {
  notifyEnabled_.store(false, std::memory_order_seq_cst);
  while (notifying_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
}

void Workers::start() {
  queue_.restart();
  std::lock_guard<std::mutex> lk(workersMu_);
  workersStarted_ = true;
  watchdogStop_ = false;
  serving_.store(0);
  lastAdapt_ = Clock::now();
  avgCpuNs_ = avgBlockedNs_ = -1;
  for (uint32_t i = 0; i < cfg_.threads; ++i) spawnWorker();
  activeWorkers_ = cfg_.threads;
  watchdog_ = std::thread([this] { watchdogMain(); });
  nameThread(watchdog_, "xks-hsm-watch");
}

void Workers::spawnWorker() {
  Worker* w = nullptr;
  for (auto& slot : workers_) {
    if (slot->exited) {
      w = slot.get();
      break;
    }
  }
  if (w == nullptr) {
    workers_.push_back(std::make_unique<Worker>());
    w = workers_.back().get();
  }
  w->exited = false;
  w->job = nullptr;
  w->session = SessionPool::kNil;
  w->expired = w->stuck = w->sessionQuarantined = w->delivered = false;
  w->busyUntil = Clock::time_point::max();
  w->serving.store(false);
  threadsAlive_.fetch_add(1, std::memory_order_acq_rel);
  std::thread t([this, w] { workerMain(w); });
  nameThread(t, "xks-hsm");
  t.detach();
}

void Workers::workerMain(Worker* w) {
  const bool adaptive = cfg_.adaptCores != 0;
  uint32_t untilSample = 1;
  for (;;) {
    if (adaptive && !w->serving.load(std::memory_order_relaxed) && !enterGate(w)) break;
    Job* j = queue_.pop();
    if (j == nullptr) break;
    {
      std::lock_guard<std::mutex> lk(w->mu);
      w->job = j;
    }
    const bool sample = adaptive && --untilSample == 0;
    ThreadCost c0;
    Clock::time_point t0{};
    if (sample) {
      untilSample = kSampleEvery;
      c0 = ThreadCost::now();
      t0 = Clock::now();
    }
    try {
      host_.run(j, w);
    } catch (...) {
      j->clearResult();
      j->rv = CKR_HOST_MEMORY;
    }
    if (sample) {
      const auto wall =
          static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
      const ThreadCost c1 = ThreadCost::now();
      const uint64_t cpu = c1.cpuNs - c0.cpuNs;
      const bool slept = c1.sleeps != c0.sleeps;
      sampleCpuNs_.fetch_add(cpu, std::memory_order_relaxed);
      const uint64_t blocked = slept && wall > cpu ? wall - cpu : 0;
      sampleBlockedNs_.fetch_add(blocked, std::memory_order_relaxed);
      if (blocked >= kNetworkBlockedNs) sampleSlow_.fetch_add(1, std::memory_order_relaxed);
      samples_.fetch_add(1, std::memory_order_relaxed);
    }
    if (!finishJob(w, j)) {
      // A stuck thread came back while enough others serve: leave.
      {
        std::lock_guard<std::mutex> lk(workersMu_);
        if (w->serving.exchange(false)) serving_.fetch_sub(1);
        w->exited = true;
        workersCv_.notify_all();
      }
      // Last touch of this engine: once threadsAlive() reads 0 its owner may delete it (the
      // mutex and condition variable included), so the count drops after the unlock.
      threadsAlive_.fetch_sub(1, std::memory_order_acq_rel);
      return;
    }
    if (adaptive) leaveGateIfSurplus(w);
  }
  {
    std::lock_guard<std::mutex> lk(workersMu_);
    if (w->serving.exchange(false)) serving_.fetch_sub(1);
    w->exited = true;
    if (w->stuck) {
      w->stuck = false;
      --stuckThreads_;
    } else {
      --activeWorkers_;
    }
    workersCv_.notify_all();
  }
  threadsAlive_.fetch_sub(1, std::memory_order_acq_rel);  // last touch (see above)
}

bool Workers::settleJob(Job* j, bool expired) {
  if (!expired) {
    j->wipeInput();  // plaintext / key value: not needed any more
    if (j->xks == kTimeout) timeouts_.fetch_add(1, std::memory_order_relaxed);
    complete(j);
    return true;
  }
  // The watchdog settled this job already; dispose of it with the JS thread.
  j->wipeInput();
  j->output.wipe();
  if (j->handoff.fetch_or(Job::kWorkerDone, std::memory_order_acq_rel) & Job::kJsSeen) complete(j);
  return false;
}

bool Workers::deliver(Worker* w, Job* j, Clock::time_point busyUntil) {
  bool expired;
  {
    std::lock_guard<std::mutex> lk(w->mu);
    expired = w->expired;
    w->job = nullptr;
    w->expired = false;  // from here on: the deadline of the work that follows
    w->delivered = true;
    w->busyUntil = busyUntil;
  }
  return settleJob(j, expired);
}

bool Workers::finishJob(Worker* w, Job* j) {
  bool expired, stuck, delivered;
  {
    std::lock_guard<std::mutex> lk(w->mu);
    expired = w->expired;
    stuck = w->stuck;
    delivered = w->delivered;
    w->job = nullptr;
    w->expired = false;
    w->delivered = false;
    w->busyUntil = Clock::time_point::max();
  }
  if (!delivered) settleJob(j, expired);
  if (!stuck) return true;
  std::lock_guard<std::mutex> lk(workersMu_);
  {
    std::lock_guard<std::mutex> wl(w->mu);
    w->stuck = false;
  }
  --stuckThreads_;
  stuckCount_.store(stuckThreads_, std::memory_order_relaxed);
  if (activeWorkers_ < cfg_.threads && !watchdogStop_) {
    ++activeWorkers_;  // rejoin
    return true;
  }
  return false;
}

void Workers::expireRunning(Clock::time_point now) {
  std::vector<Job*> expired;
  {
    std::lock_guard<std::mutex> lk(workersMu_);
    uint32_t newlyStuck = 0;
    for (auto& slot : workers_) {
      Worker* w = slot.get();
      std::lock_guard<std::mutex> wl(w->mu);
      // A job past its deadline, or the work after a delivered job (the IV refill) past its own.
      const bool due = w->job != nullptr ? w->job->deadline <= now : w->delivered && w->busyUntil <= now;
      if (w->exited || w->expired || !due) continue;
      w->expired = true;
      if (Job* j = w->job) {
        j->timedOut = true;
        expired.push_back(j);
      }
      if (w->session != SessionPool::kNil && !w->sessionQuarantined && pool_.quarantine()) {
        w->sessionQuarantined = true;
      }
      if (!w->stuck) {
        w->stuck = true;
        // Its gate permit goes to a parked thread; back from the HSM, it passes the gate again.
        if (w->serving.exchange(false)) {
          serving_.fetch_sub(1);
          parkCv_.notify_one();
        }
        ++stuckThreads_;
        --activeWorkers_;
        ++newlyStuck;
      }
    }
    // Replacement threads, as long as the stuck ones stay within bounds.
    for (uint32_t i = 0; i < newlyStuck; ++i) {
      // At most threads + max(threads, 2) threads in all.
      if (threadsAlive_.load(std::memory_order_acquire) >= cfg_.threads + maxStuck_ || activeWorkers_ >= cfg_.threads ||
          watchdogStop_) {
        break;
      }
      spawnWorker();
      ++activeWorkers_;
    }
    stuckCount_.store(stuckThreads_, std::memory_order_relaxed);
  }
  for (Job* j : expired) {
    timeouts_.fetch_add(1, std::memory_order_relaxed);
    complete(j);
  }
}

bool Workers::enterGate(Worker* w) {
  std::unique_lock<std::mutex> lk(workersMu_);
  parkCv_.wait(lk, [this] { return watchdogStop_ || serving_.load() < target_.load(); });
  if (watchdogStop_) return false;
  serving_.fetch_add(1);
  w->serving.store(true);
  return true;
}

void Workers::leaveGateIfSurplus(Worker* w) {
  if (serving_.load(std::memory_order_relaxed) <= target_.load(std::memory_order_relaxed)) return;
  std::lock_guard<std::mutex> lk(workersMu_);
  if (serving_.load() > target_.load() && w->serving.exchange(false)) serving_.fetch_sub(1);
}

// Threads needed to keep cfg.adaptCores CPUs busy with calls that spend `cpu` on a CPU and
// `blocked` asleep (waiting for the HSM): adaptCores x (cpu + blocked) / cpu, rounded, within
// [min(adaptCores, threads), threads]; adaptCores while blocked < kSleepOverCpu x cpu. cpu and
// blocked per job are averaged over decisions (each new one weighs half), and the target at most
// doubles, or falls half the distance, per decision, so one noisy interval does not swing it;
// when 3 in 4 sampled jobs blocked kNetworkBlockedNs or more (a network HSM) it grows to the
// wanted count at once.
void Workers::adapt(Clock::time_point now) {
  if (now - lastAdapt_ < kAdaptEvery) return;
  lastAdapt_ = now;
  const uint32_t n = samples_.load(std::memory_order_relaxed);
  if (n < kFewSamples) return;
  const bool network = 4 * sampleSlow_.load(std::memory_order_relaxed) >= 3 * n;
  if (n < kMinSamples && !network) return;
  samples_.store(0, std::memory_order_relaxed);
  sampleSlow_.store(0, std::memory_order_relaxed);
  // Sampled jobs per second since the last decision: a measure of the jobs done.
  const double secs = std::chrono::duration<double>(now - lastDecision_).count();
  const double rate = lastDecision_ == Clock::time_point{} || secs <= 0 ? 0 : n / secs;
  lastDecision_ = now;
  if (grewFrom_ != 0) {
    const uint32_t from = grewFrom_;
    grewFrom_ = 0;
    if (!network && rate < kGrowthPayoff * rateBefore_ && target_.load() > from) {
      holdGrowthUntil_ = now + kHoldGrowth;
      std::lock_guard<std::mutex> lk(workersMu_);
      target_.store(from);
      return;
    }
  }
  const double cpu = static_cast<double>(sampleCpuNs_.exchange(0, std::memory_order_relaxed)) / n;
  const double blocked = static_cast<double>(sampleBlockedNs_.exchange(0, std::memory_order_relaxed)) / n;
  avgCpuNs_ = avgCpuNs_ < 0 ? cpu : (avgCpuNs_ + cpu) / 2;
  avgBlockedNs_ = avgBlockedNs_ < 0 ? blocked : (avgBlockedNs_ + blocked) / 2;
  const uint32_t lo = std::min(cfg_.adaptCores, cfg_.threads);
  double want = cfg_.threads;
  if (avgBlockedNs_ < kSleepOverCpu * avgCpuNs_) {
    want = lo;  // CPU-bound, the sleeps are the module's own locks
  } else if (avgCpuNs_ > 0) {
    want = std::round(cfg_.adaptCores * (avgCpuNs_ + avgBlockedNs_) / avgCpuNs_);
  }
  const auto w = static_cast<uint32_t>(std::clamp<double>(want, lo, cfg_.threads));
  const uint32_t cur = target_.load();
  const uint32_t next = w >= cur ? (network ? w : std::min(w, 2 * cur)) : cur - (cur - w + 1) / 2;
  if (next == cur) return;
  if (next > cur && !network) {
    if (now < holdGrowthUntil_) return;
    grewFrom_ = cur;
    rateBefore_ = rate;
  }
  std::lock_guard<std::mutex> lk(workersMu_);
  target_.store(next);
  if (next > cur) parkCv_.notify_all();
}

void Workers::watchdogMain() {
  using namespace std::chrono;
  const milliseconds tick = cfg_.opTimeoutMs == 0
                                ? milliseconds(50)
                                : std::clamp(milliseconds(cfg_.opTimeoutMs / 20), milliseconds(1), milliseconds(5));
  const milliseconds grace = std::max(milliseconds(500), milliseconds(2 * cfg_.opTimeoutMs));
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(workersMu_);
      workersCv_.wait_for(lk, tick);
      if (watchdogStop_) {
        const bool allGone = threadsAlive_.load(std::memory_order_acquire) == 0;
        const bool onlyStuck = threadsAlive_.load(std::memory_order_acquire) == stuckThreads_;
        // Without a deadline nothing marks a thread stuck: every thread still alive past the
        // grace period is inside a PKCS#11 call that has not returned (idle workers leave at
        // once), so close must not wait for it either, or a call blocked in the HSM would
        // hold up shutdown and process exit for as long as it stays blocked. Abort (process
        // exit, environment teardown) gives up at once on stuck threads only: a thread that is
        // merely finishing its job gets the grace period too, or the module's static
        // destructors, which run right after the exit hook, would race its calls.
        const bool onlyBusy = onlyStuck || cfg_.opTimeoutMs == 0;
        if (allGone || (onlyStuck && aborting_.load()) || (onlyBusy && Clock::now() - closeBegan_ > grace)) {
          lk.unlock();
          if (allGone) host_.shutdown();
          // else: a PKCS#11 call is still running; the module stays loaded (the process is
          // most likely exiting) and the engine is leaked by its owner.
          Job* cj = closeJob_.exchange(nullptr);
          if (cj != nullptr) complete(cj);
          return;
        }
      }
    }
    const auto now = Clock::now();
    if (cfg_.adaptCores != 0) adapt(now);
    if (cfg_.opTimeoutMs == 0) continue;
    for (Job* j = queue_.popExpired(now); j != nullptr;) {
      Job* next = j->next;
      j->next = nullptr;
      j->clearResult();
      j->xks = kTimeout;
      j->wipeInput();
      timeouts_.fetch_add(1, std::memory_order_relaxed);
      complete(j);
      j = next;
    }
    expireRunning(now);
  }
}

Job* Workers::beginClose(Job* closeJob) {
  closeJob_.store(closeJob);
  Job* drained = queue_.stopAndDrain();
  std::lock_guard<std::mutex> lk(workersMu_);
  closeBegan_ = Clock::now();
  watchdogStop_ = true;
  parkCv_.notify_all();
  if (!workersStarted_) {
    // never opened: nothing to wait for
    Job* cj = closeJob_.exchange(nullptr);
    if (cj != nullptr) complete(cj);
  }
  workersCv_.notify_all();
  return drained;
}

Job* Workers::stop(bool& started) {
  Job* drained = queue_.stopAndDrain();
  std::lock_guard<std::mutex> lk(workersMu_);
  started = workersStarted_;
  if (!watchdogStop_) closeBegan_ = Clock::now();
  watchdogStop_ = true;
  parkCv_.notify_all();
  workersCv_.notify_all();
  return drained;
}

void Workers::join() {
  if (watchdog_.joinable()) watchdog_.join();
}

}  // namespace xks
