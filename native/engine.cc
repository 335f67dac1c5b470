#include "engine.h"

#include <sys/resource.h>

#include "ops.h"
#include "registry.h"
#include "status.h"

namespace xks {

Core::Core(EngineConfig cfg, const uint8_t* pin, size_t pinLen)
    : cfg_(std::move(cfg)),
      keys_(token_, cfg_.keyCopies, cfg_.keyCheckMs),
      sessions_(cfg_, token_, keys_, aborting_, pin, pinLen),
      link_(cfg_, this, token_, sessions_, keys_, ivs_, ivPool_),
      workers_(cfg_, sessions_.pool(), *this, aborting_) {}

Core::~Core() {
  registry::remove(this);
  Job* rest = abort();
  while (rest != nullptr) {
    Job* n = rest->next;
    delete rest;
    rest = n;
  }
  sessions_.wipePin();
}

EngineStats Core::stats() const {
  const SessionPool& pool = sessions_.pool();
  const uint32_t q = pool.quarantinedCount();
  return EngineStats{pool.openCount() + q,
                     pool.idleCount(),
                     q,
                     workers_.stuck(),
                     link_.reinitializations(),
                     workers_.timeouts(),
                     sessions_.errors(),
                     link_.ready(),
                     keys_.copies(),
                     keys_.sessionOpen(),
                     cfg_.ivMode == IvMode::Random && ivPool_.enabled(),
                     sessions_.sessionLimit(),
                     sessions_.sessionCountRefused()};
}

void Core::startOpen(Job* j) {
  registry::add(this);
  openThread_ = std::thread([this, j] {
    try {
      link_.open(j);
      if (!j->failed()) noteIvBuffer(j->as<OpenResult>());
    } catch (...) {
      j->rv = CKR_HOST_MEMORY;
      j->fn = nullptr;
    }
    workers_.complete(j);
  });
  nameThread(openThread_, "xks-hsm-open");
}

void Core::noteIvBuffer(OpenResult& r) const {
  const IvBuffer::Failure& f = ivPool_.failure();
  if (cfg_.ivMode != IvMode::Random || f.step == nullptr) return;
  r.ivBufferStep = f.step;
  r.ivBufferErrno = f.error;
  r.ivBufferBytes = f.bytes;
  struct rlimit rl;
  if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
    r.memlockKnown = true;
    r.memlockLimit = rl.rlim_cur;
  }
}

void Core::joinOpenThread() {
  if (openThread_.joinable()) openThread_.join();
}

Job* Core::abort() {
  if (aborted_) return nullptr;
  aborted_ = true;
  aborting_.store(true, std::memory_order_release);
  workers_.disableNotify();
  joinOpenThread();
  bool hadWorkers;
  Job* drained = workers_.stop(hadWorkers);
  workers_.join();  // the watchdog leaves when the threads are gone (or only stuck ones remain)
  if (!hadWorkers) shutdown();
  // Everything that will never be settled. A pending close job is on the completion
  // stack: the watchdog pushed it before exiting.
  Job* completed = workers_.takeCompleted();
  workers_.forgetCloseJob();
  if (drained == nullptr) return completed;
  Job* tail = drained;
  while (tail->next != nullptr) tail = tail->next;
  tail->next = completed;
  return drained;
}

// ---------------------------------------------------------------- jobs

void Core::run(Job* j, Worker* w) {
  j->clearResult();
  if (Clock::now() >= j->deadline) {
    j->xks = kTimeout;  // waited in the queue past the operation deadline
    return;
  }
  switch (j->op) {
    case Op::TokenInfo:
      runTokenInfo(j);
      return;
    case Op::Encrypt:
    case Op::Decrypt:
    case Op::KeyInfo:
    case Op::Random:
    case Op::CreateKey:
    case Op::Hmac:
      runSessionJob(j, w);
      return;
    case Op::Open:
    case Op::Close:
      break;
  }
  j->rv = CKR_FUNCTION_NOT_SUPPORTED;
}

void Core::runTokenInfo(Job* j) {
  CK_RV failed = CKR_OK;
  {
    ModuleLink::ContextLock lk = link_.deferredLock();
    SerialGuard serial;
    if (!link_.enter(j, lk, serial)) return;
    Status st = tokenInfo(token_.f, token_.slot, j->as<TokenInfoResult>());
    if (!st.ok()) {
      j->rv = st.rv;
      j->fn = st.fn;
      failed = st.rv;
    }
  }
  if (deviceFatal(failed)) link_.afterFailure(failed);
}

