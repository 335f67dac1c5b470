#include "iv_check.h"

#include <cstring>

#include "ops.h"

namespace xks {

Status IvHistory::check(const std::string& label, const uint8_t* iv) {
  uint8_t any = 0;
  for (size_t i = 0; i < kGcmIvBytes; ++i) any |= iv[i];
  if (any == 0) return Status{CKR_OK, "C_Encrypt", kIvZero};
  std::array<uint8_t, kGcmIvBytes> now;
  std::memcpy(now.data(), iv, kGcmIvBytes);
  std::lock_guard<std::mutex> lk(mu_);
  auto [it, inserted] = last_.try_emplace(label, now);
  if (inserted) return Status{};
  if (it->second == now) return Status{CKR_OK, "C_Encrypt", kIvRepeated};
  it->second = now;
  return Status{};
}

void IvHistory::forget(const std::string& label) {
  std::lock_guard<std::mutex> lk(mu_);
  last_.erase(label);
}

Status selfTestIv(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, IvMode mode, IvHistory& ivs, OpenResult& r) {
  // A session object, never on the token: destroyed below, gone with the session anyway.
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE type = CKK_AES;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_ULONG len = 32;
  CK_ATTRIBUTE t[] = {
      {CKA_CLASS, &cls, sizeof cls}, {CKA_KEY_TYPE, &type, sizeof type}, {CKA_TOKEN, &no, 1},
      {CKA_SENSITIVE, &yes, 1},      {CKA_EXTRACTABLE, &no, 1},          {CKA_ENCRYPT, &yes, 1},
      {CKA_DECRYPT, &no, 1},         {CKA_VALUE_LEN, &len, sizeof len},
  };
  CK_MECHANISM mech{CKM_AES_KEY_GEN, nullptr, 0};
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  CK_RV rv = f->C_GenerateKey(s, &mech, t, sizeof t / sizeof t[0], &key);
  if (rv != CKR_OK) return Status{rv, "C_GenerateKey"};
  const std::string label;  // "" is never a request's (labels are 1..1024 bytes)
  CryptArgs probe;
  SecureBuffer out;
  probe.input.resize(32);
  std::memset(probe.input.data(), 0, 32);
  Status st;
  for (int i = 0; i < 2 && st.ok(); ++i) {
    bool dirty = false;
    st = encrypt(f, s, key, mode, ivs, label, probe, out, dirty);
  }
  f->C_DestroyObject(s, key);
  ivs.forget(label);
  probe.input.wipe();
  probe.aad.wipe();
  probe.iv.wipe();
  out.wipe();
  if (st.ok()) r.ivCheck = "passed";
  return st;
}

}  // namespace xks
