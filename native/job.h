// One request to the engine: the header every job has (queue link, deadline, deadline
// hand-off, outcome) and the payload of its operation.
//
// Owned by the JS thread except between submit and completion, when exactly one engine
// thread owns it. Recycled through the addon's free list; the buffers keep their capacity
// (a payload is replaced only when the next job is of another kind) and are wiped after
// every use.
//
// Deadline hand-off of a running job that overran: the watchdog marks the job timedOut
// and pushes it to the completion stack while the stuck worker still owns its buffers.
// The JS thread rejects the promise and sets kJsSeen; the worker, when its call returns,
// sets kWorkerDone. Whichever comes second disposes of the job (the worker by pushing it
// again, the JS thread by recycling it).
#pragma once

#include <p11-kit/pkcs11.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <variant>

#include "secure_buffer.h"

namespace xks {

enum class Op : uint8_t { Open, Close, Encrypt, Decrypt, KeyInfo, TokenInfo, Random, CreateKey, Hmac };

// Encrypt and Decrypt.
struct CryptArgs {
  SecureBuffer input;  // plaintext | ciphertext || tag
  SecureBuffer aad;
  SecureBuffer iv;  // decrypt: the request's; encrypt: the one used (generated or the HSM's)
  // Encrypt with CDIV: the new ciphertext is decrypted in the same job and compared with the
  // plaintext; output only when it matched. Set by the submitter for every Encrypt.
  bool verify = false;
};

struct RandomArgs {
  size_t length = 0;
};

struct CreateKeyArgs {
  SecureBuffer value;  // when hasValue: the key to import
  bool hasValue = false, encrypt = false, decrypt = false, wrap = false, unwrap = false;
  bool hmac = false;  // a CKK_GENERIC_SECRET key for CKM_SHA256_HMAC (sign, verify) instead of AES
};

constexpr size_t kHmacBytes = 32;  // HMAC-SHA256

// HMAC-SHA256 over `data` (not secret: audit checkpoint messages): sign fills `mac`; verify
// checks `mac` and sets `valid`.
struct HmacArgs {
  SecureBuffer data;
  SecureBuffer mac;
  bool verify = false;
  bool valid = false;
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

// What open() found (besides failing): the module's state and the start-up checks.
struct OpenResult {
  bool ready = true;      // false: the HSM is down; calls fail fast until it returns
  CK_RV downRv = CKR_OK;  // why not ready
  const char* downFn = nullptr;
  bool serialized = false;   // the module refused OS locking: one PKCS#11 call at a time
  CK_RV lockingRv = CKR_OK;  // its answer to C_Initialize with CKF_OS_LOCKING_OK
  // HSM-generated IV modes: "passed", or "skipped" (the HSM would not make the temporary key;
  // ivCheckRv, ivCheckFn say why); nullptr in the random mode and when not ready.
  const char* ivCheck = nullptr;
  CK_RV ivCheckRv = CKR_OK;
  const char* ivCheckFn = nullptr;
  // Random-IV mode: the IV buffer is off (every Encrypt makes its own C_GenerateRandom) because
  // this step failed (IvBuffer::Failure); nullptr: it is in use, or another IV mode.
  const char* ivBufferStep = nullptr;
  int ivBufferErrno = 0;
  size_t ivBufferBytes = 0;
  bool memlockKnown = false;  // memlockLimit holds RLIMIT_MEMLOCK's soft limit (false: unlimited or unknown)
  uint64_t memlockLimit = 0;
};

// Inputs of Encrypt/Decrypt, Random, CreateKey, Hmac; results of KeyInfo, TokenInfo, Open.
using Payload = std::variant<std::monostate, CryptArgs, RandomArgs, CreateKeyArgs, KeyInfoResult, TokenInfoResult,
                             OpenResult, HmacArgs>;

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

  std::string label;  // the key's (Encrypt, Decrypt, KeyInfo, CreateKey)
  Payload payload;

  // results
  SecureBuffer output;  // ciphertext||tag||iv | plaintext | random bytes
  CK_RV rv = CKR_OK;
  const char* fn = nullptr;   // PKCS#11 function that failed
  const char* xks = nullptr;  // XKS_* code, when not a PKCS#11 failure
  std::string detail;         // extra non-secret text (dlerror)
  // Encrypt with CDIV: the worker is in (or failed in) the verifying decrypt, so a failure or
  // a timeout is the verification's. Written by the worker, read by the JS thread at a timeout.
  std::atomic<bool> verifying{false};

  // The payload as P: the one held (its buffers keep their capacity), or a new one. The
  // submitter sets the inputs through it; the engine thread reads them and writes results.
  template <class P>
  P& as() {
    if (P* p = std::get_if<P>(&payload)) return *p;
    return payload.template emplace<P>();
  }

  bool failed() const { return rv != CKR_OK || xks != nullptr; }
  void clearResult() {
    rv = CKR_OK;
    fn = nullptr;
    xks = nullptr;
    detail.clear();
    verifying.store(false, std::memory_order_relaxed);
  }
  // The secret input (plaintext, key value): wiped as soon as the operation is done with it.
  void wipeInput() {
    if (auto* c = std::get_if<CryptArgs>(&payload)) {
      c->input.wipe();
    } else if (auto* k = std::get_if<CreateKeyArgs>(&payload)) {
      k->value.wipe();
    }
  }
  void wipeAll() {
    if (auto* c = std::get_if<CryptArgs>(&payload)) {
      c->input.wipe();
      c->aad.wipe();
      c->iv.wipe();
    } else if (auto* k = std::get_if<CreateKeyArgs>(&payload)) {
      k->value.wipe();
    } else if (auto* h = std::get_if<HmacArgs>(&payload)) {
      h->data.wipe();
      h->mac.wipe();
    }
    output.wipe();
  }
};

}  // namespace xks