void Core::runSessionJob(Job* j, Worker* w) {
  if (cfg_.poolTimeoutMs > 0 && Clock::now() - j->submitted > std::chrono::milliseconds(cfg_.poolTimeoutMs)) {
    j->xks = kPoolExhausted;  // waited in the queue past the pool timeout
    return;
  }
  CK_RV failed = CKR_OK;
  {
    ModuleLink::ContextLock lk = link_.deferredLock();
    SerialGuard serial;
    if (!link_.enter(j, lk, serial)) return;
    KeyAttrs cached;
    if (j->op == Op::KeyInfo && keys_.cachedAttrs(j->label, cached)) {
      // Key metadata the HSM told us less than keyCheckMs ago: no session, no PKCS#11 call.
      const Status st = keyInfo(cached, j->as<KeyInfoResult>());
      j->rv = st.rv;
      j->fn = st.ok() ? nullptr : st.fn;
      return;
    }
    uint32_t idx = SessionPool::kNil;
    Status st = sessions_.acquire(j, w, idx);
    if (st.ok()) {
      Sessions::Lease lease(sessions_, w, idx);
      bool dirty = false;  // a PKCS#11 error that leaves the session suspect: never reuse it
      const CK_SESSION_HANDLE s = sessions_.handle(idx);
      st = call(j, s, dirty);
      const bool bad = dirty || (st.rv != CKR_OK && !keepsSession(st.rv, st.fn));
      if (sessionFatal(st.rv)) sessions_.countError();
      if (!bad && st.ok() && j->op == Op::Encrypt && cfg_.ivMode == IvMode::Random && ivPool_.claimRefill()) {
        if (ivPool_.primed()) {
          setResult(j, st);
          refillIvs(j, w, s, lease);  // j is the JS thread's from here on
          return;
        }
        // The first batch since a start or a re-initialization: this Encrypt made its own IV
        // (the buffer was empty) and fills the buffer before it is answered, so the requests
        // after it find IVs; every later refill runs after its Encrypt was answered.
        lease.keep(ivPool_.refill(token_.f, s) != CKR_OK || cfg_.eagerClose);
      } else {
        lease.keep(bad || cfg_.eagerClose);
      }
    }
    setResult(j, st);
    failed = st.rv;
  }
  if (sessionFatal(failed)) link_.afterFailure(failed);
}

Status Core::call(Job* j, CK_SESSION_HANDLE s, bool& dirty) {
  const CK_FUNCTION_LIST_PTR f = token_.f;
  switch (j->op) {
    case Op::Encrypt: {
      CryptArgs& a = j->as<CryptArgs>();
      return keys_.withKey(j->label, s, KeyCache::Use::Crypt, dirty, [&](CK_OBJECT_HANDLE k) {
        j->verifying.store(false, std::memory_order_relaxed);
        Status st = encrypt(f, s, k, cfg_.ivMode, ivs_, j->label, a, j->output, dirty, &ivPool_);
        if (!st.ok() || !a.verify) return st;
        // CDIV: the same session, key and thread decrypt the new ciphertext before it is released.
        j->verifying.store(true, std::memory_order_release);
        return verifyEncrypt(f, s, k, decryptSlack_, a, j->output, dirty);
      });
    }
    case Op::Decrypt:
      return keys_.withKey(j->label, s, KeyCache::Use::Crypt, dirty, [&](CK_OBJECT_HANDLE k) {
        return decrypt(f, s, k, decryptSlack_, j->as<CryptArgs>(), j->output, dirty);
      });
    case Op::KeyInfo: {
      KeyAttrs attrs;
      Status st = keys_.attrsOf(j->label, s, dirty, attrs);
      return st.ok() ? keyInfo(attrs, j->as<KeyInfoResult>()) : st;
    }
    case Op::Random:
      return random(f, s, j->as<RandomArgs>().length, j->output, dirty);
    case Op::Hmac:
      return keys_.withKey(j->label, s, KeyCache::Use::Token, dirty,
                           [&](CK_OBJECT_HANDLE k) { return hmac(f, s, k, j->as<HmacArgs>(), dirty); });
    case Op::CreateKey: {
      Status st = createKey(f, s, j->label, j->as<CreateKeyArgs>(), dirty);
      keys_.drop(j->label);  // a cached unique handle may no longer be unique
      return st;
    }
    default:
      return Status{CKR_FUNCTION_NOT_SUPPORTED, nullptr};
  }
}

void Core::setResult(Job* j, const Status& st) {
  j->rv = st.rv;
  j->fn = st.ok() ? nullptr : st.fn;
  j->xks = st.xks;
}

void Core::refillIvs(Job* j, Worker* w, CK_SESSION_HANDLE s, Sessions::Lease& lease) {
  // One extra round trip for one Encrypt in kBatch, started kLowWater IVs ahead of need, after
  // that Encrypt's result went to the JS thread: no request waits for it. The thread keeps the
  // session for it and the watchdog keeps watching (the operation deadline, from now). A
  // failure costs only the batch: the session is given up as suspect, and later Encrypts
  // generate their own IVs until a refill succeeds.
  const Clock::time_point until =
      cfg_.opTimeoutMs != 0 ? Clock::now() + std::chrono::milliseconds(cfg_.opTimeoutMs) : Clock::time_point::max();
  if (!workers_.deliver(w, j, until)) {
    ivPool_.abandonRefill();  // the Encrypt overran its deadline: the HSM is slow, leave it
    lease.keep(cfg_.eagerClose);
    return;
  }
  const bool failed = ivPool_.refill(token_.f, s) != CKR_OK;
  lease.keep(failed || cfg_.eagerClose);
}

}  // namespace xks
