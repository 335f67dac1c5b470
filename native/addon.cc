// N-API face of the engine: class Engine (see src/hsm/addon.ts for the contract).
//
// Completion path: engine threads push finished jobs on a lock-free stack and call the
// engine's single thread-safe function only when the stack was empty; the JS-thread
// callback takes the whole stack, restores FIFO order and settles every promise. The
// thread-safe function is referenced only while jobs are in flight, so an idle engine
// never keeps the process alive.
#include <napi.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine.h"
#include "limits.h"
#include "names.h"

namespace xks {
namespace {

constexpr size_t kMaxLabel = 1024;
constexpr size_t kMaxData = 1u << 20;  // plaintext / ciphertext / AAD
constexpr size_t kMaxIv = 256;
constexpr size_t kMaxRandom = 1u << 16;
constexpr size_t kMaxPin = 1024;
constexpr size_t kMaxFreeJobs = 1024;
constexpr const char* kBadArgument = "XKS_BAD_ARGUMENT";
constexpr const char* kClosed = "XKS_CLOSED";

[[noreturn]] void badArgument(Napi::Env env, const std::string& msg) {
  Napi::TypeError e = Napi::TypeError::New(env, msg);
  e.Value().Set("code", Napi::String::New(env, kBadArgument));
  throw e;
}

struct Bytes {
  const uint8_t* data = nullptr;
  size_t size = 0;
};

Bytes bytesArg(Napi::Env env, const Napi::Value& v, const char* what, size_t max) {
  Bytes b;
  if (v.IsTypedArray()) {
    auto ta = v.As<Napi::TypedArray>();
    if (ta.TypedArrayType() != napi_uint8_array) badArgument(env, std::string(what) + " must be a Buffer");
    auto u8 = v.As<Napi::Uint8Array>();
    b.data = u8.Data();
    b.size = u8.ByteLength();
  } else {
    badArgument(env, std::string(what) + " must be a Buffer");
  }
  if (b.size > max) badArgument(env, std::string(what) + " is too long");
  return b;
}

// Reads a JS string into `out` (UTF-8) without an intermediate copy.
template <class Out>
size_t utf8Arg(Napi::Env env, const Napi::Value& v, const char* what, size_t maxBytes, Out& out) {
  if (!v.IsString()) badArgument(env, std::string(what) + " must be a string");
  size_t len = 0;
  napi_status st = napi_get_value_string_utf8(env, v, nullptr, 0, &len);
  if (st != napi_ok) badArgument(env, std::string(what) + " must be a string");
  if (len > maxBytes) badArgument(env, std::string(what) + " is too long");
  out.resize(len + 1);
  size_t written = 0;
  napi_get_value_string_utf8(env, v, reinterpret_cast<char*>(out.data()), len + 1, &written);
  out.resize(written);
  return written;
}

uint32_t intOption(Napi::Env env, const Napi::Object& o, const char* name, uint32_t min, uint32_t max) {
  Napi::Value v = o.Get(name);
  if (!v.IsNumber()) badArgument(env, std::string("options.") + name + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d || d < min || d > max) {
    badArgument(env, std::string("options.") + name + " must be an integer in [" + std::to_string(min) + ", " +
                         std::to_string(max) + "]");
  }
  return static_cast<uint32_t>(d);
}

// An option bounded by native/limits.h.
uint32_t intOption(Napi::Env env, const Napi::Object& o, const limits::Range& r) {
  return intOption(env, o, r.option, r.min, r.max);
}

bool boolOption(Napi::Env env, const Napi::Object& o, const char* name, bool optional, bool dflt) {
  Napi::Value v = o.Get(name);
  if (optional && v.IsUndefined()) return dflt;
  if (!v.IsBoolean()) badArgument(env, std::string("options.") + name + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

}  // namespace

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Engine",
                       {
                           InstanceMethod<&EngineWrap::Open>("open"),
                           InstanceMethod<&EngineWrap::Encrypt>("encrypt"),
                           InstanceMethod<&EngineWrap::Decrypt>("decrypt"),
                           InstanceMethod<&EngineWrap::KeyInfo>("keyInfo"),
                           InstanceMethod<&EngineWrap::TokenInfo>("tokenInfo"),
                           InstanceMethod<&EngineWrap::Random>("random"),
                           InstanceMethod<&EngineWrap::CreateKey>("createKey"),
                           InstanceMethod<&EngineWrap::Hmac>("hmac"),
                           InstanceMethod<&EngineWrap::HmacVerify>("hmacVerify"),
                           InstanceMethod<&EngineWrap::Stats>("stats"),
                           InstanceMethod<&EngineWrap::Close>("close"),
                       });
  }

