#include "status.h"

#include <cstring>

namespace xks {

CK_BYTE g_empty[1] = {0};

bool sessionFatal(CK_RV rv) {
  return rv == CKR_DEVICE_ERROR || rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT ||
         rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED || rv == CKR_CRYPTOKI_NOT_INITIALIZED;
}

bool deviceFatal(CK_RV rv) {
  return rv == CKR_DEVICE_ERROR || rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT ||
         rv == CKR_CRYPTOKI_NOT_INITIALIZED;
}

// The session goes back to the pool, as the Rust proxy keeps it (handlers/mod.rs,
// before_bubbling_failure). No operation is left active: an *Init failure starts none, and a
// C_Encrypt / C_Decrypt call that fails other than with CKR_BUFFER_TOO_SMALL ends the
// operation (as PKCS#11 defines those calls; test/fault-data.test.ts checks that SoftHSM2's
// sessions decrypt on after 200 tag mismatches). A CKR_GENERAL_ERROR counts only from
// C_Decrypt, where SoftHSM2 reports a tag mismatch with it.
bool keepsSession(CK_RV rv, const char* fn) {
  switch (rv) {
    case CKR_KEY_FUNCTION_NOT_PERMITTED:
    case CKR_ENCRYPTED_DATA_INVALID:
    case CKR_ENCRYPTED_DATA_LEN_RANGE:
    case CKR_DATA_INVALID:
    case CKR_DATA_LEN_RANGE:
    case kAeadDecryptFailed:
      return true;
    case CKR_GENERAL_ERROR:
      return fn != nullptr && std::strcmp(fn, "C_Decrypt") == 0;
    default:
      return false;
  }
}

// open() then succeeds with the engine not ready, and calls retry the initialization
// (README, "Recovery"). Wrong PINs, bad arguments, missing functions stop start-up.
bool transientAtStart(CK_RV rv) {
  switch (rv) {
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_REMOVED:
    case CKR_DEVICE_MEMORY:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_TOKEN_NOT_RECOGNIZED:
    case CKR_GENERAL_ERROR:
    case CKR_FUNCTION_FAILED:
    case CKR_SESSION_COUNT:
    case CKR_CRYPTOKI_NOT_INITIALIZED:
      return true;
    default:
      return false;
  }
}

}  // namespace xks
