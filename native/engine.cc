#include "engine.h"

#include "names.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include <pthread.h>

namespace xks {

namespace {

constexpr const char* kTimeout = "XKS_TIMEOUT";
constexpr const char* kPoolExhausted = "XKS_POOL_EXHAUSTED";
constexpr const char* kKeyNotFound = "XKS_KEY_NOT_FOUND";
constexpr const char* kKeyAmbiguous = "XKS_KEY_AMBIGUOUS";
constexpr const char* kBadOutput = "XKS_BAD_OUTPUT";
constexpr const char* kKeySpec = "XKS_KEY_SPEC";        // not an AES-256 key: never used for XKS crypto
constexpr const char* kIvZero = "XKS_IV_ZERO";          // the HSM handed back an all-zero IV
constexpr const char* kIvRepeated = "XKS_IV_REPEATED";  // ... the label's previous IV again
constexpr CK_RV kAeadDecryptFailed = 0x42UL;            // CKR_AEAD_DECRYPT_FAILED (PKCS#11 3.0)

// The name `top -H`, perf and /proc/PID/task/TID/comm show for an engine thread (Linux: at
// most 15 characters; elsewhere a no-op). Set by the creating thread, so the name is there
// before anything the creator does next (open() resolving, for one).
void nameThread(std::thread& t, const char* name) {
#ifdef __linux__
  pthread_setname_np(t.native_handle(), name);
#else
  (void)t;
  (void)name;
#endif
}

// Non-null pointer for zero-length inputs (a NULL data pointer means something else
// to several PKCS#11 functions).
CK_BYTE g_empty[1] = {0};

// Engines with threads, for the process-exit hook. process.exit() calls exit() without
// tearing the Node environment down, so no cleanup hook runs; the module's static
// destructors would then race our workers. An atexit handler registered after the
// module was loaded runs before those destructors and stops every engine first.
std::mutex g_liveMu;
std::vector<Core*>& liveCores() {
  static auto* v = new std::vector<Core*>();  // never destroyed
  return *v;
}
std::once_flag g_exitHookOnce;

// The context lock of every engine in the process (see Core::ctxMu_).
std::shared_timed_mutex& processCtxMu() {
  static auto* m = new std::shared_timed_mutex();  // never destroyed
  return *m;
}
std::atomic<uint32_t>& processExclusivePending() {
  static auto* a = new std::atomic<uint32_t>(0);
  return *a;
}

void stopAllAtExit() {
  std::vector<Core*> cores;
  {
    std::lock_guard<std::mutex> lk(g_liveMu);
    cores = liveCores();
  }
  for (Core* c : cores) c->abort();  // the jobs are deliberately leaked: the process is exiting
}

// Codes after which a session (or every session) cannot be trusted.
bool sessionFatal(CK_RV rv) {
  return rv == CKR_DEVICE_ERROR || rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT ||
         rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED || rv == CKR_CRYPTOKI_NOT_INITIALIZED;
}

// Codes that concern the device rather than one session: the idle sessions are probed.
bool deviceFatal(CK_RV rv) {
  return rv == CKR_DEVICE_ERROR || rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT ||
         rv == CKR_CRYPTOKI_NOT_INITIALIZED;
}

// Failures that concern the request's data or the key's permissions, never the session: the
// session goes back to the pool, as the Rust proxy keeps it (handlers/mod.rs,
// before_bubbling_failure). No operation is left active: an *Init failure starts none, and a
// C_Encrypt / C_Decrypt call that fails other than with CKR_BUFFER_TOO_SMALL ends the
// operation (as PKCS#11 defines those calls; test/fault-data.test.ts checks that SoftHSM2's
// sessions decrypt on after 200 tag mismatches). A CKR_GENERAL_ERROR counts only from
// C_Decrypt, where SoftHSM2 reports a tag mismatch with it.
bool keepsSession(CK_RV rv, const char* fn) {
  switch (rv) {
    case CKR_KEY_FUNCTION_NOT_PERMITTED:
    case CKR_ENCRYPTED_DATA_INVALID:
    case CKR_ENCRYPTED_DATA_LEN_RANGE:
    case CKR_DATA_INVALID:
    case CKR_DATA_LEN_RANGE:
    case kAeadDecryptFailed:
      return true;
    case CKR_GENERAL_ERROR:
      return fn != nullptr && std::strcmp(fn, "C_Decrypt") == 0;
    default:
      return false;
  }
}

// Start-up failures that mean "the HSM is down or unreachable now", not "this configuration
// cannot work": open() then succeeds with the engine not ready, and calls retry the
// initialization (README, "Recovery"). Wrong PINs, bad arguments, missing functions stop start-up.
bool transientAtStart(CK_RV rv) {
  switch (rv) {
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_REMOVED:
    case CKR_DEVICE_MEMORY:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_TOKEN_NOT_RECOGNIZED:
    case CKR_GENERAL_ERROR:
    case CKR_FUNCTION_FAILED:
    case CKR_SESSION_COUNT:
    case CKR_CRYPTOKI_NOT_INITIALIZED:
      return true;
    default:
      return false;
  }
}

int64_t nanos(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

constexpr std::chrono::milliseconds kBackoffMin{25};
constexpr std::chrono::milliseconds kBackoffMax{1000};

std::string trimmed(const unsigned char* p, size_t n) {
  while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\0')) --n;
  return std::string(reinterpret_cast<const char*>(p), n);
}

}  // namespace

class Core::Lease {
 public:
  Lease(Core& core, Worker* w, uint32_t idx) : core_(core), w_(w), idx_(idx) {}
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  // Closed unless told otherwise: a job that threw may have left an operation active.
  ~Lease() { core_.endSession(w_, idx_, close_); }
  void keep(bool closeIt) { close_ = closeIt; }