  explicit EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info), env_(info.Env()) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject()) badArgument(env, "options must be an object");
    Napi::Object o = info[0].As<Napi::Object>();
    EngineConfig cfg;
    utf8Arg(env, o.Get("modulePath"), "options.modulePath", 4096, cfg.modulePath);
    if (cfg.modulePath.empty()) badArgument(env, "options.modulePath must not be empty");
    cfg.poolMaxSize = intOption(env, o, limits::kPoolMaxSize);
    cfg.poolTimeoutMs = intOption(env, o, limits::kPoolTimeoutMs);
    cfg.eagerClose = boolOption(env, o, "eagerClose", false, false);
    cfg.threads = intOption(env, o, limits::kThreads);
    // Absent or 0: `threads` serve. Else `threads` is the ceiling of an adaptive count (CPUs to keep busy).
    if (!o.Get("adaptCores").IsUndefined()) cfg.adaptCores = intOption(env, o, "adaptCores", 0, limits::kThreads.max);
    if (!o.Get("operationTimeoutMs").IsUndefined()) {
      cfg.opTimeoutMs = intOption(env, o, limits::kOperationTimeoutMs);
    }
    cfg.keyCopies = boolOption(env, o, "keyCopies", true, false);
    if (!o.Get("keyCheckMs").IsUndefined()) cfg.keyCheckMs = intOption(env, o, limits::kKeyCheckMs);
    if (!o.Get("sessionRegrowMs").IsUndefined()) cfg.sessionRegrowMs = intOption(env, o, "sessionRegrowMs", 1, 3600000);
    std::string mode;
    utf8Arg(env, o.Get("ivMode"), "options.ivMode", 64, mode);
    if (mode == "random") {
      cfg.ivMode = IvMode::Random;
    } else if (mode == "hsm-appended") {
      cfg.ivMode = IvMode::HsmAppended;
    } else if (mode == "hsm-zero-buffer") {
      cfg.ivMode = IvMode::HsmZeroBuffer;
    } else {
      badArgument(env, "options.ivMode must be 'random', 'hsm-appended' or 'hsm-zero-buffer'");
    }
    Napi::Value onLimit = o.Get("onSessionLimit");
    if (!onLimit.IsUndefined()) {
      if (!onLimit.IsFunction()) badArgument(env, "options.onSessionLimit must be a function");
      onSessionLimit_ = Napi::Persistent(onLimit.As<Napi::Function>());
    }
    SecureBuffer pin;
    utf8Arg(env, o.Get("userPin"), "options.userPin", kMaxPin, pin);
    core_ = std::make_unique<Core>(std::move(cfg), pin.data(), pin.size());
  }

  ~EngineWrap() override {
    if (cleanupHook_) {
      napi_remove_env_cleanup_hook(env_, &EngineWrap::Cleanup, this);
      cleanupHook_ = false;
    }
    freeJobs(core_->abort());
    freeJobs(free_);
    free_ = nullptr;
    // A thread still stuck inside the HSM uses the Core when its call returns: leak it.
    if (core_->threadsAlive() != 0) (void)core_.release();
  }

 private:
  enum class State { Idle, Opening, Open, Closing, Closed };

  // ------------------------------------------------------------ jobs and promises

  Job* newJob(Op op) {
    Job* j = free_;
    if (j != nullptr) {
      free_ = j->next;
      --freeCount_;
    } else {
      j = new Job();
    }
    j->next = nullptr;
    j->op = op;
    j->deferred = nullptr;
    j->timedOut = false;
    j->handoff.store(0, std::memory_order_relaxed);
    j->deadline = std::chrono::steady_clock::time_point::max();
    j->clearResult();
    return j;
  }

  void recycle(Job* j) {
    j->wipeAll();
    j->label.clear();
    j->deferred = nullptr;
    j->clearResult();
    if (freeCount_ >= kMaxFreeJobs) {
      delete j;
      return;
    }
    j->next = free_;
    free_ = j;
    ++freeCount_;
  }

  // Frees jobs that will never be settled (abort, free list). A timed-out job the watchdog
  // pushed while its worker is still inside the HSM is not ours yet: mark it seen, and the
  // worker, when its call returns, hands it back (to a completion stack nobody drains: leaked).
  static void freeJobs(Job* j) {
    while (j != nullptr) {
      Job* n = j->next;
      if (!j->timedOut || (j->handoff.fetch_or(Job::kJsSeen, std::memory_order_acq_rel) & Job::kWorkerDone)) delete j;
      j = n;
    }
  }

  void inFlightStart(Napi::Env env) {
    if (inFlight_++ == 0 && tsfn_ != nullptr) napi_ref_threadsafe_function(env, tsfn_);
  }

  void inFlightDone(Napi::Env env) {
    if (--inFlight_ == 0 && tsfn_ != nullptr) napi_unref_threadsafe_function(env, tsfn_);
  }

  // Submits a job to the workers; the promise settles from the completion callback.
  Napi::Value submit(Napi::Env env, Job* j) {
    napi_deferred d;
    napi_value promise;
    if (napi_create_promise(env, &d, &promise) != napi_ok) {
      recycle(j);
      throw Napi::Error::New(env, "cannot create a promise");
    }
    j->deferred = d;
    j->submitted = std::chrono::steady_clock::now();
    inFlightStart(env);
    core_->submit(j);
    return Napi::Value(env, promise);
  }

  Napi::Value rejected(Napi::Env env, const char* code, const char* msg) {
    auto d = Napi::Promise::Deferred::New(env);
    Napi::Error e = Napi::Error::New(env, msg);
    e.Value().Set("code", Napi::String::New(env, code));
    d.Reject(e.Value());
    return d.Promise();
  }

  // Non-null when calls cannot run now (the rejected promise to return).
  bool notOpen() const { return state_ != State::Open; }
  Napi::Value notOpenRejection(Napi::Env env) {
    return rejected(
        env, kClosed,
        state_ == State::Closing || state_ == State::Closed ? "the engine is closed" : "the engine is not open");
  }

  static Napi::Value errorFor(Napi::Env env, const Job* j) {
    std::string code;
    std::string msg;
    if (j->xks != nullptr) {
      code = j->xks;
      if (code == "XKS_POOL_EXHAUSTED") {
        msg = "session pool exhausted: no PKCS#11 session became available within the pool timeout";
      } else if (code == "XKS_KEY_NOT_FOUND") {
        msg = "no secret key with this label on the token";
      } else if (code == "XKS_KEY_AMBIGUOUS") {
        msg = "more than one secret key with this label on the token";
      } else if (code == "XKS_CLOSED") {
        msg = "the engine is closed";
      } else if (code == "XKS_LOAD_FAILED") {
        msg = "cannot load the PKCS#11 module";
        if (j->fn != nullptr) msg += std::string(" (") + j->fn + ")";
        if (!j->detail.empty()) msg += ": " + j->detail;
      } else if (code == "XKS_TIMEOUT") {
        msg = "the HSM did not answer within the operation deadline";
      } else if (code == "XKS_KEY_SPEC") {
        msg = "the key is not an AES-256 key (CKK_AES with CKA_VALUE_LEN 32)";
      } else if (code == "XKS_HMAC_KEY_SPEC") {
        msg = "the key is not a generic secret key (CKK_GENERIC_SECRET) for CKM_SHA256_HMAC";
      } else if (code == "XKS_IV_ZERO") {
        msg = "the HSM returned an all-zero GCM IV: it did not generate one";
      } else if (code == "XKS_IV_REPEATED") {
        msg = "the HSM returned the same GCM IV as for the previous encryption with this key";
      } else if (code == "XKS_CDIV_MISMATCH") {
        msg = "the verifying decrypt of the new ciphertext returned other bytes than the plaintext";
      } else if (code == "XKS_BAD_OUTPUT") {
        msg = std::string(j->fn != nullptr ? j->fn : "PKCS#11 call") + " returned output of an unexpected length";
      } else {
        msg = code;
      }
    } else {
      code = ckrName(j->rv);
      msg = std::string(j->fn != nullptr ? j->fn : "PKCS#11 call") + " failed: " + code;
    }
    Napi::Error e = Napi::Error::New(env, msg);
    Napi::Object o = e.Value();
    o.Set("code", Napi::String::New(env, code));
    if (j->fn != nullptr) o.Set("fn", Napi::String::New(env, j->fn));
    if (j->verifying.load(std::memory_order_acquire)) o.Set("verifying", Napi::Boolean::New(env, true));
    return o;
  }

  static Napi::Value bufferOf(Napi::Env env, const SecureBuffer& b) {
    if (b.empty()) return Napi::Buffer<uint8_t>::New(env, 0);
    return Napi::Buffer<uint8_t>::Copy(env, b.data(), b.size());
  }

  static Napi::Value resultFor(Napi::Env env, Job* j) {
    switch (j->op) {
      case Op::Encrypt:
      case Op::Decrypt:
      case Op::Random:
        return bufferOf(env, j->output);
      case Op::Hmac: {
        const auto& h = j->as<HmacArgs>();
        if (h.verify) return Napi::Boolean::New(env, h.valid);
        return bufferOf(env, h.mac);
      }
      case Op::KeyInfo: {
        const auto& k = j->as<KeyInfoResult>();
        Napi::Object o = Napi::Object::New(env);
        o.Set("keyType", Napi::String::New(env, k.keyType));
        o.Set("bits", Napi::Number::New(env, static_cast<double>(k.bits)));
        o.Set("encrypt", Napi::Boolean::New(env, k.encrypt));
        o.Set("decrypt", Napi::Boolean::New(env, k.decrypt));
        o.Set("sign", Napi::Boolean::New(env, k.sign));
        o.Set("verify", Napi::Boolean::New(env, k.verify));
        o.Set("wrap", Napi::Boolean::New(env, k.wrap));
        o.Set("unwrap", Napi::Boolean::New(env, k.unwrap));
        return o;
      }
      case Op::TokenInfo: {
        const auto& t = j->as<TokenInfoResult>();
        auto version = [&](unsigned major, unsigned minor) {
          Napi::Object v = Napi::Object::New(env);
          v.Set("major", Napi::Number::New(env, major));
          v.Set("minor", Napi::Number::New(env, minor));
          return v;
        };
        Napi::Object o = Napi::Object::New(env);
        o.Set("label", Napi::String::New(env, t.label));
        o.Set("manufacturerId", Napi::String::New(env, t.manufacturerId));
        o.Set("model", Napi::String::New(env, t.model));
        o.Set("serialNumber", Napi::String::New(env, t.serialNumber));
        o.Set("hardwareVersion", version(t.hwMajor, t.hwMinor));
        o.Set("firmwareVersion", version(t.fwMajor, t.fwMinor));
        return o;
      }
      default:
        return env.Undefined();
    }
  }

  // A running job the watchdog expired: the worker may still use its buffers.
  void settleTimedOut(Napi::Env env, Job* j) {
    if (j->handoff.load(std::memory_order_acquire) & Job::kJsSeen) {
      recycle(j);  // second arrival: the worker is done with it
      return;
    }
    Napi::HandleScope scope(env);
    auto d = static_cast<napi_deferred>(j->deferred);
    j->deferred = nullptr;
    if (d != nullptr) {
      try {
        Napi::Error e = Napi::Error::New(env, "the HSM did not answer within the operation deadline");
        e.Value().Set("code", Napi::String::New(env, "XKS_TIMEOUT"));
        if (j->verifying.load(std::memory_order_acquire)) e.Value().Set("verifying", Napi::Boolean::New(env, true));
        napi_reject_deferred(env, d, e.Value());
      } catch (const Napi::Error& e) {
        napi_reject_deferred(env, d, e.Value());
      }
    }
    inFlightDone(env);
    if (j->handoff.fetch_or(Job::kJsSeen, std::memory_order_acq_rel) & Job::kWorkerDone) recycle(j);
  }

  void settle(Napi::Env env, Job* j) {
    Napi::HandleScope scope(env);
    auto d = static_cast<napi_deferred>(j->deferred);
    j->deferred = nullptr;
    if (d != nullptr) {
      try {
        if (j->failed()) {
          napi_reject_deferred(env, d, errorFor(env, j));
        } else {
          napi_resolve_deferred(env, d, resultFor(env, j));
        }
      } catch (const Napi::Error& e) {
        napi_reject_deferred(env, d, e.Value());
      }
    }
    j->output.wipe();  // decrypted plaintext now lives only in the JS Buffer
    inFlightDone(env);
    recycle(j);
  }

  // ------------------------------------------------------------ completion

  static void CallJs(napi_env env, napi_value /*fn*/, void* context, void* /*data*/) {
    if (env == nullptr) return;  // the function is being torn down
    static_cast<EngineWrap*>(context)->drain(Napi::Env(env));
  }

  static void NotifyFromWorker(void* tsfn) {
    napi_call_threadsafe_function(static_cast<napi_threadsafe_function>(tsfn), nullptr, napi_tsfn_nonblocking);
  }

  void drain(Napi::Env env) {
    Job* j = core_->takeCompleted();
    while (j != nullptr) {
      Job* next = j->next;
      j->next = nullptr;
      try {
        switch (j->op) {
          case Op::Open:
            openDone(env, j);
            break;
          case Op::Close:
            closeDone(env, j);
            break;
          default:
            if (j->timedOut) {
              settleTimedOut(env, j);
            } else {
              settle(env, j);
            }
            break;
        }
      } catch (...) {
        // Never let an exception cross into Node; the job is lost but the engine lives.
      }
      j = next;
    }
    noteSessionLimit(env);
  }

  // Tells options.onSessionLimit of a session cap the pool learned (once per new cap).
  void noteSessionLimit(Napi::Env env) {
    if (onSessionLimit_.IsEmpty()) return;
    const uint32_t cap = core_->takeCapNote();
    if (cap == 0) return;
    Napi::HandleScope scope(env);
    try {
      onSessionLimit_.Call({Napi::Number::New(env, cap)});
    } catch (...) {
      // A throwing callback must not cross into Node from here.
    }
  }

  // ------------------------------------------------------------ life cycle

  static void Cleanup(void* arg) {
    // Environment teardown (process exit without close()): stop threads before the
    // thread-safe function goes away; no promise is settled any more.
    auto* self = static_cast<EngineWrap*>(arg);
    self->cleanupHook_ = false;
    freeJobs(self->core_->abort());
    self->state_ = State::Closed;
    self->tsfn_ = nullptr;  // Node finalizes it
    self->core_->wipePin();
  }

  void releaseRuntime(Napi::Env env) {
    if (cleanupHook_) {
      napi_remove_env_cleanup_hook(env, &EngineWrap::Cleanup, this);
      cleanupHook_ = false;
    }
    if (tsfn_ != nullptr) {
      napi_release_threadsafe_function(tsfn_, napi_tsfn_release);
      tsfn_ = nullptr;
    }
    if (selfRef_) {
      selfRef_ = false;
      Unref();
    }
  }

  void settleWaiters(Napi::Env env, std::vector<napi_deferred>& waiters, napi_value value, bool ok) {
    std::vector<napi_deferred> ws;
    ws.swap(waiters);
    for (napi_deferred d : ws) {
      if (ok) {
        napi_resolve_deferred(env, d, value);
      } else {
        napi_reject_deferred(env, d, value);
      }
    }
  }

  Napi::Value Open(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    switch (state_) {
      case State::Open: {
        auto d = Napi::Promise::Deferred::New(env);
        d.Resolve(openResultFor(env, openResult_));
        return d.Promise();
      }
      case State::Closing:
      case State::Closed:
        return rejected(env, kClosed, "the engine is closed");
      case State::Opening:
      case State::Idle:
        break;
    }
    napi_deferred d;
    napi_value promise;
    NAPI_THROW_IF_FAILED(env, napi_create_promise(env, &d, &promise), Napi::Value());
    openWaiters_.push_back(d);
    if (state_ == State::Opening) return Napi::Value(env, promise);

    napi_value name = Napi::String::New(env, "xks_pkcs11");
    napi_status st = napi_create_threadsafe_function(env, nullptr, nullptr, name, 0, 1, nullptr, nullptr, this,
                                                     &EngineWrap::CallJs, &tsfn_);
    if (st != napi_ok) {
      openWaiters_.clear();
      tsfn_ = nullptr;
      throw Napi::Error::New(env, "cannot create the completion function");
    }
    napi_unref_threadsafe_function(env, tsfn_);
    napi_add_env_cleanup_hook(env, &EngineWrap::Cleanup, this);
    cleanupHook_ = true;
    Ref();  // the JS object must outlive its threads
    selfRef_ = true;
    core_->setNotify(&EngineWrap::NotifyFromWorker, tsfn_);
    state_ = State::Opening;
    Job* j = newJob(Op::Open);
    inFlightStart(env);
    core_->startOpen(j);
    return Napi::Value(env, promise);
  }

  static Napi::Value openResultFor(Napi::Env env, const OpenResult& r) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("ready", Napi::Boolean::New(env, r.ready));
    if (!r.ready) {
      o.Set("downCode", Napi::String::New(env, ckrName(r.downRv)));
      if (r.downFn != nullptr) o.Set("downFn", Napi::String::New(env, r.downFn));
    }
    o.Set("serialized", Napi::Boolean::New(env, r.serialized));
    if (r.lockingRv != CKR_OK) o.Set("lockingCode", Napi::String::New(env, ckrName(r.lockingRv)));
    if (r.ivCheck != nullptr) {
      o.Set("ivCheck", Napi::String::New(env, r.ivCheck));
      if (r.ivCheckRv != CKR_OK) o.Set("ivCheckCode", Napi::String::New(env, ckrName(r.ivCheckRv)));
      if (r.ivCheckFn != nullptr) o.Set("ivCheckFn", Napi::String::New(env, r.ivCheckFn));
    }
    if (r.ivBufferStep != nullptr) {
      Napi::Object b = Napi::Object::New(env);
      b.Set("step", Napi::String::New(env, r.ivBufferStep));
      b.Set("error", Napi::String::New(env, errnoName(r.ivBufferErrno)));
      b.Set("bytes", Napi::Number::New(env, static_cast<double>(r.ivBufferBytes)));
      if (r.memlockKnown) b.Set("memlockLimit", Napi::Number::New(env, static_cast<double>(r.memlockLimit)));
      o.Set("ivBufferOff", b);
    }
    return o;
  }

  void openDone(Napi::Env env, Job* j) {
    Napi::HandleScope scope(env);
    core_->joinOpenThread();
    const bool ok = !j->failed();
    if (ok) openResult_ = j->as<OpenResult>();
    napi_value value = ok ? static_cast<napi_value>(openResultFor(env, j->as<OpenResult>()))
                          : static_cast<napi_value>(errorFor(env, j));
    recycle(j);
    inFlightDone(env);
    if (ok) {
      core_->startWorkers();
      state_ = State::Open;
    } else {
      releaseRuntime(env);
      state_ = closeRequested_ ? State::Closed : State::Idle;
    }
    settleWaiters(env, openWaiters_, value, ok);
    if (closeRequested_) {
      closeRequested_ = false;
      if (ok) {
        beginClose(env);
      } else {
        core_->wipePin();
        settleWaiters(env, closeWaiters_, env.Undefined(), true);
      }
    }
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto resolvedNow = [&] {
      auto d = Napi::Promise::Deferred::New(env);
      d.Resolve(env.Undefined());
      return d.Promise();
    };
    switch (state_) {
      case State::Closed:
        return resolvedNow();
      case State::Idle:
        state_ = State::Closed;
        core_->wipePin();
        return resolvedNow();
      default:
        break;
    }
    napi_deferred d;
    napi_value promise;
    NAPI_THROW_IF_FAILED(env, napi_create_promise(env, &d, &promise), Napi::Value());
    closeWaiters_.push_back(d);
    if (state_ == State::Opening) {
      closeRequested_ = true;
    } else if (state_ == State::Open) {
      beginClose(env);
    }
    return Napi::Value(env, promise);
  }

  void beginClose(Napi::Env env) {
    state_ = State::Closing;
    Job* cj = newJob(Op::Close);
    inFlightStart(env);
    Job* queued = core_->beginClose(cj);
    while (queued != nullptr) {
      Job* next = queued->next;
      queued->next = nullptr;
      queued->clearResult();
      queued->xks = kClosed;
      settle(env, queued);
      queued = next;
    }
  }

  void closeDone(Napi::Env env, Job* j) {
    core_->disableNotify();  // threads stuck in the HSM may still finish later
    core_->joinWorkers();
    recycle(j);
    state_ = State::Closed;
    core_->wipePin();
    inFlightDone(env);
    releaseRuntime(env);
    settleWaiters(env, closeWaiters_, env.Undefined(), true);
  }

  // ------------------------------------------------------------ operations

  Napi::Value Encrypt(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Bytes pt = bytesArg(env, info[1], "plaintext", kMaxData);
    Bytes aad = bytesArg(env, info[2], "aad", kMaxData);
    const bool verify = info.Length() > 3 && info[3].IsBoolean() && info[3].As<Napi::Boolean>().Value();
    if (notOpen()) {
      checkLabel(env, info[0]);
      return notOpenRejection(env);
    }
    Job* j = newJob(Op::Encrypt);
    try {
      readLabel(env, info[0], j);
      CryptArgs& a = j->as<CryptArgs>();
      a.input.assign(pt.data, pt.size);
      a.aad.assign(aad.data, aad.size);
      a.verify = verify;
    } catch (...) {
      recycle(j);
      throw;
    }
    return submit(env, j);
  }

  Napi::Value Decrypt(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Bytes ct = bytesArg(env, info[1], "ciphertext", kMaxData);
    Bytes tag = bytesArg(env, info[2], "tag", kGcmTagBytes);
    Bytes iv = bytesArg(env, info[3], "iv", kMaxIv);
    Bytes aad = bytesArg(env, info[4], "aad", kMaxData);
    if (tag.size != kGcmTagBytes) badArgument(env, "tag must be 16 bytes");
    if (iv.size == 0) badArgument(env, "iv must not be empty");
    if (notOpen()) {
      checkLabel(env, info[0]);
      return notOpenRejection(env);
    }
    Job* j = newJob(Op::Decrypt);
    try {
      readLabel(env, info[0], j);
      CryptArgs& a = j->as<CryptArgs>();
      a.input.resize(ct.size + tag.size);
      if (ct.size != 0) std::memcpy(a.input.data(), ct.data, ct.size);
      std::memcpy(a.input.data() + ct.size, tag.data, tag.size);
      a.iv.assign(iv.data, iv.size);
      a.aad.assign(aad.data, aad.size);
    } catch (...) {
      recycle(j);
      throw;
    }
    return submit(env, j);
  }

  Napi::Value KeyInfo(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (notOpen()) {
      checkLabel(env, info[0]);
      return notOpenRejection(env);
    }
    Job* j = newJob(Op::KeyInfo);
    try {
      readLabel(env, info[0], j);
    } catch (...) {
      recycle(j);
      throw;
    }
    return submit(env, j);
  }

  Napi::Value TokenInfo(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (notOpen()) return notOpenRejection(env);
    return submit(env, newJob(Op::TokenInfo));
  }

  Napi::Value Random(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsNumber()) badArgument(env, "length must be a number");
    double n = info[0].As<Napi::Number>().DoubleValue();
    if (!std::isfinite(n) || std::floor(n) != n || n < 0 || n > kMaxRandom) {
      badArgument(env, "length must be an integer in [0, 65536]");
    }
    if (notOpen()) return notOpenRejection(env);
    Job* j = newJob(Op::Random);
    j->as<RandomArgs>().length = static_cast<size_t>(n);
    return submit(env, j);
  }

  Napi::Value CreateKey(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[1].IsObject()) badArgument(env, "options must be an object");
    Napi::Object o = info[1].As<Napi::Object>();
    Napi::Value value = o.Get("value");
    Bytes key;
    bool hasValue = !value.IsUndefined();
    const bool hmac = boolOption(env, o, "hmac", true, false);
    if (hasValue) {
      key = bytesArg(env, value, "options.value", 32);
      if (hmac && key.size != 32) badArgument(env, "options.value must be 32 bytes for an HMAC key");
      if (key.size != 16 && key.size != 24 && key.size != 32) {
        badArgument(env, "options.value must be 16, 24 or 32 bytes");
      }
    }
    bool enc = boolOption(env, o, "encrypt", false, false);
    bool dec = boolOption(env, o, "decrypt", false, false);
    bool wrap = boolOption(env, o, "wrap", true, false);
    bool unwrap = boolOption(env, o, "unwrap", true, false);
    if (notOpen()) {
      checkLabel(env, info[0]);
      return notOpenRejection(env);
    }
    Job* j = newJob(Op::CreateKey);
    try {
      readLabel(env, info[0], j);
      CreateKeyArgs& a = j->as<CreateKeyArgs>();
      a.hasValue = hasValue;
      if (hasValue) a.value.assign(key.data, key.size);
      a.encrypt = enc;
      a.decrypt = dec;
      a.wrap = wrap;
      a.unwrap = unwrap;
      a.hmac = hmac;
    } catch (...) {
      recycle(j);
      throw;
    }
    return submit(env, j);
  }

  // hmac(label, data) -> Buffer (32 bytes); hmacVerify(label, data, mac) -> boolean.
  Napi::Value Hmac(const Napi::CallbackInfo& info) { return hmacJob(info, false); }
  Napi::Value HmacVerify(const Napi::CallbackInfo& info) { return hmacJob(info, true); }

  Napi::Value hmacJob(const Napi::CallbackInfo& info, bool verify) {
    Napi::Env env = info.Env();
    Bytes data = bytesArg(env, info[1], "data", kMaxData);
    Bytes mac;
    if (verify) mac = bytesArg(env, info[2], "mac", kMaxIv);
    if (notOpen()) {
      checkLabel(env, info[0]);
      return notOpenRejection(env);
    }
    Job* j = newJob(Op::Hmac);
    try {
      readLabel(env, info[0], j);
      HmacArgs& a = j->as<HmacArgs>();
      a.verify = verify;
      a.valid = false;
      a.data.assign(data.data, data.size);
      a.mac.assign(mac.data, mac.size);
    } catch (...) {
      recycle(j);
      throw;
    }
    return submit(env, j);
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    EngineStats s = core_->stats();
    Napi::Object o = Napi::Object::New(env);
    o.Set("sessionsOpen", Napi::Number::New(env, s.sessionsOpen));
    o.Set("sessionsIdle", Napi::Number::New(env, s.sessionsIdle));
    o.Set("inFlight", Napi::Number::New(env, inFlight_));
    o.Set("reinitializations", Napi::Number::New(env, static_cast<double>(s.reinitializations)));
    o.Set("sessionsQuarantined", Napi::Number::New(env, s.sessionsQuarantined));
    o.Set("workersStuck", Napi::Number::New(env, s.workersStuck));
    o.Set("timeouts", Napi::Number::New(env, static_cast<double>(s.timeouts)));
    o.Set("sessionErrors", Napi::Number::New(env, static_cast<double>(s.sessionErrors)));
    o.Set("ready", Napi::Boolean::New(env, s.ready));
    o.Set("keyCopies", Napi::Number::New(env, s.keyCopies));
    o.Set("keySessionOpen", Napi::Boolean::New(env, s.keySessionOpen));
    o.Set("ivBuffer", Napi::Boolean::New(env, s.ivBuffer));
    o.Set("sessionLimit", Napi::Number::New(env, s.sessionLimit));
    o.Set("sessionCountRefused", Napi::Number::New(env, static_cast<double>(s.sessionCountRefused)));
    return o;
  }

  void readLabel(Napi::Env env, const Napi::Value& v, Job* j) {
    utf8Arg(env, v, "label", kMaxLabel, j->label);
    if (j->label.empty()) badArgument(env, "label must not be empty");
  }

  void checkLabel(Napi::Env env, const Napi::Value& v) {
    std::string tmp;
    utf8Arg(env, v, "label", kMaxLabel, tmp);
    if (tmp.empty()) badArgument(env, "label must not be empty");
  }

  napi_env env_;
  Napi::FunctionReference onSessionLimit_;
  std::unique_ptr<Core> core_;
  napi_threadsafe_function tsfn_ = nullptr;
  bool cleanupHook_ = false;
  bool selfRef_ = false;
  State state_ = State::Idle;
  bool closeRequested_ = false;
  std::vector<napi_deferred> openWaiters_;
  std::vector<napi_deferred> closeWaiters_;
  Job* free_ = nullptr;
  size_t freeCount_ = 0;
  OpenResult openResult_;  // what the successful open() found
  uint32_t inFlight_ = 0;
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("Engine", EngineWrap::Define(env));
  // The option bounds, for src/config.ts: { poolMaxSize: { min, max }, ... } (frozen).
  Napi::Object bounds = Napi::Object::New(env);
  for (const limits::Range& r : limits::kAll) {
    Napi::Object range = Napi::Object::New(env);
    range.Set("min", Napi::Number::New(env, r.min));
    range.Set("max", Napi::Number::New(env, r.max));
    range.Freeze();
    bounds.Set(r.option, range);
  }
  bounds.Freeze();
  exports.Set("limits", bounds);
  return exports;
}

}  // namespace xks

static Napi::Object InitXksPkcs11(Napi::Env env, Napi::Object exports) { return xks::Init(env, exports); }

NODE_API_MODULE(xks_pkcs11, InitXksPkcs11)
