// The engine's threads: `threads` detached workers that pop jobs from the queue and run
// them (with cfg.adaptCores, only `target` of them serve and the others park; see adapt()), and one watchdog that
// enforces the operation deadline (opTimeoutMs): it expires queued jobs, settles running jobs that overran with
// XKS_TIMEOUT, quarantines their thread and session and starts a replacement thread, and finishes close. Also the
// completion stack every engine thread hands finished jobs back on.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "engine_config.h"
#include "job.h"
#include "job_queue.h"
#include "session_pool.h"
#include "status.h"

namespace xks {

// One per worker thread; guarded by its mutex (the worker and the watchdog).
struct Worker {
  std::mutex mu;
  Job* job = nullptr;               // running job
  uint32_t session = 0xffffffffu;   // pool slot in use
  bool expired = false;             // the watchdog settled `job` (timeout)
  bool stuck = false;               // counted in stuckThreads_
  bool sessionQuarantined = false;  // `session` moved to the pool's quarantine
  bool exited = true;               // slot free for a new thread
  // `job` went to the JS thread early (deliver) and the thread still works for the engine in
  // its session (the IV refill) until this deadline (max: none); the watchdog watches it.
  bool delivered = false;
  Clock::time_point busyUntil = Clock::time_point::max();
  std::atomic<bool> serving{false};  // holds an adaptive gate permit (written under workersMu_)
};

// The name `top -H`, perf and /proc/PID/task/TID/comm show for an engine thread (Linux: at
// most 15 characters; elsewhere a no-op). Set by the creating thread, so the name is there
// before anything the creator does next (open() resolving, for one).
void nameThread(std::thread& t, const char* name);

class Workers {
 public:
  using Notify = void (*)(void* ctx);
  // What the threads run: a job (on worker w), and the module's release once every thread
  // is gone after close.
  class Host {
   public:
    virtual void run(Job* j, Worker* w) = 0;
    virtual void shutdown() = 0;

   protected:
    ~Host() = default;
  };

  Workers(const EngineConfig& cfg, SessionPool& pool, Host& host, const std::atomic<bool>& aborting);
  Workers(const Workers&) = delete;
  Workers& operator=(const Workers&) = delete;

  void setNotify(Notify fn, void* ctx) {
    notify_ = fn;
    notifyCtx_ = ctx;
  }
  // Hands a finished job back to the JS thread.
  void complete(Job* j);
  // On worker w, inside Host::run: hands j, finished, to the JS thread before run returns (the
  // thread then works on without a job until `busyUntil`, watched as a job with that deadline).
  // False: the watchdog had settled j already (it overran its deadline).
  bool deliver(Worker* w, Job* j, Clock::time_point busyUntil);
  // Once it returns, no engine thread is calling notify (the thread-safe function may go).
  void disableNotify();
  Job* takeCompleted() { return done_.takeAll(); }

  void start();
  void submit(Job* j) {
    if (cfg_.opTimeoutMs != 0) {
      // An Encrypt with CDIV is two HSM calls in one job (the verifying decrypt): two deadlines' time.
      const auto* c = std::get_if<CryptArgs>(&j->payload);
      const uint32_t calls = j->op == Op::Encrypt && c != nullptr && c->verify ? 2 : 1;
      j->deadline = j->submitted + std::chrono::milliseconds(cfg_.opTimeoutMs) * calls;
    }
    queue_.push(j);
  }
  // Stops the workers after their running job; returns the queued jobs (FIFO list).
  // When the last worker has exited and the module is released, closeJob completes
  // (or, with threads stuck in the HSM past a grace period, without releasing the module).
  Job* beginClose(Job* closeJob);
  // Abort: the same without a close job; `started` says whether there were threads.
  Job* stop(bool& started);
  void join();  // the watchdog (it leaves when the threads are gone, or only stuck ones remain)
  void forgetCloseJob() { closeJob_.store(nullptr); }

  uint32_t threadsAlive() const { return threadsAlive_.load(std::memory_order_acquire); }
  uint32_t stuck() const { return stuckCount_.load(std::memory_order_relaxed); }
  uint64_t timeouts() const { return timeouts_.load(std::memory_order_relaxed); }
  // Threads allowed to serve (cfg.threads unless adaptive).
  uint32_t target() const { return target_.load(std::memory_order_relaxed); }

 private:
  void spawnWorker();  // workersMu_ held
  void workerMain(Worker* w);
  bool finishJob(Worker* w, Job* j);     // false: the thread must exit (surplus)
  bool settleJob(Job* j, bool expired);  // to the JS thread; false: the watchdog had settled it
  void watchdogMain();
  void expireRunning(Clock::time_point now);
  // Adaptive only: waits (parked) until w may serve; false once the engine stops.
  bool enterGate(Worker* w);
  // Adaptive only, after a job: w parks again when more threads serve than the target.
  void leaveGateIfSurplus(Worker* w);
  // Adaptive only (watchdog): the target from the calls' CPU, run-queue and blocked time.
  void adapt(Clock::time_point now);

  const EngineConfig& cfg_;
  SessionPool& pool_;
  Host& host_;
  const std::atomic<bool>& aborting_;  // waiting jobs give up at once

  JobQueue<Job> queue_;
  CompletionStack<Job> done_;
  Notify notify_ = nullptr;
  void* notifyCtx_ = nullptr;
  std::atomic<bool> notifyEnabled_{true};
  std::atomic<uint32_t> notifying_{0};  // threads between the check of notifyEnabled_ and notify_

  // Worker threads are detached; workersMu_ guards the slots and the counts below.
  std::mutex workersMu_;
  std::condition_variable workersCv_;
  std::vector<std::unique_ptr<Worker>> workers_;
  uint32_t activeWorkers_ = 0;  // not stuck
  uint32_t stuckThreads_ = 0;
  uint32_t maxStuck_ = 0;
  std::atomic<uint32_t> threadsAlive_{0};
  bool workersStarted_ = false;
  std::thread watchdog_;
  bool watchdogStop_ = false;  // workersMu_
  std::atomic<Job*> closeJob_{nullptr};
  Clock::time_point closeBegan_{};

  // The adaptive gate (workersMu_): serving_ threads hold a permit, at most target_ of them
  // (a stuck thread gives its permit up); the others wait on parkCv_.
  std::condition_variable parkCv_;
  std::atomic<uint32_t> serving_{0};  // written under workersMu_
  std::atomic<uint32_t> target_{1};
  Clock::time_point lastAdapt_{};
  double avgCpuNs_ = -1, avgBlockedNs_ = -1;  // per sampled job, watchdog only (-1: none yet)
  // Whether the last growth paid (watchdog only): the target it grew from (0: none to check),
  // the sampled jobs per second before it, and until when growth is held after one that did not.
  Clock::time_point lastDecision_{};
  uint32_t grewFrom_ = 0;
  double rateBefore_ = 0;
  Clock::time_point holdGrowthUntil_{};
  // Sampled cost of jobs (ns), summed by the workers, taken by adapt().
  alignas(64) std::atomic<uint64_t> sampleCpuNs_{0};
  std::atomic<uint64_t> sampleBlockedNs_{0};
  std::atomic<uint32_t> samples_{0};
  std::atomic<uint32_t> sampleSlow_{0};  // samples blocked kNetworkBlockedNs or more

  alignas(64) std::atomic<uint64_t> timeouts_{0};
  std::atomic<uint32_t> stuckCount_{0};
};

}  // namespace xks
