// An engine's logged-in sessions: the pool's slots opened (C_OpenSession + C_Login), leased
// to a job, given back idle or closed, and quarantined with a job that overran. The user's
// PIN lives here.
//
// The HSM's session cap: a C_OpenSession refused with CKR_SESSION_COUNT while this engine has
// sessions open does not fail the job. The pool stops growing at the number it has (the cap,
// reported once through takeCapNote() for the operator's WARN) and the job waits for one of
// them like any job that finds the pool full (until the pool timeout or its deadline). The
// cap is lifted cfg.sessionRegrowMs later, and the pool tries to grow again (learning it anew if the
// HSM still refuses). With no session of its own open, the refusal fails the job as before.
#pragma once

#include <p11-kit/pkcs11.h>

#include <atomic>
#include <cstdint>

#include "engine_config.h"
#include "job.h"
#include "key_cache.h"
#include "secure_buffer.h"
#include "session_pool.h"
#include "status.h"
#include "token.h"
#include "workers.h"

namespace xks {

class Sessions {
 public:
  Sessions(const EngineConfig& cfg, const Token& token, KeyCache& keys, const std::atomic<bool>& aborting,
           const uint8_t* pin, size_t pinLen);
  Sessions(const Sessions&) = delete;
  Sessions& operator=(const Sessions&) = delete;

  // A job's pool session; gives it back (closed unless keep() said otherwise) however the
  // job ends, exceptions included. Declared after the context lock, so it ends first.
  class Lease {
   public:
    Lease(Sessions& sessions, Worker* w, uint32_t idx) : sessions_(sessions), w_(w), idx_(idx) {}
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    // Closed unless told otherwise: a job that threw may have left an operation active.
    ~Lease() { sessions_.end(w_, idx_, close_); }
    void keep(bool closeIt) { close_ = closeIt; }

   private:
    Sessions& sessions_;
    Worker* w_;
    uint32_t idx_;
    bool close_ = true;
  };

  // All below: the caller holds the context lock (shared for jobs, open and shutdown,
  // exclusive for re-initialization).

  // A session for job j on worker w: an idle one, a new one, or (waiting until the pool
  // timeout or the job's deadline) the next one given back.
  Status acquire(const Job* j, Worker* w, uint32_t& idx);
  // Opens and logs in a session into the reserved slot idx.
  Status openInto(uint32_t idx, bool releaseOnFailure = true);
  void release(uint32_t idx, bool close);
  void closeAllIdle();
  // After a device-level failure (exclusive lock: every open session is idle): probes the
  // idle sessions and closes the ones that fail too.
  void probeIdle();

  CK_SESSION_HANDLE handle(uint32_t idx) const { return pool_.handle(idx); }
  SessionPool& pool() { return pool_; }
  const SessionPool& pool() const { return pool_; }
  void countError() { sessionErrors_.fetch_add(1, std::memory_order_relaxed); }
  uint64_t errors() const { return sessionErrors_.load(std::memory_order_relaxed); }
  // The HSM's session cap in force (0: none), and C_OpenSession calls it refused so far.
  uint32_t sessionLimit() const { return pool_.limit() < pool_.capacity() ? pool_.limit() : 0; }
  uint64_t sessionCountRefused() const { return countRefused_.load(std::memory_order_relaxed); }
  // The cap in force when one was learned since the last call, if it was not reported
  // before (0: nothing new). The JS thread only.
  uint32_t takeCapNote();
  void wipePin() { pin_.release(); }

 private:
  // Gives back the session a job used: idle again, or closed (after an error, with eager
  // close, or when the job overran its deadline); `opened` false: no session was opened
  // into the reserved slot.
  void end(Worker* w, uint32_t idx, bool close, bool opened = true);
  // After a C_OpenSession refused with CKR_SESSION_COUNT (its slot given back): caps the pool
  // at the sessions open now; false when there are none (nothing to wait for).
  bool learnCap();
  // The cap's sessionRegrowMs are over: let the pool try to grow again.
  void regrowIfDue();

  const EngineConfig& cfg_;
  const Token& t_;
  KeyCache& keys_;
  const std::atomic<bool>& aborting_;
  SecureBuffer pin_;
  SessionPool pool_;
  std::atomic<uint64_t> sessionErrors_{0};
  std::atomic<int64_t> capUntilNs_{0};  // steady clock: the cap holds until then
  uint32_t notedCap_ = 0;               // the last cap reported (JS thread)
  std::atomic<bool> capNote_{false};    // a cap was learned since the last takeCapNote
  std::atomic<uint32_t> opening_{0};    // acquire()s inside C_OpenSession / C_Login
  std::atomic<uint64_t> countRefused_{0};
};

}  // namespace xks
