// Lock-free pool of PKCS#11 session handles.
//
// A fixed array of `capacity` slots and two Treiber stacks over it:
//   idle  - slots holding an open session nobody uses,
//   free  - slots holding no session.
// A slot in neither stack is owned by exactly one thread (a job using its session, or
// a thread opening a session into it). Stack heads are 64-bit words {ABA tag:32,
// index:32}; every successful CAS bumps the tag, so a slot popped and pushed back
// between a reader's load and CAS cannot be mistaken for the old head.
//
// Sessions are opened lazily: reserve() counts the new session in `open` with a CAS
// bounded by capacity (and by `limit`, the HSM's session cap when one was learned, see
// sessions.h) and then takes a free slot. Invariant: a slot goes back on the
// free stack before `open` is decremented, so (capacity - open) <= free slots at all
// times and the pop after a successful reservation cannot come up empty.
#pragma once

#include <p11-kit/pkcs11.h>

#include <atomic>
#include <cstdint>
#include <memory>

namespace xks {

constexpr size_t kCacheLine = 64;

class SessionPool {
 public:
  static constexpr uint32_t kNil = 0xffffffffu;

  // `capacity` sessions at most, plus up to `quarantineMax` quarantined ones (sessions
  // stuck in an overrunning PKCS#11 call, no longer counted against `capacity`).
  explicit SessionPool(uint32_t capacity, uint32_t quarantineMax = 0)
      : capacity_(capacity),
        quarantineMax_(quarantineMax),
        slots_(new Slot[capacity + quarantineMax]),
        limit_(capacity) {
    const uint32_t n = capacity + quarantineMax;
    // All slots start on the free stack: 0 -> 1 -> ... -> n-1.
    for (uint32_t i = 0; i < n; ++i) {
      slots_[i].next.store(i + 1 < n ? i + 1 : kNil, std::memory_order_relaxed);
      slots_[i].handle = CK_INVALID_HANDLE;
    }
    free_.word.store(pack(0, n ? 0 : kNil), std::memory_order_release);
    idle_.word.store(pack(0, kNil), std::memory_order_release);
  }

  SessionPool(const SessionPool&) = delete;
  SessionPool& operator=(const SessionPool&) = delete;

  uint32_t capacity() const { return capacity_; }
  // Sessions reserve() lets open: capacity, or less while the HSM refuses more (setLimit).
  uint32_t limit() const { return limit_.load(std::memory_order_relaxed); }
  void setLimit(uint32_t n) { limit_.store(n < capacity_ ? n : capacity_, std::memory_order_relaxed); }
  // setLimit(n) if the limit is still `expected` (else expected = the limit now, false).
  bool lowerLimit(uint32_t& expected, uint32_t n) {
    return limit_.compare_exchange_weak(expected, n < capacity_ ? n : capacity_, std::memory_order_relaxed);
  }
  uint32_t openCount() const { return open_.value.load(std::memory_order_acquire); }
  uint32_t idleCount() const { return idleCount_.value.load(std::memory_order_acquire); }
  uint32_t quarantinedCount() const { return quarantined_.value.load(std::memory_order_acquire); }

  CK_SESSION_HANDLE handle(uint32_t idx) const { return slots_[idx].handle; }
  void setHandle(uint32_t idx, CK_SESSION_HANDLE h) { slots_[idx].handle = h; }

  // Takes an idle session's slot.
  bool popIdle(uint32_t& idx) {
    if (!pop(idle_, idx)) return false;
    idleCount_.value.fetch_sub(1, std::memory_order_relaxed);
    return true;
  }

  // Returns a slot whose session is open and unused.
  void pushIdle(uint32_t idx) {
    push(idle_, idx);
    idleCount_.value.fetch_add(1, std::memory_order_relaxed);
  }

  // Reserves room for one more session (open < limit <= capacity) and a slot for it.
  bool reserve(uint32_t& idx) {
    uint32_t n = open_.value.load(std::memory_order_relaxed);
    do {
      if (n >= capacity_ || n >= limit_.load(std::memory_order_relaxed)) return false;
    } while (!open_.value.compare_exchange_weak(n, n + 1, std::memory_order_acq_rel, std::memory_order_relaxed));
    if (!pop(free_, idx)) {
      // Unreachable by the invariant above; fail rather than spin on a bug.
      open_.value.fetch_sub(1, std::memory_order_acq_rel);
      return false;
    }
    return true;
  }

  // Gives back a slot whose session was closed (or never opened).
  void unreserve(uint32_t idx) {
    slots_[idx].handle = CK_INVALID_HANDLE;
    push(free_, idx);
    open_.value.fetch_sub(1, std::memory_order_acq_rel);
  }

  // Moves one in-use session out of the `capacity` count into quarantine (its slot stays
  // with its owner). False when quarantineMax sessions are quarantined already.
  bool quarantine() {
    uint32_t q = quarantined_.value.load(std::memory_order_relaxed);
    do {
      if (q >= quarantineMax_) return false;
    } while (!quarantined_.value.compare_exchange_weak(q, q + 1, std::memory_order_acq_rel, std::memory_order_relaxed));
    open_.value.fetch_sub(1, std::memory_order_acq_rel);
    return true;
  }

  // Gives back the slot of a quarantined session that was closed.
  // Invariant kept: slots in use = open + quarantined <= capacity + quarantineMax, so
  // (capacity - open) <= free slots still holds.
  void unquarantine(uint32_t idx) {
    slots_[idx].handle = CK_INVALID_HANDLE;
    push(free_, idx);
    quarantined_.value.fetch_sub(1, std::memory_order_acq_rel);
  }

 private:
  struct alignas(kCacheLine) Slot {
    std::atomic<uint32_t> next{kNil};
    CK_SESSION_HANDLE handle = CK_INVALID_HANDLE;
  };
  struct alignas(kCacheLine) Head {
    std::atomic<uint64_t> word{0};
  };
  struct alignas(kCacheLine) Counter {
    std::atomic<uint32_t> value{0};
  };

  static uint64_t pack(uint32_t tag, uint32_t idx) { return (uint64_t{tag} << 32) | idx; }
  static uint32_t indexOf(uint64_t w) { return static_cast<uint32_t>(w); }
  static uint32_t tagOf(uint64_t w) { return static_cast<uint32_t>(w >> 32); }

  bool pop(Head& head, uint32_t& out) {
    uint64_t h = head.word.load(std::memory_order_acquire);
    for (;;) {
      uint32_t idx = indexOf(h);
      if (idx == kNil) return false;
      uint32_t next = slots_[idx].next.load(std::memory_order_relaxed);
      if (head.word.compare_exchange_weak(h, pack(tagOf(h) + 1, next), std::memory_order_acq_rel,
                                          std::memory_order_acquire)) {
        out = idx;
        return true;
      }
    }
  }

  void push(Head& head, uint32_t idx) {
    uint64_t h = head.word.load(std::memory_order_relaxed);
    for (;;) {
      slots_[idx].next.store(indexOf(h), std::memory_order_relaxed);
      if (head.word.compare_exchange_weak(h, pack(tagOf(h) + 1, idx), std::memory_order_release,
                                          std::memory_order_relaxed)) {
        return;
      }
    }
  }

  const uint32_t capacity_;
  const uint32_t quarantineMax_;
  std::unique_ptr<Slot[]> slots_;
  std::atomic<uint32_t> limit_;
  Head idle_;
  Head free_;
  Counter open_;
  Counter idleCount_;
  Counter quarantined_;
};

static_assert(std::atomic<uint64_t>::is_always_lock_free, "64-bit CAS must be lock-free");

}  // namespace xks
