// An engine's hold on its PKCS#11 module: open (load, initialize, first session and login,
// the start-up IV test), readiness, recovery (re-initialization with backoff after the
// module failed) and shutdown; and the locks every call sequence takes.
//
// Every job runs under a shared lock of the context lock, one lock for the whole process
// (registry.h); module re-initialization takes it exclusively, so C_Finalize never races a
// PKCS#11 call of any engine (several event loops each have an engine on one module). open
// and close take it shared: their C_Initialize / C_Finalize happen only while no other engine
// holds the module (reference count 0), and waiting for the other engines' calls could take
// forever (a call stuck in the HSM). A re-initialization also makes the other engines on the
// module drop their sessions and key handles, which C_Finalize invalidates. With a deadline,
// exclusive acquisition is bounded (a stuck call holds its shared lock).
//
// A module that refused OS locking was initialized with NULL arguments (module.h): every call
// sequence (a job, open, shutdown) then also takes the module's serial mutex, so the module
// never sees two calls at once from this process; jobs wait for it at most until their deadline.
#pragma once

#include <p11-kit/pkcs11.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <shared_mutex>

#include "engine_config.h"
#include "iv_buffer.h"
#include "iv_check.h"
#include "job.h"
#include "key_cache.h"
#include "module.h"
#include "sessions.h"
#include "status.h"
#include "token.h"

namespace xks {

class Core;

// Serializes PKCS#11 calls when the module was initialized without OS locking.
class SerialGuard {
 public:
  // Takes `mu` (when non-null) by `deadline`; false: not in time.
  bool acquire(std::timed_mutex* mu, Clock::time_point deadline) {
    if (mu == nullptr) return true;
    lk_ = std::unique_lock<std::timed_mutex>(*mu, std::defer_lock);
    if (deadline == Clock::time_point::max()) {
      lk_.lock();
      return true;
    }
    return lk_.try_lock_until(deadline);
  }

 private:
  std::unique_lock<std::timed_mutex> lk_;
};

class ModuleLink {
 public:
  using ContextLock = std::shared_lock<std::shared_timed_mutex>;

  ModuleLink(const EngineConfig& cfg, const Core* owner, Token& token, Sessions& sessions, KeyCache& keys,
             IvHistory& ivs, IvBuffer& ivPool);
  ModuleLink(const ModuleLink&) = delete;
  ModuleLink& operator=(const ModuleLink&) = delete;

  // The open thread: fills j's OpenResult, or fails j.
  void open(Job* j);
  // Every engine thread gone: closes the sessions and lets go of the module.
  void shutdown();

  // Before a job's PKCS#11 calls: waits out a pending re-initialization, takes `lk` (the
  // context lock, shared; constructed deferred), re-initializes a module that is down (with
  // backoff), takes the module's serial mutex when it has one. false: j failed (the module is
  // down: its last initialization error; the serial mutex not in time: XKS_TIMEOUT).
  bool enter(Job* j, ContextLock& lk, SerialGuard& serial);
  ContextLock deferredLock() { return ContextLock(ctxMu_, std::defer_lock); }
  // After a job failed with a session- or device-level code (no lock held): a device-level
  // code probes the idle sessions, and resets the module when none is left.
  void afterFailure(CK_RV rv);

  // Another engine is about to re-initialize module m (exclusive lock held): if it is this
  // engine's, close the idle sessions while their handles are valid, forget the key handles and
  // discard the buffered IVs.
  void forgetForReinit(const Module* m);

  bool ready() const { return nextRetryNs_.load(std::memory_order_relaxed) == 0; }
  uint64_t reinitializations() const { return reinitializations_.load(std::memory_order_relaxed); }

 private:
  Status findSlot();
  bool lockExclusive(std::unique_lock<std::shared_timed_mutex>& lk);
  void waitForReinit();  // before taking the shared lock
  void recover();        // module not usable: retry re-initialization (with backoff)
  void reinitLocked();   // exclusive lock held

  const EngineConfig& cfg_;
  const Core* owner_;
  Token& t_;
  Sessions& sessions_;
  KeyCache& keys_;
  IvHistory& ivs_;
  IvBuffer& ivPool_;  // wiped whenever the module is finalized or re-initialized

  std::shared_timed_mutex& ctxMu_;           // process-wide (registry)
  std::atomic<uint32_t>& exclusivePending_;  // process-wide, with ctxMu_
  Module* mod_ = nullptr;
  bool ready_ = false;
  CK_RV lastInitRv_ = CKR_CRYPTOKI_NOT_INITIALIZED;
  const char* lastInitFn_ = "C_Initialize";
  Clock::time_point lastInitAttempt_{};
  std::chrono::milliseconds backoff_{0};
  std::atomic<int64_t> nextRetryNs_{0};  // steady clock; no re-initialization attempt before
  // The module was initialized with NULL arguments (no OS locking): every call sequence takes
  // serialMu_ (the module's, process-wide). Set by open, before the workers start.
  std::timed_mutex* serialMu_ = nullptr;
  alignas(64) std::atomic<uint64_t> reinitializations_{0};
};

}  // namespace xks
