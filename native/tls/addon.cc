// N-API surface of the mTLS terminator (build/Release/xks_tls.node), used only by src/http/mtls.ts:
//   new Terminator(options, onEvent(kind, remote, reason)) -> port(), stopAccepting(), close(), stats()
// onEvent runs on the JS thread, queued from the terminator's thread (bounded: reports beyond the
// queue are counted in stats().droppedReports, never waited for).
#include <napi.h>
#include <openssl/crypto.h>
#include <openssl/opensslv.h>

#include <atomic>
#include <cerrno>
#include <memory>
#include <string>
#include <system_error>

#include "terminator.h"
#include "tls_context.h"

namespace {

using xks::tls::EventKind;

constexpr size_t kMaxQueuedReports = 256;

struct Report {
  EventKind kind;
  std::string remote;
  std::string reason;
};

const char* KindName(EventKind k) {
  switch (k) {
    case EventKind::kRefused:
      return "refused";
    case EventKind::kUpstreamError:
      return "upstream";
    case EventKind::kListenError:
      return "listen";
  }
  return "unknown";
}

const char* ErrnoCode(int e) {
  switch (e) {
    case EADDRINUSE:
      return "EADDRINUSE";
    case EADDRNOTAVAIL:
      return "EADDRNOTAVAIL";
    case EACCES:
      return "EACCES";
    case EMFILE:
      return "EMFILE";
    default:
      return "ESYSTEM";
  }
}

std::string Str(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsString()) throw Napi::TypeError::New(o.Env(), std::string("options.") + key + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

int Int(const Napi::Object& o, const char* key, int fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return fallback;
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string("options.") + key + " must be a number");
  return v.As<Napi::Number>().Int32Value();
}

bool Bool(const Napi::Object& o, const char* key, bool fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return fallback;
  if (!v.IsBoolean()) throw Napi::TypeError::New(o.Env(), std::string("options.") + key + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

class TerminatorWrap : public Napi::ObjectWrap<TerminatorWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(
        env, "Terminator",
        {InstanceMethod<&TerminatorWrap::Port>("port"), InstanceMethod<&TerminatorWrap::StopAccepting>("stopAccepting"),
         InstanceMethod<&TerminatorWrap::Close>("close"), InstanceMethod<&TerminatorWrap::Stats>("stats")});
  }

  explicit TerminatorWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TerminatorWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction()) {
      throw Napi::TypeError::New(env, "new Terminator(options, onEvent)");
    }
    Napi::Object o = info[0].As<Napi::Object>();
    xks::tls::ContextOptions co;
    co.certFile = Str(o, "certFile");
    co.keyFile = Str(o, "keyFile");
    co.caFile = Str(o, "caFile");
    co.dnsName = Str(o, "dnsName");
    co.cipherList = Str(o, "cipherList");
    co.cipherSuites = Str(o, "cipherSuites");
    xks::tls::ListenOptions lo;
    lo.host = Str(o, "host");
    lo.port = Int(o, "port", 0);
    lo.upstreamPath = Str(o, "upstreamPath");
    lo.handshakeTimeoutMs = Int(o, "handshakeTimeoutMs", lo.handshakeTimeoutMs);
    lo.maxConnections = Int(o, "maxConnections", lo.maxConnections);
    lo.proxyHeader = Bool(o, "proxyHeader", lo.proxyHeader);
    Napi::Value ka = o.Get("keepalive");
    if (ka.IsObject()) {
      Napi::Object k = ka.As<Napi::Object>();
      lo.keepalive.enabled = true;
      lo.keepalive.idleSecs = Int(k, "idleSecs", 0);
      lo.keepalive.intervalSecs = Int(k, "intervalSecs", 0);
      lo.keepalive.count = Int(k, "count", 0);
    }
    if (lo.port < 0 || lo.port > 65535) throw Napi::RangeError::New(env, "options.port must be 0..65535");

