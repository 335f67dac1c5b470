// HMAC-SHA256 in the HSM (the audit trail's checkpoints): C_Sign / C_Verify with
// CKM_SHA256_HMAC and a CKK_GENERIC_SECRET key. The key's type is read first, so an AES key
// with the same label is never used for it.
#include "ops.h"

namespace xks {

namespace {

constexpr const char* kHmacKeySpec = "XKS_HMAC_KEY_SPEC";

Status genericSecret(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k, bool& dirty) {
  CK_KEY_TYPE type = 0;
  CK_ATTRIBUTE a{CKA_KEY_TYPE, &type, sizeof type};
  CK_RV rv = f->C_GetAttributeValue(s, k, &a, 1);
  if (rv != CKR_OK) {
    dirty = dirty || !keepsSession(rv, "C_GetAttributeValue");
    return Status{rv, "C_GetAttributeValue"};
  }
  if (type != CKK_GENERIC_SECRET) return Status{CKR_OK, nullptr, kHmacKeySpec};
  return Status{};
}

}  // namespace

Status hmac(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k, HmacArgs& a, bool& dirty) {
  Status st = genericSecret(f, s, k, dirty);
  if (!st.ok()) return st;
  CK_MECHANISM mech{CKM_SHA256_HMAC, nullptr, 0};
  CK_BYTE* in = a.data.empty() ? g_empty : a.data.data();
  if (!a.verify) {
    CK_RV rv = f->C_SignInit(s, &mech, k);
    if (rv != CKR_OK) {
      dirty = dirty || !keepsSession(rv, "C_SignInit");
      return Status{rv, "C_SignInit"};
    }
    a.mac.resize(kHmacBytes);
    CK_ULONG len = kHmacBytes;
    rv = f->C_Sign(s, in, a.data.size(), a.mac.data(), &len);
    if (rv != CKR_OK) {
      dirty = dirty || !keepsSession(rv, "C_Sign");
      return Status{rv, "C_Sign"};
    }
    if (len != kHmacBytes) {
      dirty = true;
      return Status{CKR_OK, "C_Sign", kBadOutput};
    }
    return Status{};
  }
  CK_RV rv = f->C_VerifyInit(s, &mech, k);
  if (rv != CKR_OK) {
    dirty = dirty || !keepsSession(rv, "C_VerifyInit");
    return Status{rv, "C_VerifyInit"};
  }
  rv = f->C_Verify(s, in, a.data.size(), a.mac.data(), a.mac.size());
  // A wrong MAC (or one of the wrong length) is an answer, not a failure.
  if (rv == CKR_SIGNATURE_INVALID || rv == CKR_SIGNATURE_LEN_RANGE) {
    a.valid = false;
    return Status{};
  }
  if (rv != CKR_OK) {
    dirty = dirty || !keepsSession(rv, "C_Verify");
    return Status{rv, "C_Verify"};
  }
  a.valid = true;
  return Status{};
}

}  // namespace xks
