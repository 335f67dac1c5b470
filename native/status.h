// What a PKCS#11 call sequence ended with, the XKS_* codes the engine reports besides
// PKCS#11 return values, and the classes of return values the engine acts on.
#pragma once

#include <p11-kit/pkcs11.h>

#include <chrono>
#include <cstdint>

namespace xks {

using Clock = std::chrono::steady_clock;

constexpr const char* kTimeout = "XKS_TIMEOUT";
constexpr const char* kPoolExhausted = "XKS_POOL_EXHAUSTED";
constexpr const char* kKeyNotFound = "XKS_KEY_NOT_FOUND";
constexpr const char* kKeyAmbiguous = "XKS_KEY_AMBIGUOUS";
constexpr const char* kBadOutput = "XKS_BAD_OUTPUT";
constexpr const char* kKeySpec = "XKS_KEY_SPEC";            // not an AES-256 key: never used for XKS crypto
constexpr const char* kIvZero = "XKS_IV_ZERO";              // the HSM handed back an all-zero IV
constexpr const char* kIvRepeated = "XKS_IV_REPEATED";      // ... the label's previous IV again
constexpr const char* kCdivMismatch = "XKS_CDIV_MISMATCH";  // the verifying decrypt gave other bytes
constexpr CK_RV kAeadDecryptFailed = 0x42UL;                // CKR_AEAD_DECRYPT_FAILED (PKCS#11 3.0)

struct Status {
  CK_RV rv = CKR_OK;
  const char* fn = nullptr;
  const char* xks = nullptr;
  bool ok() const { return rv == CKR_OK && xks == nullptr; }
};

// Non-null pointer for zero-length inputs (a NULL data pointer means something else
// to several PKCS#11 functions).
extern CK_BYTE g_empty[1];

// Codes after which a session (or every session) cannot be trusted.
bool sessionFatal(CK_RV rv);
// Codes that concern the device rather than one session: the idle sessions are probed.
bool deviceFatal(CK_RV rv);
// Failures that concern the request's data or the key's permissions, never the session.
bool keepsSession(CK_RV rv, const char* fn);
// Start-up failures that mean "the HSM is down or unreachable now", not "this configuration
// cannot work".
bool transientAtStart(CK_RV rv);

inline int64_t nanos(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

}  // namespace xks
