// N-API surface of the audit trail's writer thread (build/Release/xks_audit.node), used only by
// src/audit/native.ts:
//   new AuditLog(options, onEvent(kind, epoch, seq, time, head, flag, text))   (the main thread)
//     id(), useFile(epoch, fd, seq, headHex, periodEndsUs), resume(epoch, line),
//     finish(epoch, line), requestEnd(), markBroken(), ref(), unref(), close()
//   new AuditChannel(logId, onWritten(ids: Uint32Array, count, ok))            (any event loop)
//     use(id, kmsRequestId, ..., client) -> 0 | 1 | 2, record(fields, id) -> boolean, kick(),
//     failed() -> boolean, close()
// Usually one AuditLog per process (one per proxy started in it); every event loop's channel
// hands its records to it directly.
#include <napi.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "log.h"

namespace {

using xks::audit::Event;
using xks::audit::Log;

std::mutex gMu;
std::map<uint32_t, std::weak_ptr<Log>> gLogs;  // the open logs by id, which channels attach to
uint32_t gNextId = 1;

const char* KindName(Event::Kind k) {
  switch (k) {
    case Event::kCheckpoint:
      return "checkpoint";
    case Event::kEnd:
      return "end";
    case Event::kEnded:
      return "ended";
    case Event::kFailed:
      return "failed";
    case Event::kText:
      return "text";
  }
  return "unknown";
}

double Num(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string("options.") + key + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

bool Bool(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsBoolean()) throw Napi::TypeError::New(o.Env(), std::string("options.") + key + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

uint32_t Epoch(const Napi::CallbackInfo& info) {
  if (!info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "epoch must be a number");
  return info[0].As<Napi::Number>().Uint32Value();
}

std::string LineArg(const Napi::Value& v) {
  if (v.IsNull() || v.IsUndefined()) return std::string();
  if (!v.IsString()) throw Napi::TypeError::New(v.Env(), "line must be a string or null");
  return v.As<Napi::String>().Utf8Value();
}

// A thread-safe function that keeps no event loop alive unless ref()'d.
napi_threadsafe_function MakeTsfn(Napi::Env env, Napi::Function fn, const char* name, void* context,
                                  napi_threadsafe_function_call_js call) {
  napi_threadsafe_function t = nullptr;
  napi_status s = napi_create_threadsafe_function(env, fn, nullptr, Napi::String::New(env, name), 0, 1, nullptr,
                                                  nullptr, context, call, &t);
  if (s != napi_ok) throw Napi::Error::New(env, "cannot create a thread-safe function");
  napi_unref_threadsafe_function(env, t);
  return t;
}

// ------------------------------------------------------------------ the control

class LogWrap : public Napi::ObjectWrap<LogWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "AuditLog",
                       {InstanceMethod<&LogWrap::UseFile>("useFile"), InstanceMethod<&LogWrap::Resume>("resume"),
                        InstanceMethod<&LogWrap::Finish>("finish"), InstanceMethod<&LogWrap::RequestEnd>("requestEnd"),
                        InstanceMethod<&LogWrap::MarkBroken>("markBroken"), InstanceMethod<&LogWrap::Ref>("ref"),
                        InstanceMethod<&LogWrap::Unref>("unref"), InstanceMethod<&LogWrap::Close>("close"),
                        InstanceMethod<&LogWrap::Id>("id")});
  }

