#include "proxy_header.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstddef>
#include <cstring>

namespace xks::tls {

namespace {

constexpr uint8_t kSignature[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
constexpr size_t kNul = 4;               // the signature's only NUL byte
constexpr uint8_t kProxyCommand = 0x21;  // version 2, PROXY
constexpr uint8_t kLocalCommand = 0x20;  // version 2, LOCAL
constexpr uint8_t kTcp4 = 0x11;
constexpr uint8_t kTcp6 = 0x21;

void PutU16(uint8_t* at, uint16_t networkOrder) { std::memcpy(at, &networkOrder, 2); }

bool MatchesAt(const char* start) { return std::memcmp(start, kSignature, sizeof kSignature) == 0; }

}  // namespace

size_t WriteProxyHeader(const sockaddr_storage& peer, const sockaddr_storage& local, uint8_t* out) {
  std::memcpy(out, kSignature, sizeof kSignature);
  uint8_t* body = out + 16;
  size_t len = 0;
  if (peer.ss_family == AF_INET && local.ss_family == AF_INET) {
    const auto& p = reinterpret_cast<const sockaddr_in&>(peer);
    const auto& l = reinterpret_cast<const sockaddr_in&>(local);
    out[12] = kProxyCommand;
    out[13] = kTcp4;
    std::memcpy(body, &p.sin_addr, 4);
    std::memcpy(body + 4, &l.sin_addr, 4);
    PutU16(body + 8, p.sin_port);
    PutU16(body + 10, l.sin_port);
    len = 12;
  } else if (peer.ss_family == AF_INET6 && local.ss_family == AF_INET6) {
    const auto& p = reinterpret_cast<const sockaddr_in6&>(peer);
    const auto& l = reinterpret_cast<const sockaddr_in6&>(local);
    out[12] = kProxyCommand;
    out[13] = kTcp6;
    std::memcpy(body, &p.sin6_addr, 16);
    std::memcpy(body + 16, &l.sin6_addr, 16);
    PutU16(body + 32, p.sin6_port);
    PutU16(body + 34, l.sin6_port);
    len = 36;
  } else {
    out[12] = kLocalCommand;
    out[13] = 0;
  }
  PutU16(out + 14, htons(static_cast<uint16_t>(len)));
  return 16 + len;
}

bool SignatureScan::Feed(const char* p, size_t n) {
  if (n == 0) return false;
  // A signature across the previous bytes and these: it ends within the first kCarry bytes here.
  char joint[2 * kCarry];
  const size_t head = std::min(n, kCarry);
  std::memcpy(joint, carry_, carried_);
  std::memcpy(joint + carried_, p, head);
  const size_t jointLen = carried_ + head;
  for (size_t i = 0; i + sizeof kSignature <= jointLen; ++i) {
    if (joint[i + kNul] == 0 && MatchesAt(joint + i)) return true;
  }
  // Within these bytes: only at a NUL (memchr is fast; HTTP and JSON have none).
  const char* end = p + n;
  for (const char* z = static_cast<const char*>(std::memchr(p, 0, n)); z != nullptr;
       z = static_cast<const char*>(std::memchr(z + 1, 0, static_cast<size_t>(end - z - 1)))) {
    const bool fits =
        z - p >= static_cast<std::ptrdiff_t>(kNul) && end - z >= static_cast<std::ptrdiff_t>(sizeof kSignature - kNul);
    if (fits && MatchesAt(z - kNul)) return true;
  }
  // Keep the stream's last kCarry bytes.
  if (n >= kCarry) {
    std::memcpy(carry_, end - kCarry, kCarry);
    carried_ = kCarry;
  } else {
    const size_t keep = std::min(jointLen, kCarry);
    std::memmove(carry_, joint + jointLen - keep, keep);
    carried_ = keep;
  }
  return false;
}

}  // namespace xks::tls
