#include "iv_buffer.h"

#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "secure_buffer.h"

namespace xks {

IvBuffer::IvBuffer() {
  const long page = sysconf(_SC_PAGESIZE);
  const size_t ps = page > 0 ? static_cast<size_t>(page) : 4096;
  const size_t len = (sizeof(Area) + ps - 1) / ps * ps;
  failure_.bytes = len;
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    failure_.step = "mmap";
    failure_.error = errno;
    return;
  }
  auto failed = [&](const char* step, int error) {
    failure_.step = step;
    failure_.error = error;
    munmap(p, len);  // unlocks too
  };
  if (mlock(p, len) != 0) {
    failed("mlock", errno);
    return;
  }
#ifdef MADV_DONTDUMP
  if (madvise(p, len, MADV_DONTDUMP) != 0) {
    failed("madvise(MADV_DONTDUMP)", errno);
    return;
  }
#else
  failed("madvise(MADV_DONTDUMP)", 0);
  return;
#endif
#ifdef MADV_WIPEONFORK
  if (madvise(p, len, MADV_WIPEONFORK) != 0) {
    failed("madvise(MADV_WIPEONFORK)", errno);
    return;
  }
#else
  failed("madvise(MADV_WIPEONFORK)", 0);
  return;
#endif
  area_ = static_cast<Area*>(p);  // anonymous mappings start zeroed: count 0
  mapped_ = len;
  failure_ = Failure{};
}

IvBuffer::~IvBuffer() {
  if (area_ == nullptr) return;
  secureZero(area_, sizeof(Area));
  munmap(area_, mapped_);
}

bool IvBuffer::take(uint8_t* iv) {
  if (area_ == nullptr || level_.load(std::memory_order_relaxed) == 0) return false;
  std::lock_guard<std::mutex> lk(mu_);
  const uint32_t n = area_->count;
  if (n == 0) return false;
  uint8_t* src = area_->stock + (n - 1) * kGcmIvBytes;
  std::memcpy(iv, src, kGcmIvBytes);
  secureZero(src, kGcmIvBytes);
  area_->count = n - 1;
  level_.store(n - 1, std::memory_order_relaxed);
  return true;
}

bool IvBuffer::claimRefill() {
  if (area_ == nullptr || level_.load(std::memory_order_relaxed) >= kLowWater) return false;
  bool expected = false;
  return refilling_.compare_exchange_strong(expected, true, std::memory_order_acq_rel);
}

CK_RV IvBuffer::refill(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s) {
  uint64_t gen;
  {
    std::lock_guard<std::mutex> lk(mu_);
    gen = generation_;
  }
  const CK_RV rv = f->C_GenerateRandom(s, area_->staging, sizeof area_->staging);
  if (rv == CKR_OK) {
    std::lock_guard<std::mutex> lk(mu_);
    const uint32_t n = area_->count;
    if (gen == generation_ && n < kLowWater) {
      // n < kLowWater: the whole batch fits (kCapacity = kBatch + kLowWater).
      std::memcpy(area_->stock + n * kGcmIvBytes, area_->staging, sizeof area_->staging);
      area_->count = n + kBatch;
      level_.store(n + kBatch, std::memory_order_relaxed);
      primed_.store(true, std::memory_order_relaxed);
    }
  }
  secureZero(area_->staging, sizeof area_->staging);
  refilling_.store(false, std::memory_order_release);
  return rv;
}

void IvBuffer::wipe() {
  if (area_ == nullptr) return;
  std::lock_guard<std::mutex> lk(mu_);
  ++generation_;
  secureZero(area_->stock, sizeof area_->stock);
  area_->count = 0;
  level_.store(0, std::memory_order_relaxed);
  primed_.store(false, std::memory_order_relaxed);
}

}  // namespace xks
