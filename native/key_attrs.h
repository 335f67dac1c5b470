// What the HSM says about a token key: the attributes GetKeyMetadata reports and the AES-256
// check of Encrypt / Decrypt use. Read in one C_GetAttributeValue when the key cache resolves a
// label (and at its re-checks), then served from the cache (key_cache.h).
#pragma once

#include <p11-kit/pkcs11.h>

namespace xks {

struct KeyAttrs {
  bool typeKnown = false;  // CKA_KEY_TYPE was reported
  CK_KEY_TYPE type = CKK_VENDOR_DEFINED;
  CK_ULONG valueLen = 0;  // CKA_VALUE_LEN in bytes (0 when not reported)
  bool encrypt = false, decrypt = false, sign = false, verify = false, wrap = false, unwrap = false;

  // CKK_AES with CKA_VALUE_LEN 32: the only key XKS Encrypt / Decrypt use.
  bool aes256() const { return typeKnown && type == CKK_AES && valueLen == 32; }

  bool operator==(const KeyAttrs& o) const {
    return typeKnown == o.typeKnown && type == o.type && valueLen == o.valueLen && encrypt == o.encrypt &&
           decrypt == o.decrypt && sign == o.sign && verify == o.verify && wrap == o.wrap && unwrap == o.unwrap;
  }
  bool operator!=(const KeyAttrs& o) const { return !(*this == o); }
};

}  // namespace xks
