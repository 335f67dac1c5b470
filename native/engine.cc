#include "engine.h"

#include "names.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace xks {

namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kPoolExhausted = "XKS_POOL_EXHAUSTED";
constexpr const char* kKeyNotFound = "XKS_KEY_NOT_FOUND";
constexpr const char* kKeyAmbiguous = "XKS_KEY_AMBIGUOUS";
constexpr const char* kBadOutput = "XKS_BAD_OUTPUT";

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

void stopAllAtExit() {
  std::vector<Core*> cores;
  {
    std::lock_guard<std::mutex> lk(g_liveMu);
    cores = liveCores();
  }
  for (Core* c : cores) c->abort();  // the jobs are deliberately leaked: the process is exiting
}

std::string trimmed(const unsigned char* p, size_t n) {
  while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\0')) --n;
  return std::string(reinterpret_cast<const char*>(p), n);
}

}  // namespace

Core::Core(EngineConfig cfg, const uint8_t* pin, size_t pinLen)
    : cfg_(std::move(cfg)), pool_(cfg_.poolMaxSize) {
  pin_.assign(pin, pinLen);
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
  return EngineStats{pool_.openCount(), pool_.idleCount(),
                     reinitializations_.load(std::memory_order_relaxed)};
}

// ---------------------------------------------------------------- threads

void Core::complete(Job* j) {
  if (done_.push(j) && notifyEnabled_.load(std::memory_order_acquire) && notify_ != nullptr) {
    notify_(notifyCtx_);
  }
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
}

void Core::joinOpenThread() {
  if (openThread_.joinable()) openThread_.join();
}

void Core::startWorkers() {
  queue_.restart();
  liveWorkers_.store(cfg_.threads, std::memory_order_release);
  workers_.reserve(cfg_.threads);
  for (uint32_t i = 0; i < cfg_.threads; ++i) workers_.emplace_back([this] { workerMain(); });
}

void Core::workerMain() {
  while (Job* j = queue_.pop()) {
    try {
      execute(j);
    } catch (...) {
      j->clearResult();
      j->rv = CKR_HOST_MEMORY;
    }
    j->input.wipe();  // plaintext / key value: not needed any more
    complete(j);
  }
  if (liveWorkers_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    shutdown();
    // closeJob_ was set before the queue was stopped (ordered by the queue mutex).
    if (closeJob_ != nullptr) complete(closeJob_);
  }
}

Job* Core::beginClose(Job* closeJob) {
  closeJob_ = closeJob;
  return queue_.stopAndDrain();
}

void Core::joinWorkers() {
  for (auto& t : workers_) {
    if (t.joinable()) t.join();
  }
  workers_.clear();
  closeJob_ = nullptr;  // completed by the last worker before it exited
}

Job* Core::abort() {
  if (aborted_) return nullptr;
  aborted_ = true;
  aborting_.store(true, std::memory_order_release);
  notifyEnabled_.store(false, std::memory_order_release);
  joinOpenThread();
  Job* drained = queue_.stopAndDrain();
  bool hadWorkers = !workers_.empty();
  joinWorkers();
  if (!hadWorkers) shutdown();  // otherwise the last worker did it
  // Everything that will never be settled. A pending close job is on the completion
  // stack: the last worker pushed it before exiting.
  Job* completed = done_.takeAll();
  closeJob_ = nullptr;
  if (drained == nullptr) return completed;
  Job* tail = drained;
  while (tail->next != nullptr) tail = tail->next;
  tail->next = completed;
  return drained;
}

// ---------------------------------------------------------------- module

void Core::doOpen(Job* j) {
  std::unique_lock<std::shared_mutex> lk(ctxMu_);
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
  Status st = findSlot();
  if (st.ok()) {
    uint32_t idx;
    if (pool_.reserve(idx)) {
      st = openInto(idx);
      if (st.ok()) pool_.pushIdle(idx);
    } else {
      st.xks = kPoolExhausted;
    }
  }
  if (!st.ok()) {
    closeAllIdle();
    releaseModule(m);
    mod_ = nullptr;
    f_ = nullptr;
    j->rv = st.rv;
    j->fn = st.fn;
    j->xks = st.xks;
    return;
  }
  ready_ = true;
  lastInitAttempt_ = Clock::now();
}

