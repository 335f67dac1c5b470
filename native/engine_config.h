// An engine's configuration (what the addon's constructor options become).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace xks {

enum class IvMode : uint8_t { Random, HsmAppended, HsmZeroBuffer };

constexpr size_t kGcmIvBytes = 12;
constexpr size_t kGcmTagBytes = 16;

struct EngineConfig {
  std::string modulePath;
  uint32_t poolMaxSize = 1;
  uint32_t poolTimeoutMs = 0;
  bool eagerClose = false;
  uint32_t threads = 1;
  // 0: `threads` threads serve. Otherwise `threads` is a ceiling and the engine adapts how many
  // serve (the rest park) from what its calls cost: about `adaptCores` while the calls keep a
  // CPU busy, more while they block (a network HSM), see Workers::adapt().
  uint32_t adaptCores = 0;
  IvMode ivMode = IvMode::Random;
  // Deadline of every job, from submission (0: none). Overrunning jobs settle with XKS_TIMEOUT.
  uint32_t opTimeoutMs = 0;
  // Encrypt and decrypt with a session-object copy of each token key, made inside the HSM by
  // C_CopyObject (see key_cache.cc); the token key is looked up again every keyCheckMs and the
  // copy dropped when it is gone or changed.
  bool keyCopies = false;
  uint32_t keyCheckMs = 1000;
  // After the HSM refused a session (CKR_SESSION_COUNT) the pool keeps to the sessions it has
  // for this long, then tries to grow again (sessions.h).
  uint32_t sessionRegrowMs = 60000;
};

}  // namespace xks
