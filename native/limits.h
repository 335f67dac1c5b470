// The bounds of the engine options that settings.toml feeds (one source of truth).
//
// addon.cc checks every Engine option against these, and exports them as the addon's `limits`
// object; src/config.ts reads that object to check [pkcs11], so a value `check-config` accepts
// never fails at engine construction.
#pragma once

#include <cstdint>

namespace xks {
namespace limits {

struct Range {
  const char* option;  // the Engine option (src/hsm/addon.ts EngineOptions)
  uint32_t min;
  uint32_t max;
};

// session_pool_max_size: sessions one engine holds.
constexpr Range kPoolMaxSize{"poolMaxSize", 1, 4096};
// session_pool_timeout_milli: a signed 32-bit ms count (24.8 days).
constexpr Range kPoolTimeoutMs{"poolTimeoutMs", 0, 0x7fffffff};
// worker_threads: HSM threads of one engine.
constexpr Range kThreads{"threads", 1, 256};
// operation_timeout_milli: deadline of every call (0 = none).
constexpr Range kOperationTimeoutMs{"operationTimeoutMs", 0, 3600000};
// session_key_check_milli: longest time between two checks of a key copy.
constexpr Range kKeyCheckMs{"keyCheckMs", 1, 3600000};

constexpr Range kAll[] = {kPoolMaxSize, kPoolTimeoutMs, kThreads, kOperationTimeoutMs, kKeyCheckMs};

}  // namespace limits
}  // namespace xks
