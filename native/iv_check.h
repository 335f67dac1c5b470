// Trust in HSM-generated IVs: the IV of every successful encrypt in an HSM-generated IV mode
// is checked (never all zero, never the label's previous one in this engine), and open()
// tests the mode first with a temporary key.
#pragma once

#include <p11-kit/pkcs11.h>

#include <array>
#include <mutex>
#include <string>
#include <unordered_map>

#include "engine_config.h"
#include "job.h"
#include "status.h"

namespace xks {

class IvHistory {
 public:
  // XKS_IV_ZERO, XKS_IV_REPEATED, or ok (and remembered as the label's last IV).
  Status check(const std::string& label, const uint8_t* iv);
  void forget(const std::string& label);

 private:
  std::mutex mu_;
  std::unordered_map<std::string, std::array<uint8_t, kGcmIvBytes>> last_;
};

// HSM-generated IV modes: two encrypts with a temporary session key; an IV the HSM did not
// generate fails open (the mode cannot work); a key the HSM refuses to make skips the test.
Status selfTestIv(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, IvMode mode, IvHistory& ivs, OpenResult& r);

}  // namespace xks