    xks::tls::SslCtxPtr ctx;
    try {
      ctx = xks::tls::MakeContext(co);
    } catch (const std::exception& e) {
      throw Napi::Error::New(env, e.what());
    }
    tsfn_ = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "xks-mtls-events", kMaxQueuedReports, 1);
    auto deliver = [this](EventKind kind, const std::string& remote, const std::string& reason) {
      auto* r = new Report{kind, remote, reason};
      const napi_status s = tsfn_.NonBlockingCall(r, [](Napi::Env env, Napi::Function fn, Report* raw) {
        std::unique_ptr<Report> rep(raw);
        if (env == nullptr) return;
        fn.Call({Napi::String::New(env, KindName(rep->kind)), Napi::String::New(env, rep->remote),
                 Napi::String::New(env, rep->reason)});
      });
      if (s != napi_ok) {
        delete r;
        dropped_.fetch_add(1, std::memory_order_relaxed);
      }
    };
    try {
      terminator_ = std::make_unique<xks::tls::Terminator>(std::move(ctx), lo, co.dnsName, deliver);
    } catch (const std::system_error& e) {
      tsfn_.Release();
      Napi::Error err = Napi::Error::New(env, e.what());
      err.Set("code", Napi::String::New(env, ErrnoCode(e.code().value())));
      throw err;
    } catch (const std::exception& e) {
      tsfn_.Release();
      throw Napi::Error::New(env, e.what());
    }
    napi_add_env_cleanup_hook(env, &TerminatorWrap::Cleanup, this);
    hooked_ = true;
    env_ = env;
  }

  ~TerminatorWrap() override { Shutdown(); }

 private:
  static void Cleanup(void* self) {
    auto* t = static_cast<TerminatorWrap*>(self);
    t->hooked_ = false;  // Node removes a hook once it has run it
    t->Shutdown();
  }

  void Shutdown() {
    if (terminator_ == nullptr || closed_) return;
    closed_ = true;
    terminator_->Close();
    tsfn_.Release();
    if (hooked_) {
      napi_remove_env_cleanup_hook(env_, &TerminatorWrap::Cleanup, this);
      hooked_ = false;
    }
  }

  Napi::Value Port(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), terminator_->port()); }

  Napi::Value StopAccepting(const Napi::CallbackInfo& info) {
    if (!closed_) terminator_->StopAccepting();
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shutdown();
    return info.Env().Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const xks::tls::Stats s = terminator_->stats();
    Napi::Object o = Napi::Object::New(env);
    o.Set("open", Napi::Number::New(env, static_cast<double>(s.open)));
    o.Set("accepted", Napi::Number::New(env, static_cast<double>(s.accepted)));
    o.Set("served", Napi::Number::New(env, static_cast<double>(s.served)));
    o.Set("refused", Napi::Number::New(env, static_cast<double>(s.refused)));
    o.Set("timedOut", Napi::Number::New(env, static_cast<double>(s.timedOut)));
    o.Set("overLimit", Napi::Number::New(env, static_cast<double>(s.overLimit)));
    o.Set("silent", Napi::Number::New(env, static_cast<double>(s.silent)));
    o.Set("droppedReports", Napi::Number::New(env, static_cast<double>(dropped_.load(std::memory_order_relaxed))));
    return o;
  }

  std::unique_ptr<xks::tls::Terminator> terminator_;
  Napi::ThreadSafeFunction tsfn_;
  std::atomic<uint64_t> dropped_{0};
  napi_env env_ = nullptr;
  bool hooked_ = false;
  bool closed_ = false;
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // The same OpenSSL as node's, not only the same major version (one OpenSSL per process).
  const unsigned long runtime = OpenSSL_version_num();
  if ((runtime >> 20) != (static_cast<unsigned long>(OPENSSL_VERSION_NUMBER) >> 20)) {
    throw Napi::Error::New(env, std::string("xks_tls was built against OpenSSL headers ") + OPENSSL_VERSION_TEXT +
                                    " but node runs " + OpenSSL_version(OPENSSL_VERSION));
  }
  exports.Set("Terminator", TerminatorWrap::Define(env));
  exports.Set("openssl", Napi::String::New(env, OpenSSL_version(OPENSSL_VERSION)));
  return exports;
}

}  // namespace

NODE_API_MODULE(xks_tls, Init)