  explicit LogWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<LogWrap>(info), env_(info.Env()) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction()) {
      throw Napi::TypeError::New(env, "new AuditLog(options, onEvent)");
    }
    Napi::Object o = info[0].As<Napi::Object>();
    xks::audit::Options opt;
    opt.durable = Bool(o, "durable");
    opt.writeMs = static_cast<int64_t>(Num(o, "writeMs"));
    opt.syncMs = static_cast<int64_t>(Num(o, "syncMs"));
    opt.checkpointEvery = static_cast<uint32_t>(Num(o, "checkpointEvery"));
    opt.checkpointSecs = static_cast<int64_t>(Num(o, "checkpointSecs"));
    opt.copyOut = Bool(o, "copyOut");
    Napi::Value inst = o.Get("instance");
    if (!inst.IsString()) throw Napi::TypeError::New(env, "options.instance must be a string");
    opt.instance = inst.As<Napi::String>().Utf8Value();
    // The control's clock (performance.timeOrigin + performance.now(), microseconds).
    opt.controlNowUs = static_cast<int64_t>(Num(o, "nowMicros"));
    if (opt.checkpointEvery == 0) throw Napi::RangeError::New(env, "options.checkpointEvery must be > 0");
    {
      tsfn_ = MakeTsfn(env, info[1].As<Napi::Function>(), "xks-audit-control", this, &LogWrap::CallJs);
      napi_threadsafe_function t = tsfn_;
      log_ = std::make_shared<Log>(opt, [t] { napi_call_threadsafe_function(t, nullptr, napi_tsfn_nonblocking); });
      std::lock_guard<std::mutex> l(gMu);
      id_ = gNextId++;
      gLogs[id_] = log_;
    }
    napi_add_env_cleanup_hook(env, &LogWrap::Cleanup, this);
    hooked_ = true;
  }

  ~LogWrap() override { Shutdown(); }

 private:
  static void Cleanup(void* self) {
    auto* w = static_cast<LogWrap*>(self);
    w->hooked_ = false;
    w->Shutdown();
  }

  void Shutdown() {
    if (log_ == nullptr) return;
    {
      std::lock_guard<std::mutex> l(gMu);
      gLogs.erase(id_);
    }
    log_->stop();
    log_.reset();
    napi_release_threadsafe_function(tsfn_, napi_tsfn_release);
    tsfn_ = nullptr;
    if (hooked_) {
      napi_remove_env_cleanup_hook(env_, &LogWrap::Cleanup, this);
      hooked_ = false;
    }
  }

  static void CallJs(napi_env env, napi_value fn, void* context, void* /*data*/) {
    if (env == nullptr) return;
    auto* self = static_cast<LogWrap*>(context);
    if (self->log_ == nullptr) return;
    Napi::Env e(env);
    Napi::HandleScope scope(e);
    Napi::Function f(env, fn);
    for (Event& ev : self->log_->takeEvents()) {
      try {
        f.Call({Napi::String::New(e, KindName(ev.kind)), Napi::Number::New(e, ev.epoch),
                Napi::Number::New(e, static_cast<double>(ev.seq)), Napi::String::New(e, ev.time),
                Napi::String::New(e, ev.head), Napi::Boolean::New(e, ev.needsCheckpoint),
                Napi::String::New(e, ev.text)});
      } catch (...) {
        // A throwing handler must not cross into Node from here.
      }
      if (self->log_ == nullptr) return;  // the handler closed the log
    }
  }

  Log& log(const Napi::CallbackInfo& info) {
    if (log_ == nullptr) throw Napi::Error::New(info.Env(), "the audit log is closed");
    return *log_;
  }

  Napi::Value UseFile(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 5 || !info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsString() || !info[4].IsNumber()) {
      throw Napi::TypeError::New(env, "useFile(epoch, fd, seq, headHex, periodEndsUs)");
    }
    const std::string hex = info[3].As<Napi::String>().Utf8Value();
    Log::Head head{};
    if (hex.size() != 64) throw Napi::RangeError::New(env, "headHex must be 64 hex digits");
    for (size_t i = 0; i < 32; i++) {
      auto nib = [&](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        throw Napi::RangeError::New(env, "headHex must be lowercase hex");
      };
      head[i] = static_cast<uint8_t>(nib(hex[2 * i]) << 4 | nib(hex[2 * i + 1]));
    }
    const double ends = info[4].As<Napi::Number>().DoubleValue();
    log(info).useFile(Epoch(info), info[1].As<Napi::Number>().Int32Value(),
                      static_cast<uint64_t>(info[2].As<Napi::Number>().DoubleValue()), head,
                      ends >= 9.2e18 ? INT64_MAX : static_cast<int64_t>(ends));
    return env.Undefined();
  }

  Napi::Value Resume(const Napi::CallbackInfo& info) {
    log(info).resume(Epoch(info), LineArg(info[1]));
    return info.Env().Undefined();
  }

  Napi::Value Finish(const Napi::CallbackInfo& info) {
    log(info).finish(Epoch(info), LineArg(info[1]));
    return info.Env().Undefined();
  }

  Napi::Value RequestEnd(const Napi::CallbackInfo& info) {
    log(info).requestEnd();
    return info.Env().Undefined();
  }

  Napi::Value MarkBroken(const Napi::CallbackInfo& info) {
    log(info).markBroken();
    return info.Env().Undefined();
  }

  // While the control awaits an answer of the thread (a clean stop), the event loop must stay up.
  Napi::Value Ref(const Napi::CallbackInfo& info) {
    if (tsfn_ != nullptr) napi_ref_threadsafe_function(info.Env(), tsfn_);
    return info.Env().Undefined();
  }

  Napi::Value Unref(const Napi::CallbackInfo& info) {
    if (tsfn_ != nullptr) napi_unref_threadsafe_function(info.Env(), tsfn_);
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shutdown();
    return info.Env().Undefined();
  }

  // What a channel (on any event loop of the process) attaches to.
  Napi::Value Id(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), id_); }

  napi_env env_;
  std::shared_ptr<Log> log_;
  uint32_t id_ = 0;
  napi_threadsafe_function tsfn_ = nullptr;
  bool hooked_ = false;
};

