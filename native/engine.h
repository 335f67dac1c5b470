// The PKCS#11 engine core: worker threads, session pool, key-handle cache and the
// operations. Knows nothing about N-API; addon.cc wraps it for JavaScript.
//
// Threads:
//   JS thread     - submits jobs, takes completed jobs (takeCompleted) and settles them.
//   open thread   - one per open(): loads/initializes the module, first session, login.
//   workers       - `threads` of them (detached); pop jobs from the queue and run them.
//   watchdog      - one; enforces the operation deadline (opTimeoutMs): expires queued
//                   jobs, settles running jobs that overran with XKS_TIMEOUT, quarantines
//                   their thread and session and starts a replacement thread; finishes close.
// Every job runs under a shared lock of ctxMu_, one lock for the whole process; module
// re-initialization takes it exclusively, so C_Finalize never races a PKCS#11 call of any
// engine (several event loops each have an engine on one module). open and close take it
// shared: their C_Initialize / C_Finalize happen only while no other engine holds the
// module (reference count 0), and waiting for the other engines' calls could take forever
// (a call stuck in the HSM). A
// re-initialization also makes the other engines on the module drop their sessions and key
// handles, which C_Finalize invalidates. With a deadline, exclusive acquisition is bounded
// (a stuck call holds its shared lock).
//
// A module that refused OS locking was initialized with NULL arguments (module.h): every call
// sequence (a job, open, shutdown) then also takes the module's serial mutex, so the module
// never sees two calls at once from this process; jobs wait for it at most until their deadline.
//
// Deadline hand-off of a running job that overran: the watchdog marks the job timedOut
// and pushes it to the completion stack while the stuck worker still owns its buffers.
// The JS thread rejects the promise and sets kJsSeen; the worker, when its call returns,
// sets kWorkerDone. Whichever comes second disposes of the job (the worker by pushing it
// again, the JS thread by recycling it).
#pragma once

#include <p11-kit/pkcs11.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
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

using Clock = std::chrono::steady_clock;

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
  // Deadline of every job, from submission (0: none). Overrunning jobs settle with XKS_TIMEOUT.
  uint32_t opTimeoutMs = 0;
  // Encrypt and decrypt with a session-object copy of each token key, made inside the HSM by
  // C_CopyObject (see "key cache" in engine.cc); the token key is looked up again every
  // keyCheckMs and the copy dropped when it is gone or changed.
  bool keyCopies = false;
  uint32_t keyCheckMs = 1000;
};

struct KeyInfoResult {
  std::string keyType;
  unsigned long bits = 0;
  bool encrypt = false, decrypt = false, sign = false, verify = false, wrap = false, unwrap = false;
};

// What open() found (besides failing): the module's state and the start-up checks.
struct OpenResult {
  bool ready = true;                    // false: the HSM is down; calls fail fast until it returns
  CK_RV downRv = CKR_OK;                // why not ready
  const char* downFn = nullptr;
  bool serialized = false;              // the module refused OS locking: one PKCS#11 call at a time
  CK_RV lockingRv = CKR_OK;             // its answer to C_Initialize with CKF_OS_LOCKING_OK
  // HSM-generated IV modes: "passed", or "skipped" (the HSM would not make the temporary key;
  // ivCheckRv, ivCheckFn say why); nullptr in the random mode and when not ready.
  const char* ivCheck = nullptr;
  CK_RV ivCheckRv = CKR_OK;
  const char* ivCheckFn = nullptr;
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
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  // Deadline hand-off (see the top of this file).
  static constexpr uint8_t kJsSeen = 1, kWorkerDone = 2;
  bool timedOut = false;  // pushed by the watchdog while its worker still runs it
  std::atomic<uint8_t> handoff{0};

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
  OpenResult openResult;

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
  uint32_t sessionsOpen, sessionsIdle, sessionsQuarantined, workersStuck;
  uint64_t reinitializations, timeouts, sessionErrors;
  bool ready;
  uint32_t keyCopies;   // cached keys that use a session copy
  bool keySessionOpen;  // the session that holds the copies
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
  void submit(Job* j) {
    if (cfg_.opTimeoutMs != 0) j->deadline = j->submitted + std::chrono::milliseconds(cfg_.opTimeoutMs);
    queue_.push(j);
  }
  // Stops the workers after their running job; returns the queued jobs (FIFO list).
  // When the last worker has exited and the module is released, closeJob completes
  // (or, with threads stuck in the HSM past a grace period, without releasing the module).
  Job* beginClose(Job* closeJob);
  void joinWorkers();
  // Once it returns, no engine thread is calling notify (the thread-safe function may go).
  void disableNotify();
  // Threads still running (stuck in a PKCS#11 call after close/abort); the Core must then
  // outlive them (the owner leaks it).
  uint32_t threadsAlive() const { return threadsAlive_.load(std::memory_order_acquire); }
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

