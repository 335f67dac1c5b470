// The function list and slot an engine calls. Written by open, re-initialization and
// shutdown (ModuleLink), read by every call sequence, all under the context lock.
#pragma once

#include <p11-kit/pkcs11.h>

namespace xks {

struct Token {
  CK_FUNCTION_LIST_PTR f = nullptr;
  CK_SLOT_ID slot = 0;
};

}  // namespace xks
