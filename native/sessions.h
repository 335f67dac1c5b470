// An engine's logged-in sessions: the pool's slots opened (C_OpenSession + C_Login), leased
// to a job, given back idle or closed, and quarantined with a job that overran. The user's
// PIN lives here.
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
  void wipePin() { pin_.release(); }

 private:
  // Gives back the session a job used: idle again, or closed (after an error, with eager
  // close, or when the job overran its deadline); `opened` false: no session was opened
  // into the reserved slot.
  void end(Worker* w, uint32_t idx, bool close, bool opened = true);

  const EngineConfig& cfg_;
  const Token& t_;
  KeyCache& keys_;
  const std::atomic<bool>& aborting_;
  SecureBuffer pin_;
  SessionPool pool_;
  std::atomic<uint64_t> sessionErrors_{0};
};

}  // namespace xks
