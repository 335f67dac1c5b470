#include "ops.h"

#include <cstring>

namespace xks {

Status encrypt(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k, IvMode mode, IvHistory& ivs,
               const std::string& label, CryptArgs& a, SecureBuffer& out, bool& dirty, IvBuffer* pool) {
  const bool appended = mode == IvMode::HsmAppended;
  a.iv.resize(kGcmIvBytes);
  CK_BYTE* iv = a.iv.data();
  if (mode == IvMode::Random && (pool == nullptr || !pool->take(iv))) {
    // Buffer empty (cold start, after a re-initialization, a burst): this request's own IV.
    CK_RV rv = f->C_GenerateRandom(s, iv, kGcmIvBytes);
    if (rv != CKR_OK) {
      dirty = true;
      return Status{rv, "C_GenerateRandom"};
    }
  } else if (mode != IvMode::Random) {
    std::memset(iv, 0, kGcmIvBytes);  // zero buffer for the HSM to fill (or unused)
  }
  CK_GCM_PARAMS params;
  std::memset(&params, 0, sizeof params);
  params.pIv = appended ? nullptr : iv;
  params.ulIvLen = appended ? 0 : kGcmIvBytes;
  params.ulIvBits = appended ? 0 : kGcmIvBytes * 8;
  params.pAAD = a.aad.empty() ? nullptr : a.aad.data();
  params.ulAADLen = a.aad.size();
  params.ulTagBits = kGcmTagBytes * 8;
  CK_MECHANISM mech{CKM_AES_GCM, &params, sizeof params};
  CK_RV rv = f->C_EncryptInit(s, &mech, k);
  if (rv != CKR_OK) {
    dirty = dirty || !keepsSession(rv, "C_EncryptInit");
    return Status{rv, "C_EncryptInit"};
  }
  const size_t pt = a.input.size();
  const size_t want = pt + kGcmTagBytes + (appended ? kGcmIvBytes : 0);
  // Room for ciphertext || tag || iv in every mode.
  out.resize(pt + kGcmTagBytes + kGcmIvBytes);
  CK_BYTE* in = pt != 0 ? a.input.data() : g_empty;
  CK_ULONG outLen = want;
  rv = f->C_Encrypt(s, in, pt, out.data(), &outLen);
  if (rv == CKR_BUFFER_TOO_SMALL) {
    // The operation is still active; the module told us the size it needs.
    if (outLen <= want || outLen > want + 4096) {
      dirty = true;
      return Status{rv, "C_Encrypt"};
    }
    out.resize(outLen + (appended ? 0 : kGcmIvBytes));
    rv = f->C_Encrypt(s, in, pt, out.data(), &outLen);
  }
  if (rv != CKR_OK) {
    dirty = dirty || !keepsSession(rv, "C_Encrypt");
    return Status{rv, "C_Encrypt"};
  }
  if (outLen != want) {
    dirty = true;
    return Status{CKR_OK, "C_Encrypt", kBadOutput};
  }
  if (!appended) {
    // hsm-zero-buffer: the module filled `iv`; random: we generated it.
    std::memcpy(out.data() + pt + kGcmTagBytes, iv, kGcmIvBytes);
  }
  out.resize(pt + kGcmTagBytes + kGcmIvBytes);
  if (mode != IvMode::Random) {
    Status st = ivs.check(label, out.data() + pt + kGcmTagBytes);
    if (!st.ok()) {
      dirty = true;  // an HSM that hands out such IVs is not trusted with this session either
      out.wipe();
      return st;
    }
  }
  return Status{};
}

Status verifyEncrypt(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k, std::atomic<uint32_t>& slack,
                     const CryptArgs& a, SecureBuffer& sealed, bool& dirty) {
  const size_t pt = a.input.size();
  const GcmInput in{sealed.data(), pt + kGcmTagBytes, sealed.data() + pt + kGcmTagBytes,
                    kGcmIvBytes,   a.aad.data(),      a.aad.size()};
  SecureBuffer check;  // wiped when it goes
  Status st = decryptGcm(f, s, k, slack, in, check, dirty);
  if (!st.ok()) {
    sealed.wipe();
    return st;
  }
  // The length is not secret (the ciphertext has it); the contents are compared in constant time.
  uint8_t diff = check.size() == pt ? 0 : 1;
  if (diff == 0) {
    const uint8_t* p = pt != 0 ? a.input.data() : g_empty;
    const uint8_t* c = check.data();
    for (size_t i = 0; i < pt; ++i) diff |= static_cast<uint8_t>(p[i] ^ c[i]);
  }
  check.wipe();
  if (diff != 0) {
    sealed.wipe();
    return Status{CKR_OK, "C_Decrypt", kCdivMismatch};
  }
  return Status{};
}

}  // namespace xks