 private:
  Core& core_;
  Worker* w_;
  uint32_t idx_;
  bool close_ = true;
};

class Core::SerialGuard {
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

Core::Core(EngineConfig cfg, const uint8_t* pin, size_t pinLen)
    : cfg_(std::move(cfg)),
      ctxMu_(processCtxMu()),
      pool_(cfg_.poolMaxSize, cfg_.opTimeoutMs != 0 ? cfg_.poolMaxSize : 0),
      exclusivePending_(processExclusivePending()) {
  pin_.assign(pin, pinLen);
  maxStuck_ = cfg_.opTimeoutMs != 0 ? std::max<uint32_t>(cfg_.threads, 2) : 0;
}

Core::~Core() {
  {
    std::lock_guard<std::mutex> lk(g_liveMu);
    auto& v = liveCores();
    v.erase(std::remove(v.begin(), v.end(), this), v.end());
  }
  Job* rest = abort();
  while (rest != nullptr) {
    Job* n = rest->next;
    delete rest;
    rest = n;
  }
  pin_.release();
}

EngineStats Core::stats() const {
  const uint32_t q = pool_.quarantinedCount();
  return EngineStats{pool_.openCount() + q,
                     pool_.idleCount(),
                     q,
                     stuckCount_.load(std::memory_order_relaxed),
                     reinitializations_.load(std::memory_order_relaxed),
                     timeouts_.load(std::memory_order_relaxed),
                     sessionErrors_.load(std::memory_order_relaxed),
                     nextRetryNs_.load(std::memory_order_relaxed) == 0,
                     keyCopies(),
                     keySessionOpen_.load(std::memory_order_relaxed)};
}

uint32_t Core::keyCopies() const {
  std::shared_lock<std::shared_mutex> lk(keyMu_);
  uint32_t n = 0;
  for (const auto& kv : keys_) n += kv.second.copied() ? 1 : 0;
  return n;
}

// ---------------------------------------------------------------- threads

void Core::complete(Job* j) {
  if (!done_.push(j)) return;
  // Announced before the check, so that disableNotify() waits for a call already past it.
  notifying_.fetch_add(1, std::memory_order_seq_cst);
  if (notifyEnabled_.load(std::memory_order_seq_cst) && notify_ != nullptr) notify_(notifyCtx_);
  notifying_.fetch_sub(1, std::memory_order_release);
}

void Core::disableNotify() {
  notifyEnabled_.store(false, std::memory_order_seq_cst);
  while (notifying_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
}

void Core::startOpen(Job* j) {
  {
    std::lock_guard<std::mutex> lk(g_liveMu);
    auto& v = liveCores();
    if (std::find(v.begin(), v.end(), this) == v.end()) v.push_back(this);
  }
  openThread_ = std::thread([this, j] {
    try {
      doOpen(j);
    } catch (...) {
      j->rv = CKR_HOST_MEMORY;
      j->fn = nullptr;
    }
    complete(j);
  });
  nameThread(openThread_, "xks-hsm-open");
}

void Core::joinOpenThread() {
  if (openThread_.joinable()) openThread_.join();
}

void Core::startWorkers() {
  queue_.restart();
  std::lock_guard<std::mutex> lk(workersMu_);
  workersStarted_ = true;
  watchdogStop_ = false;
  for (uint32_t i = 0; i < cfg_.threads; ++i) spawnWorker();
  activeWorkers_ = cfg_.threads;
  watchdog_ = std::thread([this] { watchdogMain(); });
  nameThread(watchdog_, "xks-hsm-watch");
}

void Core::spawnWorker() {
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
  w->expired = w->stuck = w->sessionQuarantined = false;
  threadsAlive_.fetch_add(1, std::memory_order_acq_rel);
  std::thread t([this, w] { workerMain(w); });
  nameThread(t, "xks-hsm");
  t.detach();
}

void Core::workerMain(Worker* w) {
  for (;;) {
    Job* j = queue_.pop();
    if (j == nullptr) break;
    {
      std::lock_guard<std::mutex> lk(w->mu);
      w->job = j;
    }
    try {
      execute(j, w);
    } catch (...) {
      j->clearResult();
      j->rv = CKR_HOST_MEMORY;
    }
    if (!finishJob(w, j)) {
      // A stuck thread came back while enough others serve: leave.
      {
        std::lock_guard<std::mutex> lk(workersMu_);
        w->exited = true;
        workersCv_.notify_all();
      }
      // Last touch of this Core: once threadsAlive() reads 0 its owner may delete it (the
      // mutex and condition variable included), so the count drops after the unlock.
      threadsAlive_.fetch_sub(1, std::memory_order_acq_rel);
      return;
    }
  }
  {
    std::lock_guard<std::mutex> lk(workersMu_);
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

bool Core::finishJob(Worker* w, Job* j) {
  bool expired, stuck;
  {
    std::lock_guard<std::mutex> lk(w->mu);
    expired = w->expired;
    stuck = w->stuck;
    w->job = nullptr;
    w->expired = false;
  }
  if (!expired) {
    j->input.wipe();  // plaintext / key value: not needed any more
    if (j->xks == kTimeout) timeouts_.fetch_add(1, std::memory_order_relaxed);
    complete(j);
  } else {
    // The watchdog settled this job already; dispose of it with the JS thread.
    j->input.wipe();
    j->output.wipe();
    if (j->handoff.fetch_or(Job::kWorkerDone, std::memory_order_acq_rel) & Job::kJsSeen) complete(j);
  }
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

void Core::expireRunning(Clock::time_point now) {
  std::vector<Job*> expired;
  {
    std::lock_guard<std::mutex> lk(workersMu_);
    uint32_t newlyStuck = 0;
    for (auto& slot : workers_) {
      Worker* w = slot.get();
      std::lock_guard<std::mutex> wl(w->mu);
      if (w->exited || w->job == nullptr || w->expired || w->job->deadline > now) continue;
      Job* j = w->job;
      w->expired = true;
      j->timedOut = true;
      expired.push_back(j);
      if (w->session != SessionPool::kNil && !w->sessionQuarantined && pool_.quarantine()) {
        w->sessionQuarantined = true;
      }
      if (!w->stuck) {
        w->stuck = true;
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

void Core::watchdogMain() {
  using namespace std::chrono;
  const milliseconds tick =
      cfg_.opTimeoutMs == 0 ? milliseconds(50) : std::clamp(milliseconds(cfg_.opTimeoutMs / 20), milliseconds(1), milliseconds(5));
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
        // hold up shutdown and process exit for as long as it stays blocked.
        const bool onlyBusy = onlyStuck || cfg_.opTimeoutMs == 0;
        if (allGone || (onlyBusy && (aborting_.load() || Clock::now() - closeBegan_ > grace))) {
          lk.unlock();
          if (allGone) shutdown();
          // else: a PKCS#11 call is still running; the module stays loaded (the process is
          // most likely exiting) and the Core is leaked by its owner.
          Job* cj = closeJob_.exchange(nullptr);
          if (cj != nullptr) complete(cj);
          return;
        }
      }
    }
    if (cfg_.opTimeoutMs == 0) continue;
    const auto now = Clock::now();
    for (Job* j = queue_.popExpired(now); j != nullptr;) {
      Job* next = j->next;
      j->next = nullptr;
      j->clearResult();
      j->xks = kTimeout;
      j->input.wipe();
      timeouts_.fetch_add(1, std::memory_order_relaxed);
      complete(j);
      j = next;
    }
    expireRunning(now);
  }
}

Job* Core::beginClose(Job* closeJob) {
  closeJob_.store(closeJob);
  Job* drained = queue_.stopAndDrain();
  std::lock_guard<std::mutex> lk(workersMu_);
  closeBegan_ = Clock::now();
  watchdogStop_ = true;
  if (!workersStarted_) {
    // never opened: nothing to wait for
    Job* cj = closeJob_.exchange(nullptr);
    if (cj != nullptr) complete(cj);
  }
  workersCv_.notify_all();
  return drained;
}

void Core::joinWorkers() {
  if (watchdog_.joinable()) watchdog_.join();
}

Job* Core::abort() {
  if (aborted_) return nullptr;
  aborted_ = true;
  aborting_.store(true, std::memory_order_release);
  disableNotify();
  joinOpenThread();
  Job* drained = queue_.stopAndDrain();
  bool hadWorkers;
  {
    std::lock_guard<std::mutex> lk(workersMu_);
    hadWorkers = workersStarted_;
    if (!watchdogStop_) closeBegan_ = Clock::now();
    watchdogStop_ = true;
    workersCv_.notify_all();
  }
  joinWorkers();  // the watchdog leaves when the threads are gone (or only stuck ones remain)
  if (!hadWorkers) shutdown();
  // Everything that will never be settled. A pending close job is on the completion
  // stack: the watchdog pushed it before exiting.
  Job* completed = done_.takeAll();
  closeJob_.store(nullptr);
  if (drained == nullptr) return completed;
  Job* tail = drained;
  while (tail->next != nullptr) tail = tail->next;
  tail->next = completed;
  return drained;
}

// ---------------------------------------------------------------- module

void Core::doOpen(Job* j) {
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
  std::call_once(g_exitHookOnce, [] { std::atexit(stopAllAtExit); });
  mod_ = m;
  f_ = moduleFunctions(m);
  OpenResult& r = j->openResult;
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
    if (pool_.reserve(idx)) {
      st = openInto(idx);
      if (!st.ok()) idx = SessionPool::kNil;  // openInto gave the slot back
    } else {
      st.xks = kPoolExhausted;
    }
  }
  if (st.ok() && cfg_.ivMode != IvMode::Random) {
    st = selfTestIv(pool_.handle(idx), r);
    if (!st.ok()) {
      // A test encrypt that failed for a PKCS#11 reason leaves the session suspect.
      releaseSession(idx, true);
      idx = SessionPool::kNil;
      if (st.xks == nullptr) {
        // Not a verdict on the IV mode (the HSM refused the temporary key's use): per-request
        // checks only.
        r.ivCheck = "skipped";
        r.ivCheckRv = st.rv;
        r.ivCheckFn = st.fn;
        st = Status{};
        if (pool_.reserve(idx)) {
          st = openInto(idx);
          if (!st.ok()) idx = SessionPool::kNil;
        }
      }
    }
  }
  if (idx != SessionPool::kNil) pool_.pushIdle(idx);
  if (!st.ok() && st.xks == nullptr && transientAtStart(st.rv)) {
    // The HSM is down or unreachable: serve anyway (calls fail fast and retry the
    // initialization with backoff, as after a failure at run time).
    closeAllIdle();
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
    closeAllIdle();
    clearKeys();
    releaseModule(m);
    mod_ = nullptr;
    f_ = nullptr;
    serialMu_ = nullptr;
    j->rv = st.rv;
    j->fn = st.fn;
    j->xks = st.xks;
    return;
  }
  ready_ = true;
  lastInitAttempt_ = Clock::now();
}

Core::Status Core::selfTestIv(CK_SESSION_HANDLE s, OpenResult& r) {
  // A session object, never on the token: destroyed below, gone with the session anyway.
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE type = CKK_AES;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_ULONG len = 32;
  CK_ATTRIBUTE t[] = {
      {CKA_CLASS, &cls, sizeof cls}, {CKA_KEY_TYPE, &type, sizeof type}, {CKA_TOKEN, &no, 1},
      {CKA_SENSITIVE, &yes, 1},      {CKA_EXTRACTABLE, &no, 1},          {CKA_ENCRYPT, &yes, 1},
      {CKA_DECRYPT, &no, 1},         {CKA_VALUE_LEN, &len, sizeof len},
  };
  CK_MECHANISM mech{CKM_AES_KEY_GEN, nullptr, 0};
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  CK_RV rv = f_->C_GenerateKey(s, &mech, t, sizeof t / sizeof t[0], &key);
  if (rv != CKR_OK) return Status{rv, "C_GenerateKey"};
  Job probe;  // label "" is never a request's (labels are 1..1024 bytes)
  probe.input.resize(32);
  std::memset(probe.input.data(), 0, 32);
  Status st;
  for (int i = 0; i < 2 && st.ok(); ++i) {
    bool dirty = false;
    st = encrypt(&probe, s, key, dirty);
  }
  f_->C_DestroyObject(s, key);
  {
    std::lock_guard<std::mutex> lk(ivMu_);
    lastIv_.erase(std::string());
  }
  probe.wipeAll();
  if (st.ok()) r.ivCheck = "passed";
  return st;
}

void Core::shutdown() {
  // Shared for the reason given in doOpen: releaseModule finalizes only when the last
  // engine lets go; our own threads are gone.
  std::shared_lock<std::shared_timed_mutex> lk(ctxMu_);
  if (mod_ == nullptr) return;
  {
    SerialGuard serial;
    serial.acquire(serialMu_, Clock::time_point::max());
    closeAllIdle();
    clearKeys();
  }
  releaseModule(mod_);
  mod_ = nullptr;
  f_ = nullptr;
  serialMu_ = nullptr;
  ready_ = false;
}

Core::Status Core::findSlot() {
  std::vector<CK_SLOT_ID> slots;
  for (int attempt = 0; attempt < 4; ++attempt) {
    CK_ULONG n = 0;
    CK_RV rv = f_->C_GetSlotList(CK_TRUE, nullptr, &n);
    if (rv != CKR_OK) return Status{rv, "C_GetSlotList"};
    if (n == 0) return Status{CKR_TOKEN_NOT_PRESENT, "C_GetSlotList"};
    slots.resize(n);
    rv = f_->C_GetSlotList(CK_TRUE, slots.data(), &n);
    if (rv == CKR_BUFFER_TOO_SMALL) continue;
    if (rv != CKR_OK) return Status{rv, "C_GetSlotList"};
    if (n == 0) return Status{CKR_TOKEN_NOT_PRESENT, "C_GetSlotList"};
    slot_ = slots[0];
    return Status{};
  }
  return Status{CKR_BUFFER_TOO_SMALL, "C_GetSlotList"};
}

void Core::forgetForReinit() {
  closeAllIdle();
  clearKeys();
}

void Core::reinitLocked() {
  closeAllIdle();
  clearKeys();
  // C_Finalize ends the sessions of every engine on this module, and handle numbers are
  // reused afterwards: the other engines must not keep (and later misuse) theirs. No job of
  // any engine runs now (exclusive lock), so their sessions are all idle.
  {
    std::lock_guard<std::mutex> lk(g_liveMu);
    for (Core* c : liveCores()) {
      if (c != this && c->mod_ == mod_) c->forgetForReinit();
    }
  }
  reinitializations_.fetch_add(1, std::memory_order_relaxed);
  lastInitAttempt_ = Clock::now();
  const char* fn = nullptr;
  CK_RV rv = reinitializeModule(mod_, fn);
  serialMu_ = rv == CKR_OK ? moduleSerialMutex(mod_) : nullptr;
  Status st{rv, fn};
  if (st.ok()) st = findSlot();
  if (st.ok()) {
    uint32_t idx;
    if (pool_.reserve(idx)) {
      st = openInto(idx);
      if (st.ok()) pool_.pushIdle(idx);
    }
  }
  ready_ = st.ok();
  if (ready_) {
    backoff_ = std::chrono::milliseconds(0);
    nextRetryNs_.store(0, std::memory_order_release);
  } else {
    closeAllIdle();
    lastInitRv_ = st.rv != CKR_OK ? st.rv : CKR_GENERAL_ERROR;
    lastInitFn_ = st.fn != nullptr ? st.fn : "C_Initialize";
    backoff_ = backoff_.count() == 0 ? kBackoffMin : std::min(backoff_ * 2, kBackoffMax);
    nextRetryNs_.store(nanos(Clock::now() + backoff_), std::memory_order_release);
  }
}

void Core::waitForReinit() {
  // glibc rwlocks prefer readers: without this gate a steady stream of jobs could keep
  // a re-initialization waiting forever.
  while (exclusivePending_.load(std::memory_order_acquire) != 0) {
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

bool Core::lockExclusive(std::unique_lock<std::shared_timed_mutex>& lk) {
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

void Core::afterFailure(CK_RV rv) {
  // A session-level code (handle invalid, session closed) concerns that session only: it
  // was closed; the next job opens a fresh one (and a failing C_OpenSession comes back here
  // with a device-level code).
  if (!deviceFatal(rv)) return;
  std::unique_lock<std::shared_timed_mutex> lk;
  if (!lockExclusive(lk)) return;
  if (mod_ == nullptr || !ready_) return;
  // Exclusive: no job runs, so every open (not quarantined) session is idle. Probe them
  // and close the ones that fail too.
  {
    std::vector<uint32_t> keep;
    uint32_t idx;
    while (pool_.popIdle(idx)) {
      CK_SESSION_INFO info;
      CK_RV r = f_->C_GetSessionInfo(pool_.handle(idx), &info);
      if (r == CKR_OK) {
        keep.push_back(idx);
      } else {
        f_->C_CloseSession(pool_.handle(idx));
        pool_.unreserve(idx);
        sessionErrors_.fetch_add(1, std::memory_order_relaxed);
      }
    }
    for (uint32_t k : keep) pool_.pushIdle(k);
  }
  // Only when no session is left (every one was bad) is the whole module reset.
  if (pool_.openCount() != 0) return;
  reinitLocked();
}

void Core::recover() {
  const int64_t next = nextRetryNs_.load(std::memory_order_acquire);
  if (next != 0 && nanos(Clock::now()) < next) return;  // backing off: fail fast
  std::unique_lock<std::shared_timed_mutex> lk;
  if (!lockExclusive(lk)) return;
  if (mod_ == nullptr || ready_) return;
  const int64_t again = nextRetryNs_.load(std::memory_order_acquire);
  if (again != 0 && nanos(Clock::now()) < again) return;
  reinitLocked();
}

// ---------------------------------------------------------------- sessions

Core::Status Core::openInto(uint32_t idx, bool releaseOnFailure) {
  CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
  CK_RV rv = f_->C_OpenSession(slot_, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &h);
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
  forgetKeysUnlessHeld();
  rv = f_->C_Login(h, CKU_USER, pin_.empty() ? g_empty : pin_.data(), pin_.size());
  if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
    f_->C_CloseSession(h);
    if (releaseOnFailure) pool_.unreserve(idx);
    return Status{rv, "C_Login"};
  }
  pool_.setHandle(idx, h);
  return Status{};
}

void Core::releaseSession(uint32_t idx, bool close) {
  if (close) {
    if (f_ == nullptr) {
      pool_.unreserve(idx);
      return;
    }
    f_->C_CloseSession(pool_.handle(idx));
    pool_.unreserve(idx);
    // Closing the application's last session logs the user out, and a module may then
    // invalidate (and later reuse) the handles of private objects: forget them all (unless
    // the key session keeps the login).
    if (pool_.openCount() == 0) forgetKeysUnlessHeld();
  } else {
    pool_.pushIdle(idx);
  }
}

// Gives back the session a job used: idle again, or closed (after an error, with eager
// close, or when the job overran its deadline); `opened` false: no session was opened
// into the reserved slot.
void Core::endSession(Worker* w, uint32_t idx, bool close, bool opened) {
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
    releaseSession(idx, close);
    return;
  }
  if (f_ != nullptr) f_->C_CloseSession(pool_.handle(idx));
  pool_.unquarantine(idx);
  if (pool_.openCount() == 0) forgetKeysUnlessHeld();
}

void Core::closeAllIdle() {
  uint32_t idx;
  while (pool_.popIdle(idx)) {
    if (f_ != nullptr) f_->C_CloseSession(pool_.handle(idx));
    pool_.unreserve(idx);
  }
}

Core::Status Core::acquireSession(const Job* j, Worker* w, uint32_t& idx) {
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
    if (pool_.reserve(idx)) {
      own(idx);
      Status st = openInto(idx, false);
      if (!st.ok()) endSession(w, idx, true, false);
      return st;
    }
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

// ---------------------------------------------------------------- key cache
//
// A label resolves to exactly one token secret key (none or several: not found). Its handle
// is cached until a call reports it invalid, or until the user may have been logged out.
//
// With keyCopies, encrypt and decrypt use a session-object copy of that key, made inside the
// HSM by C_CopyObject into keySession_ (the copy keeps every attribute of the token key but
// CKA_TOKEN, so it is as sensitive and unextractable as the original; no key material leaves
// the HSM). Some modules check a token object against their store on every use (SoftHSM2
// opens and reads the object's file twice per encrypt); a session object skips that. A
// module that refuses the copy (CKA_COPYABLE false, no C_CopyObject) is used through the
// token key as before. Because a copy outlives the deletion or change of its token key, the
// token key is looked up again at most keyCheckMs after the last check, by the next call
// that uses it: the copy is kept only when the label still names that same object with the
// same CKA_ENCRYPT / CKA_DECRYPT; otherwise it is destroyed and the label resolved afresh.

void Core::closeKeySession() {
  // Bumped first: a copy made in the closing session is never cached afterwards.
  keySessionGen_.fetch_add(1, std::memory_order_acq_rel);
  if (keySession_ != CK_INVALID_HANDLE && f_ != nullptr) f_->C_CloseSession(keySession_);
  keySession_ = CK_INVALID_HANDLE;
  keySessionCopies_ = 0;
  keySessionOpen_.store(false, std::memory_order_release);
}

void Core::destroyCopy(CK_OBJECT_HANDLE copy, uint64_t generation) {
  std::lock_guard<std::mutex> lk(keySessionMu_);
  // From an earlier key session: closing that session destroyed it already.
  if (generation != keySessionGen_.load(std::memory_order_acquire) || keySession_ == CK_INVALID_HANDLE) return;
  f_->C_DestroyObject(keySession_, copy);
  if (keySessionCopies_ > 0) --keySessionCopies_;
}

void Core::dropKey(const std::string& label, CK_OBJECT_HANDLE handle) {
  CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
  uint64_t generation = 0;
  {
    std::unique_lock<std::shared_mutex> lk(keyMu_);
    auto it = keys_.find(label);
    if (it == keys_.end()) return;
    // Only the entry the caller saw: another thread may have replaced it with a good one.
    if (handle != CK_INVALID_HANDLE && it->second.crypt != handle && it->second.token != handle) return;
    if (it->second.copied()) {
      copy = it->second.crypt;
      generation = it->second.generation;
    }
    keys_.erase(it);
  }
  // A call in flight on another thread may still use it; it then fails with a handle error
  // and retries through a fresh lookup.
  if (copy != CK_INVALID_HANDLE) destroyCopy(copy, generation);
}

void Core::clearKeys() {
  {
    std::lock_guard<std::mutex> lk(keySessionMu_);
    closeKeySession();
  }
  std::unique_lock<std::shared_mutex> lk(keyMu_);
  keys_.clear();
}

void Core::forgetKeysUnlessHeld() {
  // Decided under keySessionMu_: a key session another thread opens meanwhile (with copies in
  // use) is never closed by this; one that is open keeps the login, so the handles stand.
  std::lock_guard<std::mutex> held(keySessionMu_);
  if (keySession_ != CK_INVALID_HANDLE) return;
  std::unique_lock<std::shared_mutex> lk(keyMu_);
  keys_.clear();
}

Core::Status Core::lookupLabel(CK_SESSION_HANDLE s, const std::string& label, CK_OBJECT_HANDLE& key,
                               bool& dirty) {
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_BBOOL token = CK_TRUE;
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &cls, sizeof cls},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
      {CKA_TOKEN, &token, sizeof token},  // never our own session copies
  };
  CK_RV rv = f_->C_FindObjectsInit(s, tmpl, 3);
  if (rv != CKR_OK) {
    dirty = true;
    return Status{rv, "C_FindObjectsInit"};
  }
  CK_OBJECT_HANDLE found[2];
  CK_ULONG count = 0;
  while (count < 2) {
    CK_ULONG n = 0;
    rv = f_->C_FindObjects(s, found + count, 2 - count, &n);
    if (rv != CKR_OK || n == 0) break;
    count += n;
  }
  CK_RV rvFinal = f_->C_FindObjectsFinal(s);
  if (rv != CKR_OK) {
    dirty = true;
    return Status{rv, "C_FindObjects"};
  }
  if (rvFinal != CKR_OK) {
    dirty = true;
    return Status{rvFinal, "C_FindObjectsFinal"};
  }
  if (count == 0) return Status{CKR_OK, "C_FindObjects", kKeyNotFound};
  if (count > 1) return Status{CKR_OK, "C_FindObjects", kKeyAmbiguous};
  key = found[0];
  return Status{};
}

Core::Status Core::readKeyAttrs(CK_SESSION_HANDLE s, KeyEntry& e, bool& dirty) {
  CK_KEY_TYPE type = CKK_VENDOR_DEFINED;
  CK_ULONG len = 0;
  CK_ATTRIBUTE a[] = {
      {CKA_KEY_TYPE, &type, sizeof type},
      {CKA_VALUE_LEN, &len, sizeof len},
      {CKA_ENCRYPT, &e.encrypt, 1},
      {CKA_DECRYPT, &e.decrypt, 1},
  };
  CK_RV rv = f_->C_GetAttributeValue(s, e.token, a, 4);
  // Missing or sensitive attributes are reported per attribute; the rest are filled.
  if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE) {
    dirty = true;
    return Status{rv, "C_GetAttributeValue"};
  }
  auto present = [&](int i) { return a[i].ulValueLen != CK_UNAVAILABLE_INFORMATION; };
  if (!present(2)) e.encrypt = CK_FALSE;
  if (!present(3)) e.decrypt = CK_FALSE;
  e.aes256 = present(0) && present(1) && type == CKK_AES && len == 32;
  return Status{};
}

Core::Status Core::readUsage(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE token, CK_BBOOL& enc, CK_BBOOL& dec,
                             bool& dirty) {
  CK_ATTRIBUTE flags[] = {{CKA_ENCRYPT, &enc, 1}, {CKA_DECRYPT, &dec, 1}};
  CK_RV rv = f_->C_GetAttributeValue(s, token, flags, 2);
  if (rv != CKR_OK) {
    dirty = true;
    return Status{rv, "C_GetAttributeValue"};
  }
  return Status{};
}

Core::Status Core::copyKey(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE token, KeyEntry& e, bool& /*dirty*/) {
  // e.encrypt / e.decrypt were read with the lookup (readKeyAttrs).
  CK_RV rv;
  CK_BBOOL no = CK_FALSE;
  CK_ATTRIBUTE tmpl[] = {{CKA_TOKEN, &no, 1}};
  std::lock_guard<std::mutex> lk(keySessionMu_);
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (keySession_ == CK_INVALID_HANDLE) {
      // The user is logged in (the caller holds a logged-in pool session), and a login
      // belongs to the application, so this session needs no C_Login of its own.
      rv = f_->C_OpenSession(slot_, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &keySession_);
      if (rv != CKR_OK) {
        // E.g. CKR_SESSION_COUNT: the token key serves; the copy is tried again at the next check.
        keySession_ = CK_INVALID_HANDLE;
        e.retryCopy = true;
        return Status{};
      }
      keySessionOpen_.store(true, std::memory_order_release);
    }
    CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
    rv = f_->C_CopyObject(keySession_, token, tmpl, 1, &copy);
    if (rv == CKR_OK) {
      e.crypt = copy;
      e.generation = keySessionGen_.load(std::memory_order_acquire);
      ++keySessionCopies_;
      return Status{};
    }
    if (rv != CKR_SESSION_HANDLE_INVALID && rv != CKR_SESSION_CLOSED) break;
    closeKeySession();  // that session is gone: one more try in a new one
  }
  // Refused (not copyable, not supported): the token key serves, and a key session holding
  // nothing is not kept open for it.
  if (keySessionCopies_ == 0) closeKeySession();
  return Status{};
}

Core::Status Core::keyUnchanged(CK_SESSION_HANDLE s, const std::string& label, CK_OBJECT_HANDLE token,
                                CK_BBOOL enc, CK_BBOOL dec, bool& same, bool& dirty) {
  same = false;
  CK_OBJECT_HANDLE now = CK_INVALID_HANDLE;
  Status st = lookupLabel(s, label, now, dirty);
  if (!st.ok()) return dirty ? st : Status{};
  if (now != token) return Status{};
  CK_BBOOL e = CK_FALSE, d = CK_FALSE;
  st = readUsage(s, token, e, d, dirty);
  if (!st.ok()) return st;
  same = e == enc && d == dec;
  return Status{};
}

Core::Status Core::findKey(CK_SESSION_HANDLE s, const std::string& label, KeyUse use, KeyRef& key,
                           bool& dirty) {
  key = KeyRef{};
  bool check = false, retry = false;
  CK_OBJECT_HANDLE token = CK_INVALID_HANDLE, deadToken = CK_INVALID_HANDLE;
  CK_BBOOL enc = CK_FALSE, dec = CK_FALSE;
  {
    std::shared_lock<std::shared_mutex> lk(keyMu_);
    auto it = keys_.find(label);
    // A copy from a key session that has closed since is gone (and its handle number may be
    // given to another object): never used, resolved afresh below.
    const bool dead = it != keys_.end() && it->second.copied() &&
                      it->second.generation != keySessionGen_.load(std::memory_order_acquire);
    if (dead) deadToken = it->second.token;
    if (it != keys_.end() && !dead) {
      KeyEntry& e = it->second;
      key = refTo(e, use);
      if (use == KeyUse::Crypt && (e.copied() || e.retryCopy)) {
        const int64_t now = nanos(Clock::now());
        int64_t last = e.checkedNs.load(std::memory_order_relaxed);
        // One caller per period does the check; the others go on with the copy meanwhile.
        if (now - last >= int64_t{cfg_.keyCheckMs} * 1000000 &&
            e.checkedNs.compare_exchange_strong(last, now, std::memory_order_relaxed)) {
          check = true;
          retry = e.retryCopy;
          token = e.token;
          enc = e.encrypt;
          dec = e.decrypt;
        }
      }
      if (!check) return Status{};
    }
  }
  if (deadToken != CK_INVALID_HANDLE) dropKey(label, deadToken);
  if (check) {
    if (!retry) {
      bool same = false;
      Status st = keyUnchanged(s, label, token, enc, dec, same, dirty);
      if (!st.ok()) return st;
      if (same) return Status{};
    }
    // Deleted, replaced or changed (the copy is destroyed), or no copy yet: resolve afresh.
    dropKey(label, token);
  }
  KeyEntry fresh;
  Status st = lookupLabel(s, label, fresh.token, dirty);
  if (!st.ok()) return st;
  fresh.crypt = fresh.token;
  st = readKeyAttrs(s, fresh, dirty);
  if (!st.ok()) return st;
  if (cfg_.keyCopies) {
    st = copyKey(s, fresh.token, fresh, dirty);
    if (!st.ok()) return st;
  }
  bool stale = false;  // the copy's session closed meanwhile: use the token key, cache nothing
  {
    std::unique_lock<std::shared_mutex> lk(keyMu_);
    if (fresh.copied() && fresh.generation != keySessionGen_.load(std::memory_order_acquire)) {
      stale = true;
    } else {
      auto [it, inserted] = keys_.try_emplace(label);
      KeyEntry& e = it->second;
      if (inserted) {
        e.token = fresh.token;
        e.crypt = fresh.crypt;
        e.generation = fresh.generation;
        e.encrypt = fresh.encrypt;
        e.decrypt = fresh.decrypt;
        e.aes256 = fresh.aes256;
        e.retryCopy = fresh.retryCopy;
        e.checkedNs.store(nanos(Clock::now()), std::memory_order_relaxed);
        key = refTo(e, use);
        return Status{};
      }
      // Another thread resolved it first: use its entry, discard our copy.
      key = refTo(e, use);
    }
  }
  if (stale) key = KeyRef{fresh.token, false, 0, fresh.aes256};
  if (fresh.copied()) destroyCopy(fresh.crypt, fresh.generation);
  return Status{};
}

bool Core::copyGone(const std::string& label, const KeyRef& used) {
  if (!used.copy) return false;
  if (used.generation != keySessionGen_.load(std::memory_order_acquire)) return true;
  std::shared_lock<std::shared_mutex> lk(keyMu_);
  auto it = keys_.find(label);
  return it == keys_.end() || it->second.crypt != used.handle;
}

template <class F>
Core::Status Core::withKey(Job* j, CK_SESSION_HANDLE s, KeyUse use, bool& dirty, F&& op) {
  KeyRef key;
  Status st = findKey(s, j->label, use, key, dirty);
  if (!st.ok()) return st;
  // XKS Encrypt / Decrypt are AES-256-GCM: any other key (AES-128, a generic secret) is refused
  // before the HSM sees a call.
  if (use == KeyUse::Crypt && !key.aes256) return Status{CKR_OK, nullptr, kKeySpec};
  st = op(key.handle);
  if (st.rv == CKR_KEY_HANDLE_INVALID || st.rv == CKR_OBJECT_HANDLE_INVALID) {
    // The object (or its copy) went away or was re-created: look it up again, retry once.
    dropKey(j->label, key.handle);
  } else if (st.rv == CKR_OK || !copyGone(j->label, key)) {
    return st;
  }
  // Also when the copy used was destroyed meanwhile by another thread (a check found the
  // key changed, or the key session closed): a module may then fail the call with any code
  // (SoftHSM2: CKR_KEY_TYPE_INCONSISTENT), which says nothing about the key itself.
  st = findKey(s, j->label, use, key, dirty);
  if (!st.ok()) return st;
  if (use == KeyUse::Crypt && !key.aes256) return Status{CKR_OK, nullptr, kKeySpec};
  return op(key.handle);
}

// ---------------------------------------------------------------- jobs

void Core::execute(Job* j, Worker* w) {
  j->clearResult();
  if (Clock::now() >= j->deadline) {
    j->xks = kTimeout;  // waited in the queue past the operation deadline
    return;
  }
  switch (j->op) {
    case Op::TokenInfo:
      runTokenInfo(j, w);
      return;
    case Op::Encrypt:
    case Op::Decrypt:
    case Op::KeyInfo:
    case Op::Random:
    case Op::CreateKey:
      runSessionJob(j, w);
      return;
    case Op::Open:
    case Op::Close:
      break;
  }
  j->rv = CKR_FUNCTION_NOT_SUPPORTED;
}

void Core::runTokenInfo(Job* j, Worker* /*w*/) {
  CK_RV failed = CKR_OK;
  waitForReinit();
  {
    std::shared_lock<std::shared_timed_mutex> lk(ctxMu_);
    if (!ready_) {
      lk.unlock();
      recover();
      lk.lock();
      if (!ready_) {
        j->rv = lastInitRv_;
        j->fn = lastInitFn_;
        return;
      }
    }
    SerialGuard serial;
    if (!serial.acquire(serialMu_, j->deadline)) {
      j->xks = kTimeout;
      return;
    }
    CK_TOKEN_INFO ti;
    std::memset(&ti, 0, sizeof ti);
    CK_RV rv = f_->C_GetTokenInfo(slot_, &ti);
    if (rv != CKR_OK) {
      j->rv = rv;
      j->fn = "C_GetTokenInfo";
      failed = rv;
    } else {
      auto& r = j->tokenInfo;
      r.label = trimmed(ti.label, sizeof ti.label);
      r.manufacturerId = trimmed(ti.manufacturerID, sizeof ti.manufacturerID);
      r.model = trimmed(ti.model, sizeof ti.model);
      r.serialNumber = trimmed(ti.serialNumber, sizeof ti.serialNumber);
      r.hwMajor = ti.hardwareVersion.major;
      r.hwMinor = ti.hardwareVersion.minor;
      r.fwMajor = ti.firmwareVersion.major;
      r.fwMinor = ti.firmwareVersion.minor;
    }
  }
  if (deviceFatal(failed)) afterFailure(failed);
}

void Core::runSessionJob(Job* j, Worker* w) {
  if (cfg_.poolTimeoutMs > 0 &&
      Clock::now() - j->submitted > std::chrono::milliseconds(cfg_.poolTimeoutMs)) {
    j->xks = kPoolExhausted;  // waited in the queue past the pool timeout
    return;
  }
  CK_RV failed = CKR_OK;
  waitForReinit();
  {
    std::shared_lock<std::shared_timed_mutex> lk(ctxMu_);
    if (!ready_) {
      lk.unlock();
      recover();
      lk.lock();
      if (!ready_) {
        j->rv = lastInitRv_;
        j->fn = lastInitFn_;
        return;
      }
    }
    SerialGuard serial;
    if (!serial.acquire(serialMu_, j->deadline)) {
      j->xks = kTimeout;
      return;
    }
    uint32_t idx = SessionPool::kNil;
    Status st = acquireSession(j, w, idx);
    if (st.ok()) {
      Lease lease(*this, w, idx);
      const CK_SESSION_HANDLE s = pool_.handle(idx);
      bool dirty = false;  // a PKCS#11 error that leaves the session suspect: never reuse it
      switch (j->op) {
        case Op::Encrypt:
          st = withKey(j, s, KeyUse::Crypt, dirty, [&](CK_OBJECT_HANDLE k) { return encrypt(j, s, k, dirty); });
          break;
        case Op::Decrypt:
          st = withKey(j, s, KeyUse::Crypt, dirty, [&](CK_OBJECT_HANDLE k) { return decrypt(j, s, k, dirty); });
          break;
        case Op::KeyInfo:
          st = withKey(j, s, KeyUse::Token, dirty, [&](CK_OBJECT_HANDLE k) { return keyInfo(j, s, k, dirty); });
          break;
        case Op::Random:
          st = random(j, s, dirty);
          break;
        case Op::CreateKey:
          st = createKey(j, s, dirty);
          break;
        default:
          st = Status{CKR_FUNCTION_NOT_SUPPORTED, nullptr};
          break;
      }
      const bool bad = dirty || (st.rv != CKR_OK && !keepsSession(st.rv, st.fn));
      if (sessionFatal(st.rv)) sessionErrors_.fetch_add(1, std::memory_order_relaxed);
      lease.keep(bad || cfg_.eagerClose);
    }
    j->rv = st.rv;
    j->fn = st.ok() ? nullptr : st.fn;
    j->xks = st.xks;
    failed = st.rv;
  }
  if (sessionFatal(failed)) afterFailure(failed);
}

Core::Status Core::encrypt(Job* j, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k, bool& dirty) {
  const bool appended = cfg_.ivMode == IvMode::HsmAppended;
  j->iv.resize(kGcmIvBytes);
  CK_BYTE* iv = j->iv.data();
  if (cfg_.ivMode == IvMode::Random) {
    CK_RV rv = f_->C_GenerateRandom(s, iv, kGcmIvBytes);
    if (rv != CKR_OK) {
      dirty = true;
      return Status{rv, "C_GenerateRandom"};
    }
  } else {
    std::memset(iv, 0, kGcmIvBytes);  // zero buffer for the HSM to fill (or unused)
  }
  CK_GCM_PARAMS params;
  std::memset(&params, 0, sizeof params);
  params.pIv = appended ? nullptr : iv;
  params.ulIvLen = appended ? 0 : kGcmIvBytes;
  params.ulIvBits = appended ? 0 : kGcmIvBytes * 8;
  params.pAAD = j->aad.empty() ? nullptr : j->aad.data();
  params.ulAADLen = j->aad.size();
  params.ulTagBits = kGcmTagBytes * 8;
  CK_MECHANISM mech{CKM_AES_GCM, &params, sizeof params};
  CK_RV rv = f_->C_EncryptInit(s, &mech, k);
  if (rv != CKR_OK) {
    dirty = dirty || !keepsSession(rv, "C_EncryptInit");
    return Status{rv, "C_EncryptInit"};
  }
  const size_t pt = j->input.size();
  const size_t want = pt + kGcmTagBytes + (appended ? kGcmIvBytes : 0);
  // Room for ciphertext || tag || iv in every mode.
  j->output.resize(pt + kGcmTagBytes + kGcmIvBytes);
  CK_BYTE* in = pt != 0 ? j->input.data() : g_empty;
  CK_ULONG outLen = want;
  rv = f_->C_Encrypt(s, in, pt, j->output.data(), &outLen);
  if (rv == CKR_BUFFER_TOO_SMALL) {
    // The operation is still active; the module told us the size it needs.
    if (outLen <= want || outLen > want + 4096) {
      dirty = true;
      return Status{rv, "C_Encrypt"};
    }
    j->output.resize(outLen + (appended ? 0 : kGcmIvBytes));
    rv = f_->C_Encrypt(s, in, pt, j->output.data(), &outLen);
  }
  if (rv != CKR_OK) {
    dirty = dirty || !keepsSession(rv, "C_Encrypt");
    return Status{rv, "C_Encrypt"};
  }
  if (outLen != want) {
    dirty = true;
    return Status{CKR_OK, "C_Encrypt", kBadOutput};
  }
  if (!appended) {
    // hsm-zero-buffer: the module filled `iv`; random: we generated it.
    std::memcpy(j->output.data() + pt + kGcmTagBytes, iv, kGcmIvBytes);
  }
  j->output.resize(pt + kGcmTagBytes + kGcmIvBytes);
  if (cfg_.ivMode != IvMode::Random) {
    Status st = checkIv(j->label, j->output.data() + pt + kGcmTagBytes);
    if (!st.ok()) {
      dirty = true;  // an HSM that hands out such IVs is not trusted with this session either
      j->output.wipe();
      return st;
    }
  }
  return Status{};
}

Core::Status Core::checkIv(const std::string& label, const uint8_t* iv) {
  uint8_t any = 0;
  for (size_t i = 0; i < kGcmIvBytes; ++i) any |= iv[i];
  if (any == 0) return Status{CKR_OK, "C_Encrypt", kIvZero};
  std::array<uint8_t, kGcmIvBytes> now;
  std::memcpy(now.data(), iv, kGcmIvBytes);
  std::lock_guard<std::mutex> lk(ivMu_);
  auto [it, inserted] = lastIv_.try_emplace(label, now);
  if (inserted) return Status{};
  if (it->second == now) return Status{CKR_OK, "C_Encrypt", kIvRepeated};
  it->second = now;
  return Status{};
}

Core::Status Core::decrypt(Job* j, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k, bool& dirty) {
  CK_GCM_PARAMS params;
  std::memset(&params, 0, sizeof params);
  params.pIv = j->iv.data();
  params.ulIvLen = j->iv.size();
  params.ulIvBits = j->iv.size() * 8;
  params.pAAD = j->aad.empty() ? nullptr : j->aad.data();
  params.ulAADLen = j->aad.size();
  params.ulTagBits = kGcmTagBytes * 8;
  CK_MECHANISM mech{CKM_AES_GCM, &params, sizeof params};
  CK_RV rv = f_->C_DecryptInit(s, &mech, k);
  if (rv != CKR_OK) {
    dirty = dirty || !keepsSession(rv, "C_DecryptInit");
    return Status{rv, "C_DecryptInit"};
  }
  const size_t inLen = j->input.size();  // ciphertext || tag
  const size_t pt = inLen - kGcmTagBytes;
  // Exactly the plaintext length, plus whatever slack this module asked for before.
  size_t cap = pt + decryptSlack_.load(std::memory_order_relaxed);
  j->output.resize(cap == 0 ? 1 : cap);  // never hand the module a NULL output pointer
  CK_ULONG outLen = cap;
  rv = f_->C_Decrypt(s, j->input.data(), inLen, j->output.data(), &outLen);
  if (rv == CKR_BUFFER_TOO_SMALL) {
    if (outLen <= cap || outLen > inLen + 4096) {
      dirty = true;
      return Status{rv, "C_Decrypt"};
    }
    decryptSlack_.store(static_cast<uint32_t>(outLen - pt), std::memory_order_relaxed);
    j->output.resize(outLen);
    rv = f_->C_Decrypt(s, j->input.data(), inLen, j->output.data(), &outLen);
  }
  if (rv != CKR_OK) {
    dirty = dirty || !keepsSession(rv, "C_Decrypt");
    j->output.wipe();
    return Status{rv, "C_Decrypt"};
  }
  j->output.resize(outLen);
  return Status{};
}

Core::Status Core::keyInfo(Job* j, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k, bool& dirty) {
  CK_KEY_TYPE type = 0;
  CK_ULONG valueLen = 0;
  CK_BBOOL flags[6] = {CK_FALSE, CK_FALSE, CK_FALSE, CK_FALSE, CK_FALSE, CK_FALSE};
  CK_ATTRIBUTE attrs[] = {
      {CKA_KEY_TYPE, &type, sizeof type}, {CKA_VALUE_LEN, &valueLen, sizeof valueLen},
      {CKA_ENCRYPT, &flags[0], 1},        {CKA_DECRYPT, &flags[1], 1},
      {CKA_SIGN, &flags[2], 1},           {CKA_VERIFY, &flags[3], 1},
      {CKA_WRAP, &flags[4], 1},           {CKA_UNWRAP, &flags[5], 1},
  };
  const CK_ULONG n = sizeof attrs / sizeof attrs[0];
  CK_RV rv = f_->C_GetAttributeValue(s, k, attrs, n);
  // Missing or sensitive attributes are reported per attribute; the rest are filled.
  if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE) {
    dirty = true;
    return Status{rv, "C_GetAttributeValue"};
  }
  auto present = [&](size_t i) { return attrs[i].ulValueLen != CK_UNAVAILABLE_INFORMATION; };
  if (!present(0)) return Status{CKR_ATTRIBUTE_TYPE_INVALID, "C_GetAttributeValue"};
  auto& r = j->keyInfo;
  r.keyType = ckkName(type);
  r.bits = present(1) ? valueLen * 8 : 0;
  auto flag = [&](size_t i) { return present(i) && flags[i - 2] == CK_TRUE; };
  r.encrypt = flag(2);
  r.decrypt = flag(3);
  r.sign = flag(4);
  r.verify = flag(5);
  r.wrap = flag(6);
  r.unwrap = flag(7);
  return Status{};
}

Core::Status Core::random(Job* j, CK_SESSION_HANDLE s, bool& dirty) {
  const size_t n = j->randomLength;
  j->output.resize(n == 0 ? 1 : n);
  j->output.resize(n);
  if (n == 0) return Status{};
  CK_RV rv = f_->C_GenerateRandom(s, j->output.data(), n);
  if (rv != CKR_OK) {
    dirty = true;
    return Status{rv, "C_GenerateRandom"};
  }
  return Status{};
}

Core::Status Core::createKey(Job* j, CK_SESSION_HANDLE s, bool& dirty) {
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE type = CKK_AES;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_BBOOL enc = j->keyEncrypt ? CK_TRUE : CK_FALSE;
  CK_BBOOL dec = j->keyDecrypt ? CK_TRUE : CK_FALSE;
  CK_BBOOL wrap = j->keyWrap ? CK_TRUE : CK_FALSE;
  CK_BBOOL unwrap = j->keyUnwrap ? CK_TRUE : CK_FALSE;
  CK_ULONG valueLen = 32;
  std::vector<CK_ATTRIBUTE> t = {
      {CKA_CLASS, &cls, sizeof cls},
      {CKA_KEY_TYPE, &type, sizeof type},
      {CKA_TOKEN, &yes, 1},
      {CKA_PRIVATE, &yes, 1},
      {CKA_SENSITIVE, &yes, 1},
      {CKA_EXTRACTABLE, &no, 1},
      {CKA_LABEL, const_cast<char*>(j->label.data()), j->label.size()},
      {CKA_ENCRYPT, &enc, 1},
      {CKA_DECRYPT, &dec, 1},
      {CKA_WRAP, &wrap, 1},
      {CKA_UNWRAP, &unwrap, 1},
      {CKA_SIGN, &no, 1},
      {CKA_VERIFY, &no, 1},
  };
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  CK_RV rv;
  const char* fn;
  if (j->hasValue) {
    t.push_back({CKA_VALUE, j->input.data(), j->input.size()});
    rv = f_->C_CreateObject(s, t.data(), t.size(), &h);
    fn = "C_CreateObject";
  } else {
    t.push_back({CKA_VALUE_LEN, &valueLen, sizeof valueLen});
    CK_MECHANISM mech{CKM_AES_KEY_GEN, nullptr, 0};
    rv = f_->C_GenerateKey(s, &mech, t.data(), t.size(), &h);
    fn = "C_GenerateKey";
  }
  j->input.wipe();
  dropKey(j->label);  // a cached unique handle may no longer be unique
  if (rv != CKR_OK) {
    dirty = true;
    return Status{rv, fn};
  }
  return Status{};
}

}  // namespace xks
