// The PKCS#11 calls of each operation, one file each (op_*.cc). Each runs in a leased,
// logged-in session `s` (token info: on the slot) under the context lock, with the key
// handle the key cache resolved; `dirty` set: a PKCS#11 error left the session suspect.
#pragma once

#include <p11-kit/pkcs11.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "engine_config.h"
#include "iv_check.h"
#include "job.h"
#include "secure_buffer.h"
#include "status.h"

namespace xks {

// AES-256-GCM: out = ciphertext || tag || iv; the IV generated (C_GenerateRandom) or the
// HSM's, checked with `ivs` in the HSM-generated modes.
Status encrypt(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k, IvMode mode, IvHistory& ivs,
               const std::string& label, CryptArgs& a, SecureBuffer& out, bool& dirty);
// AES-256-GCM: out = plaintext. `slack`: extra output room the module asked for before.
Status decrypt(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k, std::atomic<uint32_t>& slack,
               CryptArgs& a, SecureBuffer& out, bool& dirty);
Status keyInfo(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k, KeyInfoResult& r, bool& dirty);
Status tokenInfo(CK_FUNCTION_LIST_PTR f, CK_SLOT_ID slot, TokenInfoResult& r);
Status random(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, size_t n, SecureBuffer& out, bool& dirty);
// A token AES key labelled `label`: imported (a.value, wiped here) or generated.
Status createKey(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, const std::string& label, CreateKeyArgs& a, bool& dirty);

}  // namespace xks
