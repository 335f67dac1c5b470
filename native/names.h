// PKCS#11 value -> name tables (written from the constants of <p11-kit/pkcs11.h>).
#pragma once

#include <p11-kit/pkcs11.h>

#include <string>

namespace xks {

// "CKR_ENCRYPTED_DATA_INVALID"; unknown values become "CKR_0x%08lx".
// The returned pointer stays valid for the life of the process.
const char* ckrName(CK_RV rv);

// Key type name without the CKK_ prefix ("AES", "GENERIC_SECRET", "DES3");
// unknown values become "0x%lx".
std::string ckkName(CK_KEY_TYPE type);

// "ENOMEM"; 0 (a flag the kernel lacks) becomes "unsupported", unknown values "errno <n>".
std::string errnoName(int error);

}  // namespace xks