void Core::shutdown() {
  std::unique_lock<std::shared_mutex> lk(ctxMu_);
  if (mod_ == nullptr) return;
  closeAllIdle();
  clearKeys();
  releaseModule(mod_);
  mod_ = nullptr;
  f_ = nullptr;
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

void Core::reinitLocked() {
  closeAllIdle();
  clearKeys();
  reinitializations_.fetch_add(1, std::memory_order_relaxed);
  lastInitAttempt_ = Clock::now();
  const char* fn = nullptr;
  CK_RV rv = reinitializeModule(mod_, fn);
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
  if (!ready_) {
    lastInitRv_ = st.rv != CKR_OK ? st.rv : CKR_GENERAL_ERROR;
    lastInitFn_ = st.fn != nullptr ? st.fn : "C_Initialize";
  }
}

void Core::waitForReinit() {
  // glibc rwlocks prefer readers: without this gate a steady stream of jobs could keep
  // a re-initialization waiting forever.
  while (exclusivePending_.load(std::memory_order_acquire) != 0) {
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

void Core::maybeReinitialize() {
  exclusivePending_.fetch_add(1, std::memory_order_acq_rel);
  std::unique_lock<std::shared_mutex> lk(ctxMu_);
  exclusivePending_.fetch_sub(1, std::memory_order_acq_rel);
  if (mod_ == nullptr || !ready_) return;
  // Exclusive: no job runs, so every open session is idle. Only when none is left
  // (the failing one was closed) is the whole module reset.
  if (pool_.openCount() != 0) return;
  reinitLocked();
}

void Core::recover() {
  exclusivePending_.fetch_add(1, std::memory_order_acq_rel);
  std::unique_lock<std::shared_mutex> lk(ctxMu_);
  exclusivePending_.fetch_sub(1, std::memory_order_acq_rel);
  if (mod_ == nullptr || ready_) return;
  if (Clock::now() - lastInitAttempt_ < std::chrono::seconds(1)) return;
  reinitLocked();
}

// ---------------------------------------------------------------- sessions

Core::Status Core::openInto(uint32_t idx) {
  CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
  CK_RV rv = f_->C_OpenSession(slot_, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &h);
  if (rv != CKR_OK) {
    pool_.unreserve(idx);
    return Status{rv, "C_OpenSession"};
  }
  rv = f_->C_Login(h, CKU_USER, pin_.empty() ? g_empty : pin_.data(), pin_.size());
  if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
    f_->C_CloseSession(h);
    pool_.unreserve(idx);
    return Status{rv, "C_Login"};
  }
  pool_.setHandle(idx, h);
  return Status{};
}

void Core::releaseSession(uint32_t idx, bool close) {
  if (close) {
    f_->C_CloseSession(pool_.handle(idx));
    pool_.unreserve(idx);
    // Closing the application's last session logs the user out, and a module may then
    // invalidate (and later reuse) the handles of private objects: forget them all.
    if (pool_.openCount() == 0) clearKeys();
  } else {
    pool_.pushIdle(idx);
  }
}

void Core::closeAllIdle() {
  uint32_t idx;
  while (pool_.popIdle(idx)) {
    if (f_ != nullptr) f_->C_CloseSession(pool_.handle(idx));
    pool_.unreserve(idx);
  }
}

Core::Status Core::acquireSession(const Job* j, uint32_t& idx) {
  const auto deadline = j->submitted + std::chrono::milliseconds(cfg_.poolTimeoutMs);
  for (unsigned attempt = 0;; ++attempt) {
    if (pool_.popIdle(idx)) return Status{};
    if (pool_.reserve(idx)) return openInto(idx);
    const auto now = Clock::now();
    if (now >= deadline) return Status{CKR_OK, nullptr, kPoolExhausted};
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

void Core::dropKey(const std::string& label) {
  std::unique_lock<std::shared_mutex> lk(keyMu_);
  keys_.erase(label);
}

void Core::clearKeys() {
  std::unique_lock<std::shared_mutex> lk(keyMu_);
  keys_.clear();
}

Core::Status Core::findKey(CK_SESSION_HANDLE s, const std::string& label, CK_OBJECT_HANDLE& key,
                           bool& cached, bool& dirty) {
  {
    std::shared_lock<std::shared_mutex> lk(keyMu_);
    auto it = keys_.find(label);
    if (it != keys_.end()) {
      key = it->second;
      cached = true;
      return Status{};
    }
  }
  cached = false;
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_BBOOL token = CK_TRUE;
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &cls, sizeof cls},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
      {CKA_TOKEN, &token, sizeof token},
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
  std::unique_lock<std::shared_mutex> lk(keyMu_);
  keys_[label] = key;
  return Status{};
}

template <class F>
Core::Status Core::withKey(Job* j, CK_SESSION_HANDLE s, bool& dirty, F&& op) {
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  bool cached = false;
  Status st = findKey(s, j->label, key, cached, dirty);
  if (!st.ok()) return st;
  st = op(key);
  if (cached && (st.rv == CKR_KEY_HANDLE_INVALID || st.rv == CKR_OBJECT_HANDLE_INVALID)) {
    // The object went away or was re-created: look it up again, retry once.
    dropKey(j->label);
    st = findKey(s, j->label, key, cached, dirty);
    if (!st.ok()) return st;
    st = op(key);
  }
  return st;
}

// ---------------------------------------------------------------- jobs

void Core::execute(Job* j) {
  j->clearResult();
  switch (j->op) {
    case Op::TokenInfo:
      runTokenInfo(j);
      return;
    case Op::Encrypt:
    case Op::Decrypt:
    case Op::KeyInfo:
    case Op::Random:
    case Op::CreateKey:
      runSessionJob(j);
      return;
    case Op::Open:
    case Op::Close:
      break;
  }
  j->rv = CKR_FUNCTION_NOT_SUPPORTED;
}

void Core::runTokenInfo(Job* j) {
  bool deviceError = false;
  waitForReinit();
  {
    std::shared_lock<std::shared_mutex> lk(ctxMu_);
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
    CK_TOKEN_INFO ti;
    std::memset(&ti, 0, sizeof ti);
    CK_RV rv = f_->C_GetTokenInfo(slot_, &ti);
    if (rv != CKR_OK) {
      j->rv = rv;
      j->fn = "C_GetTokenInfo";
      deviceError = rv == CKR_DEVICE_ERROR;
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
  if (deviceError) maybeReinitialize();
}

void Core::runSessionJob(Job* j) {
  if (cfg_.poolTimeoutMs > 0 &&
      Clock::now() - j->submitted > std::chrono::milliseconds(cfg_.poolTimeoutMs)) {
    j->xks = kPoolExhausted;  // waited in the queue past the pool timeout
    return;
  }
  bool deviceError = false;
  waitForReinit();
  {
    std::shared_lock<std::shared_mutex> lk(ctxMu_);
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
    uint32_t idx = SessionPool::kNil;
    Status st = acquireSession(j, idx);
    if (st.ok()) {
      const CK_SESSION_HANDLE s = pool_.handle(idx);
      bool dirty = false;  // any PKCS#11 error on this session: never reuse it
      switch (j->op) {
        case Op::Encrypt:
          st = withKey(j, s, dirty, [&](CK_OBJECT_HANDLE k) { return encrypt(j, s, k, dirty); });
          break;
        case Op::Decrypt:
          st = withKey(j, s, dirty, [&](CK_OBJECT_HANDLE k) { return decrypt(j, s, k, dirty); });
          break;
        case Op::KeyInfo:
          st = withKey(j, s, dirty, [&](CK_OBJECT_HANDLE k) { return keyInfo(j, s, k, dirty); });
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
      releaseSession(idx, dirty || st.rv != CKR_OK || cfg_.eagerClose);
    }
    j->rv = st.rv;
    j->fn = st.ok() ? nullptr : st.fn;
    j->xks = st.xks;
    deviceError = st.rv == CKR_DEVICE_ERROR;
  }
  if (deviceError) maybeReinitialize();
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
    dirty = true;
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
    dirty = true;
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
    dirty = true;
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
    dirty = true;
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