  // One per worker thread; guarded by its mutex (the worker and the watchdog).
  struct Worker {
    std::mutex mu;
    Job* job = nullptr;                 // running job
    uint32_t session = 0xffffffffu;     // pool slot in use
    bool expired = false;               // the watchdog settled `job` (timeout)
    bool stuck = false;                 // counted in stuckThreads_
    bool sessionQuarantined = false;    // `session` moved to the pool's quarantine
    bool exited = true;                 // slot free for a new thread
  };

  // A job's pool session; gives it back (closed unless keep() said otherwise) however the
  // job ends, exceptions included. Declared after the context lock, so it ends first.
  class Lease;
  // Serializes PKCS#11 calls when the module was initialized without OS locking.
  class SerialGuard;

  void spawnWorker();  // workersMu_ held
  void workerMain(Worker* w);
  bool finishJob(Worker* w, Job* j);  // false: the thread must exit (surplus)
  void watchdogMain();
  void expireRunning(Clock::time_point now);
  void complete(Job* j);
  void execute(Job* j, Worker* w);
  void doOpen(Job* j);
  // HSM-generated IV modes: two encrypts with a temporary session key; an IV the HSM did not
  // generate fails open (the mode cannot work); a key the HSM refuses to make skips the test.
  Status selfTestIv(CK_SESSION_HANDLE s, OpenResult& r);
  // The IV of a successful encrypt in an HSM-generated IV mode: never all zero, never the
  // label's previous one in this engine.
  Status checkIv(const std::string& label, const uint8_t* iv);
  void runSessionJob(Job* j, Worker* w);
  void runTokenInfo(Job* j, Worker* w);
  void shutdown();
  bool lockExclusive(std::unique_lock<std::shared_timed_mutex>& lk);

  // all below: caller holds ctxMu_ (shared for jobs, open and shutdown, exclusive for re-init)
  Status findSlot();
  Status openInto(uint32_t idx, bool releaseOnFailure = true);
  void releaseSession(uint32_t idx, bool close);
  void closeAllIdle();
  Status acquireSession(const Job* j, Worker* w, uint32_t& idx);
  void endSession(Worker* w, uint32_t idx, bool close, bool opened = true);
  // Crypt: the handle encrypt/decrypt use (the copy, when there is one); Token: the token
  // object itself (its attributes are the truth for key metadata).
  enum class KeyUse : uint8_t { Crypt, Token };
  struct KeyEntry {
    CK_OBJECT_HANDLE token = CK_INVALID_HANDLE;
    CK_OBJECT_HANDLE crypt = CK_INVALID_HANDLE;  // == token, or a copy in keySession_
    uint64_t generation = 0;                     // keySessionGen_ the copy was made in
    CK_BBOOL encrypt = CK_FALSE, decrypt = CK_FALSE;  // the token key's, when copied
    bool aes256 = false;                         // CKK_AES with CKA_VALUE_LEN 32 (read with the lookup)
    bool retryCopy = false;  // the key session could not be opened: try again at the next check
    std::atomic<int64_t> checkedNs{0};           // last confirmation that the token key is unchanged
    bool copied() const { return crypt != token; }
  };
  // The handle a call uses, and whether it is a copy (made in key session `generation`).
  struct KeyRef {
    CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
    bool copy = false;
    uint64_t generation = 0;
    bool aes256 = false;
  };
  static KeyRef refTo(const KeyEntry& e, KeyUse use) {
    return use == KeyUse::Token ? KeyRef{e.token, false, 0, e.aes256} : KeyRef{e.crypt, e.copied(), e.generation, e.aes256};
  }
  Status findKey(CK_SESSION_HANDLE s, const std::string& label, KeyUse use, KeyRef& key, bool& dirty);
  // The copy `used` is no longer the label's (destroyed or replaced since the call took it).
  bool copyGone(const std::string& label, const KeyRef& used);
  void forgetKeysUnlessHeld();  // empties the cache unless the key session holds the login
  uint32_t keyCopies() const;
  Status lookupLabel(CK_SESSION_HANDLE s, const std::string& label, CK_OBJECT_HANDLE& key, bool& dirty);
  // CKA_KEY_TYPE, CKA_VALUE_LEN, CKA_ENCRYPT and CKA_DECRYPT of a freshly found key, in one call.
  Status readKeyAttrs(CK_SESSION_HANDLE s, KeyEntry& e, bool& dirty);
  // CKA_ENCRYPT and CKA_DECRYPT of a key.
  Status readUsage(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE token, CK_BBOOL& enc, CK_BBOOL& dec, bool& dirty);
  Status copyKey(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE token, KeyEntry& e, bool& dirty);
  Status keyUnchanged(CK_SESSION_HANDLE s, const std::string& label, CK_OBJECT_HANDLE token, CK_BBOOL enc,
                      CK_BBOOL dec, bool& same, bool& dirty);
  void closeKeySession();  // keySessionMu_ held
  void destroyCopy(CK_OBJECT_HANDLE copy, uint64_t generation);  // takes keySessionMu_
  template <class F>
  Status withKey(Job* j, CK_SESSION_HANDLE s, KeyUse use, bool& dirty, F&& op);
  Status encrypt(Job* j, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k, bool& dirty);
  Status decrypt(Job* j, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k, bool& dirty);
  Status keyInfo(Job* j, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k, bool& dirty);
  Status random(Job* j, CK_SESSION_HANDLE s, bool& dirty);
  Status createKey(Job* j, CK_SESSION_HANDLE s, bool& dirty);
  // Forgets the label's entry (and destroys its copy); with `handle`, only if the entry still
  // uses that handle (as its copy or token key).
  void dropKey(const std::string& label, CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE);
  void clearKeys();

