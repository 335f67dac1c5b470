#include "ops.h"

namespace xks {

Status random(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, size_t n, SecureBuffer& out, bool& dirty) {
  out.resize(n == 0 ? 1 : n);
  out.resize(n);
  if (n == 0) return Status{};
  CK_RV rv = f->C_GenerateRandom(s, out.data(), n);
  if (rv != CKR_OK) {
    dirty = true;
    return Status{rv, "C_GenerateRandom"};
  }
  return Status{};
}

}  // namespace xks