// ------------------------------------------------------------------ one event loop's channel

class ChannelWrap : public Napi::ObjectWrap<ChannelWrap>, public xks::audit::Channel {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "AuditChannel",
                       {InstanceMethod<&ChannelWrap::Use>("use"), InstanceMethod<&ChannelWrap::Record>("record"),
                        InstanceMethod<&ChannelWrap::Kick>("kick"), InstanceMethod<&ChannelWrap::Failed>("failed"),
                        InstanceMethod<&ChannelWrap::Close>("close")});
  }

  explicit ChannelWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ChannelWrap>(info), env_(info.Env()) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsFunction()) {
      throw Napi::TypeError::New(env, "new AuditChannel(logId, onWritten)");
    }
    {
      std::lock_guard<std::mutex> l(gMu);
      auto it = gLogs.find(info[0].As<Napi::Number>().Uint32Value());
      if (it != gLogs.end()) log_ = it->second.lock();
    }
    if (log_ == nullptr) throw Napi::Error::New(env, "that audit log is not open in this process");
    tsfn_ = MakeTsfn(env, info[1].As<Napi::Function>(), "xks-audit-written", this, &ChannelWrap::CallJs);
    // One array for every call of onWritten (its first `count` entries): no allocation per group.
    ids_ = Napi::Persistent(Napi::Uint32Array::New(env, kIdsPerCall));
    id_ = log_->attach(this);
    napi_add_env_cleanup_hook(env, &ChannelWrap::Cleanup, this);
    hooked_ = true;
  }

  ~ChannelWrap() override { Shutdown(); }

  // The writer thread (under the log's channel lock, so never after Shutdown's detach).
  void written(const std::vector<uint32_t>& ids, bool ok) override {
    bool first;
    {
      std::lock_guard<std::mutex> l(mu_);
      std::vector<uint32_t>& to = ok ? ok_ : lost_;
      first = ok_.empty() && lost_.empty();
      to.insert(to.end(), ids.begin(), ids.end());
    }
    if (first) napi_call_threadsafe_function(tsfn_, nullptr, napi_tsfn_nonblocking);
  }

 private:
  static void Cleanup(void* self) {
    auto* c = static_cast<ChannelWrap*>(self);
    c->hooked_ = false;
    c->Shutdown();
  }

  void Shutdown() {
    if (log_ == nullptr) return;
    log_->detach(id_);
    log_.reset();
    napi_release_threadsafe_function(tsfn_, napi_tsfn_release);
    tsfn_ = nullptr;
    if (hooked_) {
      napi_remove_env_cleanup_hook(env_, &ChannelWrap::Cleanup, this);
      hooked_ = false;
    }
  }

  static void CallJs(napi_env env, napi_value fn, void* context, void* /*data*/) {
    if (env == nullptr) return;
    auto* self = static_cast<ChannelWrap*>(context);
    std::vector<uint32_t> ok;
    std::vector<uint32_t> lost;
    {
      std::lock_guard<std::mutex> l(self->mu_);
      ok.swap(self->ok_);
      lost.swap(self->lost_);
    }
    Napi::Env e(env);
    Napi::HandleScope scope(e);
    Napi::Function f(env, fn);
    if (self->ids_.IsEmpty()) return;
    Napi::Uint32Array a = self->ids_.Value();
    for (int pass = 0; pass < 2; pass++) {
      const std::vector<uint32_t>& ids = pass == 0 ? ok : lost;
      for (size_t from = 0; from < ids.size(); from += kIdsPerCall) {
        const size_t n = std::min(kIdsPerCall, ids.size() - from);
        std::copy(ids.begin() + static_cast<std::ptrdiff_t>(from), ids.begin() + static_cast<std::ptrdiff_t>(from + n),
                  a.Data());
        try {
          f.Call({a, Napi::Number::New(e, static_cast<double>(n)), Napi::Boolean::New(e, pass == 0)});
        } catch (...) {
          // A throwing handler must not cross into Node from here.
        }
      }
    }
  }

  // The fields of a use record in their order (src/audit/record.ts, useFields): use()'s arguments
  // after the id.
  enum class Kind { kOptional, kString, kNumber, kAddress };
  struct Field {
    std::string_view key;
    Kind kind;
  };
  static constexpr Field kUseFields[] = {
      {"kmsRequestId", Kind::kOptional},  {"kmsOperation", Kind::kOptional},  {"awsPrincipalArn", Kind::kOptional},
      {"kmsKeyArn", Kind::kOptional},     {"kmsViaService", Kind::kOptional}, {"awsSourceVpc", Kind::kOptional},
      {"awsSourceVpce", Kind::kOptional}, {"prefix", Kind::kString},          {"keyId", Kind::kString},
      {"operation", Kind::kString},       {"outcome", Kind::kString},         {"status", Kind::kNumber},
      {"micros", Kind::kNumber},          {"accessKeyId", Kind::kOptional},   {"client", Kind::kAddress},
  };
  static constexpr size_t kUseArgs = 1 + std::size(kUseFields);
  static constexpr int32_t kRefused = 0;
  static constexpr int32_t kQueued = 1;
  static constexpr int32_t kNotPlain = 2;

  // Printable ASCII but '"' and '\\': JSON.stringify only adds the quotes (record.ts, PLAIN).
  static bool Plain(const char* p, size_t n) {
    for (size_t i = 0; i < n; i++) {
      const auto c = static_cast<unsigned char>(p[i]);
      if (c < 0x20 || c > 0x7e || c == '"' || c == '\\') return false;
    }
    return true;
  }

  // Copies the string `v` as UTF-8 to `room(...)` of the scratch, in full; false when it is not a
  // string. napi writes at most `bufsize - 1` bytes and never half a character, so a copy within 4
  // bytes of the end may be cut short: then it measures and copies again.
  bool CopyString(napi_env env, napi_value v, size_t headroom, char** to, size_t* len) {
    const size_t left = scratch_.cap - scratch_.len;
    const size_t room = left > 256 + headroom ? left - headroom : 256;
    *to = scratch_.room(room + headroom) + headroom / 2;
    if (napi_get_value_string_utf8(env, v, *to, room, len) != napi_ok) return false;
    if (*len + 4 >= room) {
      napi_get_value_string_utf8(env, v, nullptr, 0, len);
      *to = scratch_.room(*len + 1 + headroom) + headroom / 2;
      napi_get_value_string_utf8(env, v, *to, *len + 1, len);
    }
    return true;
  }

  // Appends the string `v` quoted; false when it is not a string (`*isString` false) or not plain.
  bool PutString(napi_env env, napi_value v, bool* isString) {
    char* to = nullptr;
    size_t len = 0;
    *isString = CopyString(env, v, 2, &to, &len);  // room for the quotes around it
    if (!*isString) return false;
    to[-1] = '"';
    to[len] = '"';
    scratch_.len += len + 2;
    return Plain(to, len);
  }

  // Appends the bytes of an ArrayBuffer (an address's text as uWS gives it) quoted; false when not plain.
  bool PutBytes(napi_env env, napi_value v) {
    void* data = nullptr;
    size_t len = 0;
    if (napi_get_arraybuffer_info(env, v, &data, &len) != napi_ok) return false;
    const char* p = static_cast<const char*>(data);
    if (!Plain(p, len)) return false;
    scratch_.put("\"", 1);
    scratch_.put(p, len);
    scratch_.put("\"", 1);
    return true;
  }

  // Appends an integer as JSON.stringify writes it; false for any other number.
  bool PutInteger(napi_env env, napi_value v) {
    double d = 0;
    if (napi_get_value_double(env, v, &d) != napi_ok) return false;
    if (!std::isfinite(d) || d != std::trunc(d) || std::fabs(d) > 9007199254740991.0) return false;
    char buf[24];
    const auto r = std::to_chars(buf, buf + sizeof buf, static_cast<int64_t>(d));
    scratch_.put(buf, static_cast<size_t>(r.ptr - buf));
    return true;
  }

  // use(id, kmsRequestId, ..., client): a use record's fields (kUseFields; an optional one may be
  // undefined, client is a string or an ArrayBuffer of its text) made into its JSON fragment here,
  // the bytes useFields() gives, and queued as record() does. kNotPlain: a string needs JSON's
  // escapes (or a value is not as expected): nothing is queued, the caller uses record(useFields()).
  // No JavaScript string is built for a record on this path.
  Napi::Value Use(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < kUseArgs || !info[0].IsNumber()) throw Napi::TypeError::New(env, "use(id, ...fields)");
    if (log_ == nullptr) return Napi::Number::New(env, kRefused);
    scratch_.len = 0;
    for (size_t i = 0; i < std::size(kUseFields); i++) {
      const Field& f = kUseFields[i];
      napi_value v = info[i + 1];
      const size_t at = scratch_.len;
      if (at > 0) scratch_.put(",", 1);  // after the first field written
      scratch_.put("\"", 1);
      scratch_.put(f.key.data(), f.key.size());
      scratch_.put("\":", 2);
      bool ok;
      if (f.kind == Kind::kNumber) {
        ok = PutInteger(env, v);
      } else if (f.kind == Kind::kAddress && info[i + 1].IsArrayBuffer()) {
        ok = PutBytes(env, v);
      } else {
        bool isString = false;
        ok = PutString(env, v, &isString);
        if (!isString && f.kind == Kind::kOptional && info[i + 1].IsUndefined()) {
          scratch_.len = at;  // absent: left out
          continue;
        }
      }
      if (!ok) return Napi::Number::New(env, kNotPlain);
    }
    const bool queued = log_->record(id_, info[0].As<Napi::Number>().Uint32Value(), scratch_.p.get(), scratch_.len);
    return Napi::Number::New(env, queued ? kQueued : kRefused);
  }

  // record(fields, id): the fields' UTF-8 go straight into the log's inbox (no wait on the disk).
  Napi::Value Record(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsString() || !info[1].IsNumber()) {
      throw Napi::TypeError::New(env, "record(fields, id)");
    }
    if (log_ == nullptr) return Napi::Boolean::New(env, false);
    scratch_.len = 0;
    char* to = nullptr;
    size_t len = 0;
    CopyString(env, info[0], 0, &to, &len);
    const bool ok = log_->record(id_, info[1].As<Napi::Number>().Uint32Value(), to, len);
    return Napi::Boolean::New(env, ok);
  }

  Napi::Value Kick(const Napi::CallbackInfo& info) {
    if (log_ != nullptr) log_->kick();
    return info.Env().Undefined();
  }

  Napi::Value Failed(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), log_ == nullptr || log_->broken());
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shutdown();
    return info.Env().Undefined();
  }

  static constexpr size_t kScratch = 8192;
  static constexpr size_t kIdsPerCall = 4096;

  napi_env env_;
  std::shared_ptr<Log> log_;
  uint32_t id_ = 0;
  napi_threadsafe_function tsfn_ = nullptr;
  bool hooked_ = false;
  std::mutex mu_;
  std::vector<uint32_t> ok_;
  std::vector<uint32_t> lost_;
  // A record's bytes on their way to the inbox: room() grows it (keeping what is in it), never shrinks.
  struct Scratch {
    std::unique_ptr<char[]> p;
    size_t cap = 0;
    size_t len = 0;
    char* room(size_t n) {
      if (len + n > cap) {
        const size_t c = std::max(len + n, std::max(cap * 2, kScratch));
        auto q = std::make_unique<char[]>(c);
        if (len > 0) std::copy(p.get(), p.get() + len, q.get());
        p = std::move(q);
        cap = c;
      }
      return p.get() + len;
    }
    void put(const char* s, size_t n) {
      std::copy(s, s + n, room(n));
      len += n;
    }
  };
  Scratch scratch_;
  Napi::Reference<Napi::Uint32Array> ids_;
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("AuditLog", LogWrap::Define(env));
  exports.Set("AuditChannel", ChannelWrap::Define(env));
  return exports;
}

}  // namespace

NODE_API_MODULE(xks_audit, Init)
