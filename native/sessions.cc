#include "sessions.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

namespace xks {

Sessions::Sessions(const EngineConfig& cfg, const Token& token, KeyCache& keys, const std::atomic<bool>& aborting,
                   const uint8_t* pin, size_t pinLen)
    : cfg_(cfg),
      t_(token),
      keys_(keys),
      aborting_(aborting),
      pool_(cfg.poolMaxSize, cfg.opTimeoutMs != 0 ? cfg.poolMaxSize : 0) {
  pin_.assign(pin, pinLen);
}

Status Sessions::acquire(const Job* j, Worker* w, uint32_t& idx) {
  const auto poolDeadline = j->submitted + std::chrono::milliseconds(cfg_.poolTimeoutMs);
  const bool opFirst = j->deadline < poolDeadline;
  const auto deadline = opFirst ? j->deadline : poolDeadline;
  auto own = [&](uint32_t i) {
    std::lock_guard<std::mutex> lk(w->mu);
    w->session = i;
  };
  for (unsigned attempt = 0;; ++attempt) {
    if (pool_.popIdle(idx)) {
      own(idx);
      return Status{};
    }
    if (attempt == 0) regrowIfDue();
    // Counted as opening before the slot is reserved: a refusal that counts this reservation
    // (learnCap) then sees opening_ above zero, so the cap is told only once this open settles.
    opening_.fetch_add(1, std::memory_order_acq_rel);
    if (pool_.reserve(idx)) {
      own(idx);
      Status st = openInto(idx, false);
      if (!st.ok()) end(w, idx, true, false);
      // The HSM allows no more sessions: wait for one of ours instead of failing.
      const bool wait = !st.ok() && st.rv == CKR_SESSION_COUNT && st.fn != nullptr &&
                        std::strcmp(st.fn, "C_OpenSession") == 0 && learnCap();
      opening_.fetch_sub(1, std::memory_order_acq_rel);
      if (!wait) return st;
      continue;
    }
    opening_.fetch_sub(1, std::memory_order_acq_rel);
    const auto now = Clock::now();
    if (now >= deadline) return Status{CKR_OK, nullptr, opFirst ? kTimeout : kPoolExhausted};
    if (aborting_.load(std::memory_order_relaxed)) return Status{CKR_OK, nullptr, "XKS_CLOSED"};
    if (attempt < 2) {
      std::this_thread::yield();
    } else {
      // 25us, 50us, ... capped at 1ms, never past the deadline.
      auto pause = std::chrono::microseconds(25u << std::min(attempt - 2, 5u));
      auto left = std::chrono::duration_cast<std::chrono::microseconds>(deadline - now);
      std::this_thread::sleep_for(std::min<std::chrono::microseconds>(pause, left));
    }
  }
}

bool Sessions::learnCap() {
  countRefused_.fetch_add(1, std::memory_order_relaxed);
  // Open or being opened by this engine: an open still in flight may yet succeed (the HSM
  // counts it already) or be refused too. Within one cap period the smallest count holds: the
  // last refusal of a burst counts exactly the sessions the HSM granted.
  const uint32_t cap = pool_.openCount();
  if (cap == 0) return false;
  uint32_t cur = pool_.limit();
  while (!pool_.lowerLimit(cur, cur < pool_.capacity() && cur < cap ? cur : cap)) {
  }
  capUntilNs_.store(nanos(Clock::now()) + int64_t{cfg_.sessionRegrowMs} * 1000000, std::memory_order_relaxed);
  capNote_.store(true, std::memory_order_release);
  return true;
}

uint32_t Sessions::takeCapNote() {
  // While opens are in flight the cap may still come down: told once it has settled.
  if (opening_.load(std::memory_order_acquire) != 0) return 0;
  if (!capNote_.exchange(false, std::memory_order_acq_rel)) return 0;
  const uint32_t cap = sessionLimit();
  if (cap == 0 || cap == notedCap_) return 0;
  notedCap_ = cap;
  return cap;
}

void Sessions::regrowIfDue() {
  if (pool_.limit() >= pool_.capacity()) return;
  if (nanos(Clock::now()) < capUntilNs_.load(std::memory_order_relaxed)) return;
  pool_.setLimit(pool_.capacity());
}

Status Sessions::openInto(uint32_t idx, bool releaseOnFailure) {
  CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
  CK_RV rv = t_.f->C_OpenSession(t_.slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &h);
  if (rv != CKR_OK) {
    if (releaseOnFailure) pool_.unreserve(idx);
    return Status{rv, "C_OpenSession"};
  }
  // Object handles are valid for a login: when the application's last session closed, the
  // user was logged out and a module may hand the old numbers to other objects after the
  // next login. A key handle found before this login is therefore never used after it: the
  // cache is emptied *before* logging in (if another session kept the login alive, the next
  // lookup merely finds the same handles again). Clearing after the login would leave a
  // window in which another worker could use a stale handle with the new login. While the
  // key session is open the user never was logged out, and the handles stand.
  keys_.forgetUnlessHeld();
  rv = t_.f->C_Login(h, CKU_USER, pin_.empty() ? g_empty : pin_.data(), pin_.size());
  if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
    t_.f->C_CloseSession(h);
    if (releaseOnFailure) pool_.unreserve(idx);
    return Status{rv, "C_Login"};
  }
  pool_.setHandle(idx, h);
  return Status{};
}

void Sessions::release(uint32_t idx, bool close) {
  if (close) {
    if (t_.f == nullptr) {
      pool_.unreserve(idx);
      return;
    }
    t_.f->C_CloseSession(pool_.handle(idx));
    pool_.unreserve(idx);
    // Closing the application's last session logs the user out, and a module may then
    // invalidate (and later reuse) the handles of private objects: forget them all (unless
    // the key session keeps the login).
    if (pool_.openCount() == 0) keys_.forgetUnlessHeld();
  } else {
    pool_.pushIdle(idx);
  }
}

void Sessions::closeAllIdle() {
  uint32_t idx;
  while (pool_.popIdle(idx)) {
    if (t_.f != nullptr) t_.f->C_CloseSession(pool_.handle(idx));
    pool_.unreserve(idx);
  }
}

void Sessions::end(Worker* w, uint32_t idx, bool close, bool opened) {
  bool quarantined;
  {
    std::lock_guard<std::mutex> lk(w->mu);
    quarantined = w->sessionQuarantined;
    if (w->expired) close = true;  // late: the session is retired whatever the outcome
    w->sessionQuarantined = false;
    w->session = SessionPool::kNil;
  }
  if (!opened) {
    if (quarantined) {
      pool_.unquarantine(idx);
    } else {
      pool_.unreserve(idx);
    }
    return;
  }
  if (!quarantined) {
    release(idx, close);
    return;
  }
  if (t_.f != nullptr) t_.f->C_CloseSession(pool_.handle(idx));
  pool_.unquarantine(idx);
  if (pool_.openCount() == 0) keys_.forgetUnlessHeld();
}

void Sessions::probeIdle() {
  std::vector<uint32_t> keep;
  uint32_t idx;
  while (pool_.popIdle(idx)) {
    CK_SESSION_INFO info;
    CK_RV r = t_.f->C_GetSessionInfo(pool_.handle(idx), &info);
    if (r == CKR_OK) {
      keep.push_back(idx);
    } else {
      t_.f->C_CloseSession(pool_.handle(idx));
      pool_.unreserve(idx);
      sessionErrors_.fetch_add(1, std::memory_order_relaxed);
    }
  }
  for (uint32_t k : keep) pool_.pushIdle(k);
}

}  // namespace xks
