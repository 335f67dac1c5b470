#include "ops.h"

#include <cstring>

namespace xks {

Status decryptGcm(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k, std::atomic<uint32_t>& slack,
                  const GcmInput& in, SecureBuffer& out, bool& dirty) {
  CK_GCM_PARAMS params;
  std::memset(&params, 0, sizeof params);
  params.pIv = const_cast<CK_BYTE*>(in.iv);
  params.ulIvLen = in.ivLen;
  params.ulIvBits = in.ivLen * 8;
  params.pAAD = in.aadLen == 0 ? nullptr : const_cast<CK_BYTE*>(in.aad);
  params.ulAADLen = in.aadLen;
  params.ulTagBits = kGcmTagBytes * 8;
  CK_MECHANISM mech{CKM_AES_GCM, &params, sizeof params};
  CK_RV rv = f->C_DecryptInit(s, &mech, k);
  if (rv != CKR_OK) {
    dirty = dirty || !keepsSession(rv, "C_DecryptInit");
    return Status{rv, "C_DecryptInit"};
  }
  const size_t inLen = in.len;  // ciphertext || tag
  const size_t pt = inLen - kGcmTagBytes;
  CK_BYTE* data = const_cast<CK_BYTE*>(in.data);
  // Exactly the plaintext length, plus whatever slack this module asked for before.
  size_t cap = pt + slack.load(std::memory_order_relaxed);
  out.resize(cap == 0 ? 1 : cap);  // never hand the module a NULL output pointer
  CK_ULONG outLen = cap;
  rv = f->C_Decrypt(s, data, inLen, out.data(), &outLen);
  if (rv == CKR_BUFFER_TOO_SMALL) {
    if (outLen <= cap || outLen > inLen + 4096) {
      dirty = true;
      return Status{rv, "C_Decrypt"};
    }
    slack.store(static_cast<uint32_t>(outLen - pt), std::memory_order_relaxed);
    out.resize(outLen);
    rv = f->C_Decrypt(s, data, inLen, out.data(), &outLen);
  }
  if (rv != CKR_OK) {
    dirty = dirty || !keepsSession(rv, "C_Decrypt");
    out.wipe();
    return Status{rv, "C_Decrypt"};
  }
  out.resize(outLen);
  return Status{};
}

Status decrypt(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k, std::atomic<uint32_t>& slack,
               CryptArgs& a, SecureBuffer& out, bool& dirty) {
  const GcmInput in{a.input.data(), a.input.size(), a.iv.data(), a.iv.size(), a.aad.data(), a.aad.size()};
  return decryptGcm(f, s, k, slack, in, out, dirty);
}

}  // namespace xks
