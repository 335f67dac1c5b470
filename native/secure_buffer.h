// A growable byte buffer that never hands memory back to the allocator without
// wiping it first. Job buffers (plaintext, key values, decrypted data) live in these
// and are wiped after every use; the capacity is kept so recycled jobs do not churn
// the heap.
#pragma once

#include <string.h>  // explicit_bzero (glibc >= 2.25)

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace xks {

inline void secureZero(void* p, size_t n) {
  if (p != nullptr && n != 0) explicit_bzero(p, n);
}

class SecureBuffer {
 public:
  SecureBuffer() = default;
  SecureBuffer(const SecureBuffer&) = delete;
  SecureBuffer& operator=(const SecureBuffer&) = delete;
  ~SecureBuffer() { release(); }

  uint8_t* data() { return p_; }
  const uint8_t* data() const { return p_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  // Grows (wiping the old block) and sets the logical size; contents up to the old
  // size are preserved.
  void resize(size_t n) {
    if (n > cap_) {
      size_t nc = cap_ < 64 ? 64 : cap_;
      while (nc < n) nc *= 2;
      auto* np = static_cast<uint8_t*>(std::malloc(nc));
      if (np == nullptr) throw std::bad_alloc();
      if (size_ != 0) memcpy(np, p_, size_);
      secureZero(p_, dirty_);
      std::free(p_);
      p_ = np;
      cap_ = nc;
      dirty_ = size_;
    }
    size_ = n;
    if (n > dirty_) dirty_ = n;
  }

  void assign(const uint8_t* src, size_t n) {
    resize(n);
    if (n != 0) memcpy(p_, src, n);
  }

  // Zeroes every byte written since the last wipe and empties the buffer (keeps capacity).
  void wipe() {
    secureZero(p_, dirty_);
    dirty_ = 0;
    size_ = 0;
  }

  void release() {
    secureZero(p_, dirty_);
    std::free(p_);
    p_ = nullptr;
    size_ = cap_ = dirty_ = 0;
  }

 private:
  uint8_t* p_ = nullptr;
  size_t size_ = 0;
  size_t cap_ = 0;
  size_t dirty_ = 0;  // high-water mark of bytes that may hold data
};

}  // namespace xks
