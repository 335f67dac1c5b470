#include "ops.h"

#include "names.h"

namespace xks {

Status keyInfo(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k, KeyInfoResult& r, bool& dirty) {
  CK_KEY_TYPE type = 0;
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
  if (!present(0)) return Status{CKR_ATTRIBUTE_TYPE_INVALID, "C_GetAttributeValue"};
  r.keyType = ckkName(type);
  r.bits = present(1) ? valueLen * 8 : 0;
  auto flag = [&](size_t i) { return present(i) && flags[i - 2] == CK_TRUE; };
  r.encrypt = flag(2);
  r.decrypt = flag(3);
  r.sign = flag(4);
  r.verify = flag(5);
  r.wrap = flag(6);
  r.unwrap = flag(7);
  return Status{};
}

}  // namespace xks
