// The PKCS#11 engine: one per event loop. Knows nothing about N-API; addon.cc wraps it for
// JavaScript. It puts together the named parts and runs each job through them:
//
//   Workers     (workers.h)     worker and watchdog threads, deadlines, quarantine, completion
//   ModuleLink  (module_link.h) module open, readiness, re-initialization with backoff, locks
//   Sessions    (sessions.h)    the logged-in session pool, leases
//   KeyCache    (key_cache.h)   label -> key handle, session copies of keys
//   IvHistory   (iv_check.h)    checks of HSM-generated IVs, the start-up IV test
//   IvBuffer    (iv_buffer.h)   random-IV mode: IVs from batches of HSM randomness
//   ops.h       (op_*.cc)       the PKCS#11 calls of each operation
//   registry.h                  the process-wide context lock and list of engines
//
// Threads:
//   JS thread     - submits jobs, takes completed jobs (takeCompleted) and settles them.
//   open thread   - one per open(): loads/initializes the module, first session, login.
//   workers       - `threads` of them (detached); pop jobs from the queue and run them.
//   watchdog      - one; enforces the operation deadline (opTimeoutMs).
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>

#include "engine_config.h"
#include "iv_buffer.h"
#include "iv_check.h"
#include "job.h"
#include "key_cache.h"
#include "module_link.h"
#include "sessions.h"
#include "token.h"
#include "workers.h"

namespace xks {

struct EngineStats {
  uint32_t sessionsOpen, sessionsIdle, sessionsQuarantined, workersStuck;
  uint64_t reinitializations, timeouts, sessionErrors;
  bool ready;
  uint32_t keyCopies;            // cached keys that use a session copy
  bool keySessionOpen;           // the session that holds the copies
  bool ivBuffer;                 // random-IV mode with the IV buffer in use (false: its memory could not be locked)
  uint32_t sessionLimit;         // the HSM's session cap the pool keeps to (0: none learned)
  uint64_t sessionCountRefused;  // C_OpenSession calls the HSM refused with CKR_SESSION_COUNT
};

class Core : private Workers::Host {
 public:
  using Notify = Workers::Notify;

  Core(EngineConfig cfg, const uint8_t* pin, size_t pinLen);
  ~Core();
  Core(const Core&) = delete;
  Core& operator=(const Core&) = delete;

  // ---- JS thread ----
  void setNotify(Notify fn, void* ctx) { workers_.setNotify(fn, ctx); }
  void startOpen(Job* j);  // runs ModuleLink::open on a new thread, then completes j
  void joinOpenThread();
  void startWorkers() { workers_.start(); }
  void submit(Job* j) { workers_.submit(j); }
  // Stops the workers after their running job; returns the queued jobs (FIFO list).
  // When the last worker has exited and the module is released, closeJob completes
  // (or, with threads stuck in the HSM past a grace period, without releasing the module).
  Job* beginClose(Job* closeJob) { return workers_.beginClose(closeJob); }
  void joinWorkers() { workers_.join(); }
  // Once it returns, no engine thread is calling notify (the thread-safe function may go).
  void disableNotify() { workers_.disableNotify(); }
  // Threads still running (stuck in a PKCS#11 call after close/abort); the Core must then
  // outlive them (the owner leaks it).
  uint32_t threadsAlive() const { return workers_.threadsAlive(); }
  Job* takeCompleted() { return workers_.takeCompleted(); }
  // Environment teardown or process exit: stop everything without notifying; returns
  // the jobs that will never be settled (queued + completed) for the caller to free.
  // Idempotent; the JS thread (or the exiting thread) only.
  Job* abort();
  void wipePin() { sessions_.wipePin(); }
  // A session cap the pool learned and nobody was told of yet (0: none); see sessions.h.
  uint32_t takeCapNote() { return sessions_.takeCapNote(); }
  EngineStats stats() const;

  // Another engine is about to re-initialize module m (registry.h).
  void forgetForReinit(const Module* m) { link_.forgetForReinit(m); }

 private:
  void run(Job* j, Worker* w) override;  // a worker thread
  void shutdown() override { link_.shutdown(); }
  void runSessionJob(Job* j, Worker* w);
  void runTokenInfo(Job* j);
  // Random-IV mode with the IV buffer off: why, in the open result (the start-up WARN).
  void noteIvBuffer(OpenResult& r) const;
  // The PKCS#11 calls of j's operation in session s.
  Status call(Job* j, CK_SESSION_HANDLE s, bool& dirty);
  void setResult(Job* j, const Status& st);
  // After j, a random-IV Encrypt that claimed the IV buffer's refill, in session s: hands j to
  // the JS thread first (Workers::deliver), then refills with the same lease.
  void refillIvs(Job* j, Worker* w, CK_SESSION_HANDLE s, Sessions::Lease& lease);

  const EngineConfig cfg_;
  std::atomic<bool> aborting_{false};  // waiting jobs give up at once
  Token token_;
  KeyCache keys_;
  Sessions sessions_;
  IvHistory ivs_;
  IvBuffer ivPool_;
  ModuleLink link_;
  Workers workers_;
  std::thread openThread_;
  bool aborted_ = false;
  std::atomic<uint32_t> decryptSlack_{0};  // extra output room the module asked for on decrypt
};

}  // namespace xks
