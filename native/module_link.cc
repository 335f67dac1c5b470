#include "module_link.h"

#include <algorithm>
#include <thread>
#include <vector>

#include "registry.h"

namespace xks {

namespace {

constexpr std::chrono::milliseconds kBackoffMin{25};
constexpr std::chrono::milliseconds kBackoffMax{1000};

}  // namespace

ModuleLink::ModuleLink(const EngineConfig& cfg, const Core* owner, Token& token, Sessions& sessions, KeyCache& keys,
                       IvHistory& ivs, IvBuffer& ivPool)
    : cfg_(cfg),
      owner_(owner),
      t_(token),
      sessions_(sessions),
      keys_(keys),
      ivs_(ivs),
      ivPool_(ivPool),
      ctxMu_(registry::contextMutex()),
      exclusivePending_(registry::exclusivePending()) {}

bool ModuleLink::enter(Job* j, ContextLock& lk, SerialGuard& serial) {
  waitForReinit();
  lk.lock();
  if (!ready_) {
    lk.unlock();
    recover();
    lk.lock();
    if (!ready_) {
      j->rv = lastInitRv_;
      j->fn = lastInitFn_;
      return false;
    }
  }
  if (!serial.acquire(serialMu_, j->deadline)) {
    j->xks = kTimeout;
    return false;
  }
  return true;
}

void ModuleLink::forgetForReinit(const Module* m) {
  if (m != mod_) return;
  ivPool_.wipe();
  sessions_.closeAllIdle();
  keys_.clear();
}

void ModuleLink::open(Job* j) {
  // Shared, not exclusive: acquireModule initializes the module only when no engine holds
  // it (no other call can be running then), and the exclusive lock would wait for every
  // call of the other engines, forever for one stuck in the HSM. Shared still excludes
  // another engine's re-initialization (which reads mod_ and drops our sessions).
  std::shared_lock<std::shared_timed_mutex> lk(ctxMu_);
  LoadError err;
  Module* m = acquireModule(cfg_.modulePath, err);
  if (m == nullptr) {
    j->rv = err.rv;
    j->fn = err.fn;
    j->xks = err.xks;
    j->detail = err.detail;
    return;
  }
  registry::installExitHook();
  mod_ = m;
  t_.f = moduleFunctions(m);
  OpenResult& r = j->as<OpenResult>();
  r = OpenResult{};
  Status st{err.rv, err.fn};
  if (st.ok()) {
    serialMu_ = moduleSerialMutex(m);
    r.serialized = serialMu_ != nullptr;
    r.lockingRv = moduleLockingRv(m);
  }
  SerialGuard serial;
  serial.acquire(serialMu_, Clock::time_point::max());
  if (st.ok()) st = findSlot();
  uint32_t idx = SessionPool::kNil;
  if (st.ok()) {
    if (sessions_.pool().reserve(idx)) {
      st = sessions_.openInto(idx);
      if (!st.ok()) idx = SessionPool::kNil;  // openInto gave the slot back
    } else {
      st.xks = kPoolExhausted;
    }
  }
  if (st.ok() && cfg_.ivMode != IvMode::Random) {
    st = selfTestIv(t_.f, sessions_.handle(idx), cfg_.ivMode, ivs_, r);
    if (!st.ok()) {
      // A test encrypt that failed for a PKCS#11 reason leaves the session suspect.
      sessions_.release(idx, true);
      idx = SessionPool::kNil;
      if (st.xks == nullptr) {
        // Not a verdict on the IV mode (the HSM refused the temporary key's use): per-request
        // checks only.
        r.ivCheck = "skipped";
        r.ivCheckRv = st.rv;
        r.ivCheckFn = st.fn;
        st = Status{};
        if (sessions_.pool().reserve(idx)) {
          st = sessions_.openInto(idx);
          if (!st.ok()) idx = SessionPool::kNil;
        }
      }
    }
  }
  if (idx != SessionPool::kNil) sessions_.pool().pushIdle(idx);
  if (!st.ok() && st.xks == nullptr && transientAtStart(st.rv)) {
    // The HSM is down or unreachable: serve anyway (calls fail fast and retry the
    // initialization with backoff, as after a failure at run time).
    sessions_.closeAllIdle();
    r.ready = false;
    r.downRv = st.rv;
    r.downFn = st.fn != nullptr ? st.fn : "C_Initialize";
    ready_ = false;
    lastInitRv_ = st.rv;
    lastInitFn_ = r.downFn;
    lastInitAttempt_ = Clock::now();
    backoff_ = kBackoffMin;
    nextRetryNs_.store(nanos(Clock::now()), std::memory_order_release);  // the first call retries
    return;
  }
  if (!st.ok()) {
    sessions_.closeAllIdle();
    keys_.clear();
    releaseModule(m);
    mod_ = nullptr;
    t_.f = nullptr;
    serialMu_ = nullptr;
    j->rv = st.rv;
    j->fn = st.fn;
    j->xks = st.xks;
    return;
  }
  ready_ = true;
  lastInitAttempt_ = Clock::now();
}

void ModuleLink::shutdown() {
  // Shared for the reason given in open: releaseModule finalizes only when the last
  // engine lets go; our own threads are gone.
  std::shared_lock<std::shared_timed_mutex> lk(ctxMu_);
  if (mod_ == nullptr) return;
  {
    SerialGuard serial;
    serial.acquire(serialMu_, Clock::time_point::max());
    sessions_.closeAllIdle();
    keys_.clear();
    ivPool_.wipe();
  }
  releaseModule(mod_);
  mod_ = nullptr;
  t_.f = nullptr;
  serialMu_ = nullptr;
  ready_ = false;
}

Status ModuleLink::findSlot() {
  std::vector<CK_SLOT_ID> slots;
  for (int attempt = 0; attempt < 4; ++attempt) {
    CK_ULONG n = 0;
    CK_RV rv = t_.f->C_GetSlotList(CK_TRUE, nullptr, &n);
    if (rv != CKR_OK) return Status{rv, "C_GetSlotList"};
    if (n == 0) return Status{CKR_TOKEN_NOT_PRESENT, "C_GetSlotList"};
    slots.resize(n);
    rv = t_.f->C_GetSlotList(CK_TRUE, slots.data(), &n);
    if (rv == CKR_BUFFER_TOO_SMALL) continue;
    if (rv != CKR_OK) return Status{rv, "C_GetSlotList"};
    if (n == 0) return Status{CKR_TOKEN_NOT_PRESENT, "C_GetSlotList"};
    t_.slot = slots[0];
    return Status{};
  }
  return Status{CKR_BUFFER_TOO_SMALL, "C_GetSlotList"};
}

void ModuleLink::reinitLocked() {
  ivPool_.wipe();  // nothing from before the re-initialization is used after it
  sessions_.closeAllIdle();
  keys_.clear();
  // C_Finalize ends the sessions of every engine on this module, and handle numbers are
  // reused afterwards: the other engines must not keep (and later misuse) theirs. No job of
  // any engine runs now (exclusive lock), so their sessions are all idle.
  registry::forgetOthersOn(owner_, mod_);
  reinitializations_.fetch_add(1, std::memory_order_relaxed);
  lastInitAttempt_ = Clock::now();
  const char* fn = nullptr;
  CK_RV rv = reinitializeModule(mod_, fn);
  serialMu_ = rv == CKR_OK ? moduleSerialMutex(mod_) : nullptr;
  Status st{rv, fn};
  if (st.ok()) st = findSlot();
  if (st.ok()) {
    uint32_t idx;
    if (sessions_.pool().reserve(idx)) {
      st = sessions_.openInto(idx);
      if (st.ok()) sessions_.pool().pushIdle(idx);
    }
  }
  ready_ = st.ok();
  if (ready_) {
    backoff_ = std::chrono::milliseconds(0);
    nextRetryNs_.store(0, std::memory_order_release);
  } else {
    sessions_.closeAllIdle();
    lastInitRv_ = st.rv != CKR_OK ? st.rv : CKR_GENERAL_ERROR;
    lastInitFn_ = st.fn != nullptr ? st.fn : "C_Initialize";
    backoff_ = backoff_.count() == 0 ? kBackoffMin : std::min(backoff_ * 2, kBackoffMax);
    nextRetryNs_.store(nanos(Clock::now() + backoff_), std::memory_order_release);
  }
}

void ModuleLink::waitForReinit() {
  // glibc rwlocks prefer readers: without this gate a steady stream of jobs could keep
  // a re-initialization waiting forever.
  while (exclusivePending_.load(std::memory_order_acquire) != 0) {
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

bool ModuleLink::lockExclusive(std::unique_lock<std::shared_timed_mutex>& lk) {
  exclusivePending_.fetch_add(1, std::memory_order_acq_rel);
  bool ok;
  if (cfg_.opTimeoutMs == 0) {
    ctxMu_.lock();
    ok = true;
  } else {
    // A call stuck in the HSM holds its shared lock: give up after one deadline.
    ok = ctxMu_.try_lock_for(std::chrono::milliseconds(cfg_.opTimeoutMs));
  }
  exclusivePending_.fetch_sub(1, std::memory_order_acq_rel);
  if (ok) lk = std::unique_lock<std::shared_timed_mutex>(ctxMu_, std::adopt_lock);
  return ok;
}

void ModuleLink::afterFailure(CK_RV rv) {
  // A session-level code (handle invalid, session closed) concerns that session only: it
  // was closed; the next job opens a fresh one (and a failing C_OpenSession comes back here
  // with a device-level code).
  if (!deviceFatal(rv)) return;
  std::unique_lock<std::shared_timed_mutex> lk;
  if (!lockExclusive(lk)) return;
  if (mod_ == nullptr || !ready_) return;
  // Exclusive: no job runs, so every open (not quarantined) session is idle. Probe them
  // and close the ones that fail too.
  sessions_.probeIdle();
  // Only when no session is left (every one was bad) is the whole module reset.
  if (sessions_.pool().openCount() != 0) return;
  reinitLocked();
}

void ModuleLink::recover() {
  const int64_t next = nextRetryNs_.load(std::memory_order_acquire);
  if (next != 0 && nanos(Clock::now()) < next) return;  // backing off: fail fast
  std::unique_lock<std::shared_timed_mutex> lk;
  if (!lockExclusive(lk)) return;
  if (mod_ == nullptr || ready_) return;
  const int64_t again = nextRetryNs_.load(std::memory_order_acquire);
  if (again != 0 && nanos(Clock::now()) < again) return;
  reinitLocked();
}

}  // namespace xks
