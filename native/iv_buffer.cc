#include "iv_buffer.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "secure_buffer.h"

namespace xks {

IvBuffer::IvBuffer() {
  const long page = sysconf(_SC_PAGESIZE);
  const size_t ps = page > 0 ? static_cast<size_t>(page) : 4096;
  const size_t len = (sizeof(Area) + ps - 1) / ps * ps;
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return;
  bool ok = mlock(p, len) == 0;
#ifdef MADV_DONTDUMP
  ok = ok && madvise(p, len, MADV_DONTDUMP) == 0;
#else
  ok = false;
#endif
#ifdef MADV_WIPEONFORK
  ok = ok && madvise(p, len, MADV_WIPEONFORK) == 0;
#else
  ok = false;
#endif
  if (!ok) {
    munmap(p, len);  // unlocks too
    return;
  }
  area_ = static_cast<Area*>(p);  // anonymous mappings start zeroed: count 0
  mapped_ = len;
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
}

}  // namespace xks
