#include "names.h"

#include <p11-kit/pkcs11x.h>

#include <string.h>  // strerrorname_np (glibc >= 2.32)

#include <cstdio>
#include <mutex>
#include <unordered_map>

namespace xks {
namespace {

struct Entry {
  CK_RV value;
  const char* name;
};

#define XKS_CKR(n) \
  { n, #n }

// Every CKR_ constant of the p11-kit header (PKCS#11 2.40), plus the PKCS#11 3.0
// return values it does not define yet (numeric values from the 3.0 standard).
const Entry kCkr[] = {
    XKS_CKR(CKR_OK),
    XKS_CKR(CKR_CANCEL),
    XKS_CKR(CKR_HOST_MEMORY),
    XKS_CKR(CKR_SLOT_ID_INVALID),
    XKS_CKR(CKR_GENERAL_ERROR),
    XKS_CKR(CKR_FUNCTION_FAILED),
    XKS_CKR(CKR_ARGUMENTS_BAD),
    XKS_CKR(CKR_NO_EVENT),
    XKS_CKR(CKR_NEED_TO_CREATE_THREADS),
    XKS_CKR(CKR_CANT_LOCK),
    XKS_CKR(CKR_ATTRIBUTE_READ_ONLY),
    XKS_CKR(CKR_ATTRIBUTE_SENSITIVE),
    XKS_CKR(CKR_ATTRIBUTE_TYPE_INVALID),
    XKS_CKR(CKR_ATTRIBUTE_VALUE_INVALID),
    XKS_CKR(CKR_ACTION_PROHIBITED),
    XKS_CKR(CKR_DATA_INVALID),
    XKS_CKR(CKR_DATA_LEN_RANGE),
    XKS_CKR(CKR_DEVICE_ERROR),
    XKS_CKR(CKR_DEVICE_MEMORY),
    XKS_CKR(CKR_DEVICE_REMOVED),
    XKS_CKR(CKR_ENCRYPTED_DATA_INVALID),
    XKS_CKR(CKR_ENCRYPTED_DATA_LEN_RANGE),
    {0x42UL, "CKR_AEAD_DECRYPT_FAILED"},
    XKS_CKR(CKR_FUNCTION_CANCELED),
    XKS_CKR(CKR_FUNCTION_NOT_PARALLEL),
    XKS_CKR(CKR_FUNCTION_NOT_SUPPORTED),
    XKS_CKR(CKR_KEY_HANDLE_INVALID),
    XKS_CKR(CKR_KEY_SIZE_RANGE),
    XKS_CKR(CKR_KEY_TYPE_INCONSISTENT),
    XKS_CKR(CKR_KEY_NOT_NEEDED),
    XKS_CKR(CKR_KEY_CHANGED),
    XKS_CKR(CKR_KEY_NEEDED),
    XKS_CKR(CKR_KEY_INDIGESTIBLE),
    XKS_CKR(CKR_KEY_FUNCTION_NOT_PERMITTED),
    XKS_CKR(CKR_KEY_NOT_WRAPPABLE),
    XKS_CKR(CKR_KEY_UNEXTRACTABLE),
    XKS_CKR(CKR_MECHANISM_INVALID),
    XKS_CKR(CKR_MECHANISM_PARAM_INVALID),
    XKS_CKR(CKR_OBJECT_HANDLE_INVALID),
    XKS_CKR(CKR_OPERATION_ACTIVE),
    XKS_CKR(CKR_OPERATION_NOT_INITIALIZED),
    XKS_CKR(CKR_PIN_INCORRECT),
    XKS_CKR(CKR_PIN_INVALID),
    XKS_CKR(CKR_PIN_LEN_RANGE),
    XKS_CKR(CKR_PIN_EXPIRED),
    XKS_CKR(CKR_PIN_LOCKED),
    XKS_CKR(CKR_SESSION_CLOSED),
    XKS_CKR(CKR_SESSION_COUNT),
    XKS_CKR(CKR_SESSION_HANDLE_INVALID),
    XKS_CKR(CKR_SESSION_PARALLEL_NOT_SUPPORTED),
    XKS_CKR(CKR_SESSION_READ_ONLY),
    XKS_CKR(CKR_SESSION_EXISTS),
    XKS_CKR(CKR_SESSION_READ_ONLY_EXISTS),
    XKS_CKR(CKR_SESSION_READ_WRITE_SO_EXISTS),
    XKS_CKR(CKR_SIGNATURE_INVALID),
    XKS_CKR(CKR_SIGNATURE_LEN_RANGE),
    XKS_CKR(CKR_TEMPLATE_INCOMPLETE),
    XKS_CKR(CKR_TEMPLATE_INCONSISTENT),
    XKS_CKR(CKR_TOKEN_NOT_PRESENT),
    XKS_CKR(CKR_TOKEN_NOT_RECOGNIZED),
    XKS_CKR(CKR_TOKEN_WRITE_PROTECTED),
    XKS_CKR(CKR_UNWRAPPING_KEY_HANDLE_INVALID),
    XKS_CKR(CKR_UNWRAPPING_KEY_SIZE_RANGE),
    XKS_CKR(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT),
    XKS_CKR(CKR_USER_ALREADY_LOGGED_IN),
    XKS_CKR(CKR_USER_NOT_LOGGED_IN),
    XKS_CKR(CKR_USER_PIN_NOT_INITIALIZED),
    XKS_CKR(CKR_USER_TYPE_INVALID),
    XKS_CKR(CKR_USER_ANOTHER_ALREADY_LOGGED_IN),
    XKS_CKR(CKR_USER_TOO_MANY_TYPES),
    XKS_CKR(CKR_WRAPPED_KEY_INVALID),
    XKS_CKR(CKR_WRAPPED_KEY_LEN_RANGE),
    XKS_CKR(CKR_WRAPPING_KEY_HANDLE_INVALID),
    XKS_CKR(CKR_WRAPPING_KEY_SIZE_RANGE),
    XKS_CKR(CKR_WRAPPING_KEY_TYPE_INCONSISTENT),
    XKS_CKR(CKR_RANDOM_SEED_NOT_SUPPORTED),
    XKS_CKR(CKR_RANDOM_NO_RNG),
    XKS_CKR(CKR_DOMAIN_PARAMS_INVALID),
    XKS_CKR(CKR_CURVE_NOT_SUPPORTED),
    XKS_CKR(CKR_BUFFER_TOO_SMALL),
    XKS_CKR(CKR_SAVED_STATE_INVALID),
    XKS_CKR(CKR_INFORMATION_SENSITIVE),
    XKS_CKR(CKR_STATE_UNSAVEABLE),
    XKS_CKR(CKR_CRYPTOKI_NOT_INITIALIZED),
    XKS_CKR(CKR_CRYPTOKI_ALREADY_INITIALIZED),
    XKS_CKR(CKR_MUTEX_BAD),
    XKS_CKR(CKR_MUTEX_NOT_LOCKED),
    XKS_CKR(CKR_NEW_PIN_MODE),
    XKS_CKR(CKR_NEXT_OTP),
    XKS_CKR(CKR_EXCEEDED_MAX_ITERATIONS),
    XKS_CKR(CKR_FIPS_SELF_TEST_FAILED),
    XKS_CKR(CKR_LIBRARY_LOAD_FAILED),
    XKS_CKR(CKR_PIN_TOO_WEAK),
    XKS_CKR(CKR_PUBLIC_KEY_INVALID),
    XKS_CKR(CKR_FUNCTION_REJECTED),
    {0x201UL, "CKR_TOKEN_RESOURCE_EXCEEDED"},
    {0x202UL, "CKR_OPERATION_CANCEL_FAILED"},
    {0x203UL, "CKR_KEY_EXHAUSTED"},
    {0x204UL, "CKR_PENDING"},
    {0x205UL, "CKR_SESSION_ASYNC_NOT_SUPPORTED"},
    {0x206UL, "CKR_SEED_RANDOM_REQUIRED"},
    {0x207UL, "CKR_OPERATION_NOT_VALIDATED"},
    {0x208UL, "CKR_TOKEN_NOT_INITIALIZED"},
    {0x209UL, "CKR_PARAMETER_SET_NOT_SUPPORTED"},
    XKS_CKR(CKR_VENDOR_DEFINED),
    XKS_CKR(CKR_NSS_CERTDB_FAILED),
    XKS_CKR(CKR_NSS_KEYDB_FAILED),
};

#undef XKS_CKR

#define XKS_CKK(n) \
  { CKK_##n, #n }

const Entry kCkk[] = {
    XKS_CKK(RSA),
    XKS_CKK(DSA),
    XKS_CKK(DH),
    XKS_CKK(EC),  // CKK_ECDSA is the same value
    XKS_CKK(X9_42_DH),
    XKS_CKK(KEA),
    XKS_CKK(GENERIC_SECRET),
    XKS_CKK(RC2),
    XKS_CKK(RC4),
    XKS_CKK(DES),
    XKS_CKK(DES2),
    XKS_CKK(DES3),
    XKS_CKK(CAST),
    XKS_CKK(CAST3),
    XKS_CKK(CAST128),
    XKS_CKK(RC5),
    XKS_CKK(IDEA),
    XKS_CKK(SKIPJACK),
    XKS_CKK(BATON),
    XKS_CKK(JUNIPER),
    XKS_CKK(CDMF),
    XKS_CKK(AES),
    XKS_CKK(BLOWFISH),
    XKS_CKK(TWOFISH),
    XKS_CKK(SECURID),
    XKS_CKK(HOTP),
    XKS_CKK(ACTI),
    XKS_CKK(CAMELLIA),
    XKS_CKK(ARIA),
    XKS_CKK(MD5_HMAC),
    XKS_CKK(SHA_1_HMAC),
    XKS_CKK(RIPEMD128_HMAC),
    XKS_CKK(RIPEMD160_HMAC),
    XKS_CKK(SHA256_HMAC),
    XKS_CKK(SHA384_HMAC),
    XKS_CKK(SHA512_HMAC),
    XKS_CKK(SHA224_HMAC),
    XKS_CKK(SEED),
    XKS_CKK(GOSTR3410),
    XKS_CKK(GOSTR3411),
    XKS_CKK(GOST28147),
    XKS_CKK(EC_EDWARDS),
    {0x41UL, "EC_MONTGOMERY"},
    {0x42UL, "HKDF"},
    XKS_CKK(VENDOR_DEFINED),
};

#undef XKS_CKK

// Built once (thread-safe static init); unknown values are formatted per call but
// interned so the returned pointer stays valid.
const std::unordered_map<CK_RV, const char*>& ckrMap() {
  static const std::unordered_map<CK_RV, const char*> m = [] {
    std::unordered_map<CK_RV, const char*> r;
    for (const auto& e : kCkr) r.emplace(e.value, e.name);
    return r;
  }();
  return m;
}

}  // namespace

const char* ckrName(CK_RV rv) {
  const auto& m = ckrMap();
  auto it = m.find(rv);
  if (it != m.end()) return it->second;
  static std::mutex mu;
  static std::unordered_map<CK_RV, std::string> unknown;
  std::lock_guard<std::mutex> lk(mu);
  auto u = unknown.find(rv);
  if (u == unknown.end()) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "CKR_0x%08lx", static_cast<unsigned long>(rv));
    u = unknown.emplace(rv, buf).first;
  }
  return u->second.c_str();
}

std::string ckkName(CK_KEY_TYPE type) {
  for (const auto& e : kCkk) {
    if (e.value == type) return e.name;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%lx", static_cast<unsigned long>(type));
  return buf;
}

std::string errnoName(int error) {
  if (error == 0) return "unsupported";
  const char* n = strerrorname_np(error);
  if (n != nullptr) return n;
  return "errno " + std::to_string(error);
}

}  // namespace xks
