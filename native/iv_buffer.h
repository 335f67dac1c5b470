// Random-IV mode: IVs taken from a batch of HSM randomness (one C_GenerateRandom for
// kBatch IVs) instead of one C_GenerateRandom per Encrypt. One per engine.
//
// - Each IV is handed out once: copied out and wiped from the buffer under a short mutex.
// - The memory is an anonymous mapping, mlock'ed (never swapped), excluded from core dumps
//   (MADV_DONTDUMP) and wiped in a forked child (MADV_WIPEONFORK; the count lives in the same
//   mapping, so a child sees an empty buffer). Without any of these the buffer is disabled and
//   every Encrypt generates its own IV, as before; failure() says which step failed (the
//   usual one: mlock under a low RLIMIT_MEMLOCK), for the start-up WARN and the engine's stats.
// - wipe() discards everything (re-initialization of the module, shutdown); a refill that
//   began before a wipe is discarded too.
// - A refill is claimed by one caller at a time when the stock falls below kLowWater; it runs
//   on the thread of an Encrypt that already holds a session, after that Encrypt's result went
//   to the JS thread (no request waits for it). Only the first refill after the buffer was made
//   or wiped runs before its Encrypt's result is delivered (see Core::runSessionJob). An empty
//   buffer never blocks anyone: take() fails and the caller generates its own IV.
#pragma once

#include <p11-kit/pkcs11.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>

#include "engine_config.h"

namespace xks {

class IvBuffer {
 public:
  static constexpr size_t kBatch = 256;    // IVs per C_GenerateRandom
  static constexpr size_t kLowWater = 64;  // a refill is due below this many
  static constexpr size_t kCapacity = kBatch + kLowWater;

  IvBuffer();
  ~IvBuffer();
  IvBuffer(const IvBuffer&) = delete;
  IvBuffer& operator=(const IvBuffer&) = delete;

  bool enabled() const { return area_ != nullptr; }
  // Why the buffer is disabled (nullptr: it is not).
  struct Failure {
    const char* step = nullptr;  // "mmap", "mlock", "madvise(MADV_DONTDUMP)", "madvise(MADV_WIPEONFORK)"
    int error = 0;               // its errno (0: the kernel lacks the flag)
    size_t bytes = 0;            // the mapping it needed
  };
  const Failure& failure() const { return failure_; }
  // Copies one IV to `iv` and wipes it from the buffer; false: empty (or disabled).
  bool take(uint8_t* iv);
  // True when a refill is due and the caller now owns it: it must call refill() next.
  bool claimRefill();
  // The claimed refill: one C_GenerateRandom of kBatch IVs in session s, added to the stock
  // unless a wipe happened meanwhile. Returns that call's code.
  CK_RV refill(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s);
  // A refill has succeeded since the buffer was made or last wiped (start, re-initialization).
  bool primed() const { return primed_.load(std::memory_order_relaxed); }
  // Gives a claimed refill up without making it (the next claim may make it).
  void abandonRefill() { refilling_.store(false, std::memory_order_release); }
  // Discards every IV (and any refill in progress).
  void wipe();

 private:
  struct Area {
    uint32_t count;  // IVs in stock
    uint8_t stock[kCapacity * kGcmIvBytes];
    uint8_t staging[kBatch * kGcmIvBytes];  // the refiller's only
  };

  Area* area_ = nullptr;
  size_t mapped_ = 0;
  Failure failure_;
  std::mutex mu_;
  uint64_t generation_ = 0;         // mu_; bumped by wipe()
  std::atomic<uint32_t> level_{0};  // a copy of area_->count for the lock-free check
  std::atomic<bool> refilling_{false};
  std::atomic<bool> primed_{false};  // written under mu_
};

}  // namespace xks
