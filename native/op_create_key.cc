#include "ops.h"

#include <vector>

namespace xks {

Status createKey(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, const std::string& label, CreateKeyArgs& a, bool& dirty) {
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE type = a.hmac ? CKK_GENERIC_SECRET : CKK_AES;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_BBOOL enc = a.encrypt ? CK_TRUE : CK_FALSE;
  CK_BBOOL dec = a.decrypt ? CK_TRUE : CK_FALSE;
  CK_BBOOL wrap = a.wrap ? CK_TRUE : CK_FALSE;
  CK_BBOOL unwrap = a.unwrap ? CK_TRUE : CK_FALSE;
  CK_ULONG valueLen = 32;
  std::vector<CK_ATTRIBUTE> t = {
      {CKA_CLASS, &cls, sizeof cls},
      {CKA_KEY_TYPE, &type, sizeof type},
      {CKA_TOKEN, &yes, 1},
      {CKA_PRIVATE, &yes, 1},
      {CKA_SENSITIVE, &yes, 1},
      {CKA_EXTRACTABLE, &no, 1},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
      {CKA_ENCRYPT, &enc, 1},
      {CKA_DECRYPT, &dec, 1},
      {CKA_WRAP, &wrap, 1},
      {CKA_UNWRAP, &unwrap, 1},
      {CKA_SIGN, a.hmac ? &yes : &no, 1},
      {CKA_VERIFY, a.hmac ? &yes : &no, 1},
  };
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  CK_RV rv;
  const char* fn;
  if (a.hasValue) {
    t.push_back({CKA_VALUE, a.value.data(), a.value.size()});
    rv = f->C_CreateObject(s, t.data(), t.size(), &h);
    fn = "C_CreateObject";
  } else {
    t.push_back({CKA_VALUE_LEN, &valueLen, sizeof valueLen});
    CK_MECHANISM mech{a.hmac ? CKM_GENERIC_SECRET_KEY_GEN : CKM_AES_KEY_GEN, nullptr, 0};
    rv = f->C_GenerateKey(s, &mech, t.data(), t.size(), &h);
    fn = "C_GenerateKey";
  }
  a.value.wipe();
  if (rv != CKR_OK) {
    dirty = true;
    return Status{rv, fn};
  }
  return Status{};
}

}  // namespace xks
