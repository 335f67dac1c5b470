// The PKCS#11 engine core: worker threads, session pool, key-handle cache and the
// operations. Knows nothing about N-API; addon.cc wraps it for JavaScript.
//
// Threads:
//   JS thread     - submits jobs, takes completed jobs (takeCompleted) and settles them.
//   open thread   - one per open(): loads/initializes the module, first session, login.
//   workers       - `threads` of them; pop jobs from the queue and run them.
// Every job runs under a shared lock of ctxMu_; module (re)initialization and shutdown
// take it exclusively, so C_Finalize never races a PKCS#11 call of this engine.
#pragma once

#include <p11-kit/pkcs11.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "job_queue.h"
#include "module.h"
#include "secure_buffer.h"
#include "session_pool.h"

namespace xks {

enum class IvMode : uint8_t { Random, HsmAppended, HsmZeroBuffer };

enum class Op : uint8_t { Open, Close, Encrypt, Decrypt, KeyInfo, TokenInfo, Random, CreateKey };

constexpr size_t kGcmIvBytes = 12;
constexpr size_t kGcmTagBytes = 16;

struct EngineConfig {
  std::string modulePath;
  uint32_t poolMaxSize = 1;
  uint32_t poolTimeoutMs = 0;
  bool eagerClose = false;
  uint32_t threads = 1;
  IvMode ivMode = IvMode::Random;
};

struct KeyInfoResult {
  std::string keyType;
  unsigned long bits = 0;
  bool encrypt = false, decrypt = false, sign = false, verify = false, wrap = false, unwrap = false;
};

struct TokenInfoResult {
  std::string label, manufacturerId, model, serialNumber;
  unsigned hwMajor = 0, hwMinor = 0, fwMajor = 0, fwMinor = 0;
};

// One request. Owned by the JS thread except between submit and completion, when
// exactly one engine thread owns it. Recycled through the addon's free list; the
// buffers keep their capacity and are wiped after every use.
struct Job {
  Job* next = nullptr;  // queue / completion stack / free list link
  Op op = Op::Open;
  void* deferred = nullptr;  // napi_deferred; JS thread only
  std::chrono::steady_clock::time_point submitted{};

  // inputs (copied at submit time)
  std::string label;
  SecureBuffer input;  // plaintext | ciphertext || tag | key value
  SecureBuffer aad;
  SecureBuffer iv;
  size_t randomLength = 0;
  bool hasValue = false, keyEncrypt = false, keyDecrypt = false, keyWrap = false, keyUnwrap = false;

  // results
  SecureBuffer output;  // ciphertext||tag||iv | plaintext | random bytes
  CK_RV rv = CKR_OK;
  const char* fn = nullptr;   // PKCS#11 function that failed
  const char* xks = nullptr;  // XKS_* code, when not a PKCS#11 failure
  std::string detail;         // extra non-secret text (dlerror)
  KeyInfoResult keyInfo;
  TokenInfoResult tokenInfo;

  bool failed() const { return rv != CKR_OK || xks != nullptr; }
  void clearResult() {
    rv = CKR_OK;
    fn = nullptr;
    xks = nullptr;
    detail.clear();
  }
  void wipeAll() {
    input.wipe();
    aad.wipe();
    iv.wipe();
    output.wipe();
  }
};

struct EngineStats {
  uint32_t sessionsOpen, sessionsIdle;
  uint64_t reinitializations;
};

class Core {
 public:
  using Notify = void (*)(void* ctx);

  Core(EngineConfig cfg, const uint8_t* pin, size_t pinLen);
  ~Core();
  Core(const Core&) = delete;
  Core& operator=(const Core&) = delete;

  // ---- JS thread ----
  void setNotify(Notify fn, void* ctx) {
    notify_ = fn;
    notifyCtx_ = ctx;
  }
  void startOpen(Job* j);  // runs doOpen on a new thread, then completes j
  void joinOpenThread();
  void startWorkers();
  void submit(Job* j) { queue_.push(j); }
  // Stops the workers after their running job; returns the queued jobs (FIFO list).
  // When the last worker has exited and the module is released, closeJob completes.
  Job* beginClose(Job* closeJob);
  void joinWorkers();
  Job* takeCompleted() { return done_.takeAll(); }
  // Environment teardown or process exit: stop everything without notifying; returns
  // the jobs that will never be settled (queued + completed) for the caller to free.
  // Idempotent; the JS thread (or the exiting thread) only.
  Job* abort();
  void wipePin() { pin_.release(); }
  EngineStats stats() const;

 private:
  struct Status {
    CK_RV rv = CKR_OK;
    const char* fn = nullptr;
    const char* xks = nullptr;
    bool ok() const { return rv == CKR_OK && xks == nullptr; }
  };

  void workerMain();
  void complete(Job* j);
  void execute(Job* j);
  void doOpen(Job* j);
  void runSessionJob(Job* j);
  void runTokenInfo(Job* j);
  void shutdown();

  // all below: caller holds ctxMu_ (shared for jobs, exclusive for (re)init/shutdown)
  Status findSlot();
  Status openInto(uint32_t idx);
  void releaseSession(uint32_t idx, bool close);
  void closeAllIdle();
  Status acquireSession(const Job* j, uint32_t& idx);
  Status findKey(CK_SESSION_HANDLE s, const std::string& label, CK_OBJECT_HANDLE& key, bool& cached,
                 bool& dirty);
  template <class F>
  Status withKey(Job* j, CK_SESSION_HANDLE s, bool& dirty, F&& op);
  Status encrypt(Job* j, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k, bool& dirty);
  Status decrypt(Job* j, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k, bool& dirty);
  Status keyInfo(Job* j, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k, bool& dirty);
  Status random(Job* j, CK_SESSION_HANDLE s, bool& dirty);
  Status createKey(Job* j, CK_SESSION_HANDLE s, bool& dirty);
  void dropKey(const std::string& label);
  void clearKeys();

  // exclusive lock held
  void reinitLocked();
  void maybeReinitialize();  // after CKR_DEVICE_ERROR
  void recover();            // module not usable: retry re-initialization (rate limited)
  void waitForReinit();      // before taking the shared lock

  const EngineConfig cfg_;
  SecureBuffer pin_;

  std::shared_mutex ctxMu_;
  Module* mod_ = nullptr;
  CK_FUNCTION_LIST_PTR f_ = nullptr;
  CK_SLOT_ID slot_ = 0;
  bool ready_ = false;
  CK_RV lastInitRv_ = CKR_CRYPTOKI_NOT_INITIALIZED;
  const char* lastInitFn_ = "C_Initialize";
  std::chrono::steady_clock::time_point lastInitAttempt_{};

  SessionPool pool_;

  std::shared_mutex keyMu_;
  std::unordered_map<std::string, CK_OBJECT_HANDLE> keys_;

  JobQueue<Job> queue_;
  CompletionStack<Job> done_;
  Notify notify_ = nullptr;
  void* notifyCtx_ = nullptr;
  std::atomic<bool> notifyEnabled_{true};

  std::thread openThread_;
  std::vector<std::thread> workers_;
  std::atomic<uint32_t> liveWorkers_{0};
  Job* closeJob_ = nullptr;
  bool aborted_ = false;
  std::atomic<bool> aborting_{false};  // waiting jobs give up at once
  std::atomic<uint32_t> exclusivePending_{0};

  alignas(64) std::atomic<uint64_t> reinitializations_{0};
  std::atomic<uint32_t> decryptSlack_{0};  // extra output room the module asked for on decrypt
};

}  // namespace xks
