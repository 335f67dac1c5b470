#include "ops.h"

#include <cstring>

namespace xks {

namespace {

std::string trimmed(const unsigned char* p, size_t n) {
  while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\0')) --n;
  return std::string(reinterpret_cast<const char*>(p), n);
}

}  // namespace

Status tokenInfo(CK_FUNCTION_LIST_PTR f, CK_SLOT_ID slot, TokenInfoResult& r) {
  CK_TOKEN_INFO ti;
  std::memset(&ti, 0, sizeof ti);
  CK_RV rv = f->C_GetTokenInfo(slot, &ti);
  if (rv != CKR_OK) return Status{rv, "C_GetTokenInfo"};
  r.label = trimmed(ti.label, sizeof ti.label);
  r.manufacturerId = trimmed(ti.manufacturerID, sizeof ti.manufacturerID);
  r.model = trimmed(ti.model, sizeof ti.model);
  r.serialNumber = trimmed(ti.serialNumber, sizeof ti.serialNumber);
  r.hwMajor = ti.hardwareVersion.major;
  r.hwMinor = ti.hardwareVersion.minor;
  r.fwMajor = ti.firmwareVersion.major;
  r.fwMinor = ti.firmwareVersion.minor;
  return Status{};
}

}  // namespace xks