  // exclusive lock held
  void reinitLocked();
  void afterFailure(CK_RV rv);  // session-fatal code: prune bad sessions, reset when none is left
  void recover();               // module not usable: retry re-initialization (with backoff)
  void waitForReinit();         // before taking the shared lock
  // Another engine is about to re-initialize this engine's module (exclusive lock held):
  // close the idle sessions while their handles are valid and forget the key handles.
  void forgetForReinit();

  const EngineConfig cfg_;
  SecureBuffer pin_;

  // Process-wide, shared by every engine: several engines (one per event loop) may use one
  // module, and a re-initialization (C_Finalize) must exclude the calls of all of them.
  std::shared_timed_mutex& ctxMu_;
  Module* mod_ = nullptr;
  CK_FUNCTION_LIST_PTR f_ = nullptr;
  CK_SLOT_ID slot_ = 0;
  bool ready_ = false;
  CK_RV lastInitRv_ = CKR_CRYPTOKI_NOT_INITIALIZED;
  const char* lastInitFn_ = "C_Initialize";
  std::chrono::steady_clock::time_point lastInitAttempt_{};
  std::chrono::milliseconds backoff_{0};
  std::atomic<int64_t> nextRetryNs_{0};  // steady clock; no re-initialization attempt before

  SessionPool pool_;

  mutable std::shared_mutex keyMu_;
  std::unordered_map<std::string, KeyEntry> keys_;
  // The session that owns the key copies (closing it destroys them). Never in the pool;
  // while it is open the user stays logged in, so cached handles stay valid.
  std::mutex keySessionMu_;
  CK_SESSION_HANDLE keySession_ = CK_INVALID_HANDLE;
  uint32_t keySessionCopies_ = 0;  // live copies in keySession_ (keySessionMu_)
  std::atomic<uint64_t> keySessionGen_{1};  // bumped whenever keySession_ closes
  std::atomic<bool> keySessionOpen_{false};

  JobQueue<Job> queue_;
  CompletionStack<Job> done_;
  Notify notify_ = nullptr;
  void* notifyCtx_ = nullptr;
  std::atomic<bool> notifyEnabled_{true};
  std::atomic<uint32_t> notifying_{0};  // threads between the check of notifyEnabled_ and notify_

  std::thread openThread_;
  // Worker threads are detached; workersMu_ guards the slots and the counts below.
  std::mutex workersMu_;
  std::condition_variable workersCv_;
  std::vector<std::unique_ptr<Worker>> workers_;
  uint32_t activeWorkers_ = 0;  // not stuck
  uint32_t stuckThreads_ = 0;
  uint32_t maxStuck_ = 0;
  std::atomic<uint32_t> threadsAlive_{0};
  bool workersStarted_ = false;
  std::thread watchdog_;
  bool watchdogStop_ = false;  // workersMu_
  std::atomic<Job*> closeJob_{nullptr};
  std::chrono::steady_clock::time_point closeBegan_{};
  bool aborted_ = false;
  std::atomic<bool> aborting_{false};  // waiting jobs give up at once
  std::atomic<uint32_t>& exclusivePending_;  // process-wide, with ctxMu_

  alignas(64) std::atomic<uint64_t> reinitializations_{0};
  std::atomic<uint64_t> timeouts_{0};
  std::atomic<uint64_t> sessionErrors_{0};
  std::atomic<uint32_t> stuckCount_{0};
  std::atomic<uint32_t> decryptSlack_{0};  // extra output room the module asked for on decrypt

  // The module was initialized with NULL arguments (no OS locking): every call sequence takes
  // serialMu_ (the module's, process-wide). Set by open, before the workers start.
  std::timed_mutex* serialMu_ = nullptr;

  // Last IV per label (HSM-generated IV modes only).
  std::mutex ivMu_;
  std::unordered_map<std::string, std::array<uint8_t, kGcmIvBytes>> lastIv_;
};

}  // namespace xks
