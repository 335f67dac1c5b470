#include "names.h"
#include "ops.h"

namespace xks {

Status readKeyAttrs(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k, KeyAttrs& out, bool& dirty) {
  CK_KEY_TYPE type = CKK_VENDOR_DEFINED;
  CK_ULONG valueLen = 0;
  CK_BBOOL flags[6] = {CK_FALSE, CK_FALSE, CK_FALSE, CK_FALSE, CK_FALSE, CK_FALSE};
  CK_ATTRIBUTE attrs[] = {
      {CKA_KEY_TYPE, &type, sizeof type}, {CKA_VALUE_LEN, &valueLen, sizeof valueLen},
      {CKA_ENCRYPT, &flags[0], 1},        {CKA_DECRYPT, &flags[1], 1},
      {CKA_SIGN, &flags[2], 1},           {CKA_VERIFY, &flags[3], 1},
      {CKA_WRAP, &flags[4], 1},           {CKA_UNWRAP, &flags[5], 1},
  };
  const CK_ULONG n = sizeof attrs / sizeof attrs[0];
  CK_RV rv = f->C_GetAttributeValue(s, k, attrs, n);
  // Missing or sensitive attributes are reported per attribute; the rest are filled.
  if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE) {
    dirty = true;
    return Status{rv, "C_GetAttributeValue"};
  }
  auto present = [&](size_t i) { return attrs[i].ulValueLen != CK_UNAVAILABLE_INFORMATION; };
  auto flag = [&](size_t i) { return present(i) && flags[i - 2] == CK_TRUE; };
  out = KeyAttrs{};
  out.typeKnown = present(0);
  out.type = present(0) ? type : CKK_VENDOR_DEFINED;
  out.valueLen = present(1) ? valueLen : 0;
  out.encrypt = flag(2);
  out.decrypt = flag(3);
  out.sign = flag(4);
  out.verify = flag(5);
  out.wrap = flag(6);
  out.unwrap = flag(7);
  return Status{};
}

Status keyInfo(const KeyAttrs& a, KeyInfoResult& r) {
  if (!a.typeKnown) return Status{CKR_ATTRIBUTE_TYPE_INVALID, "C_GetAttributeValue"};
  r.keyType = ckkName(a.type);
  r.bits = a.valueLen * 8;
  r.encrypt = a.encrypt;
  r.decrypt = a.decrypt;
  r.sign = a.sign;
  r.verify = a.verify;
  r.wrap = a.wrap;
  r.unwrap = a.unwrap;
  return Status{};
}

}  // namespace xks
