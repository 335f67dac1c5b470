// How the terminator tells the HTTP server who the TLS client is: a PROXY protocol v2 header
// (haproxy's proxy-protocol.txt, section 2.2) as the first bytes of each connection to the Unix
// socket. uWS (built with UWS_WITH_PROXY) reads it into that connection's own data, where
// res.getProxiedRemoteAddressAsText() finds it: nothing is looked up per request.
//
// uWS also reads such a header at the start of every later request on the connection and lets it
// replace the first, so a client could name any address by sending one inside its TLS stream.
// SignatureScan finds the header's 12-byte signature in the client's plaintext (across reads); the
// terminator then closes the connection before those bytes reach the HTTP server. No HTTP request
// holds the signature (it has a NUL byte, never valid in a header line or a JSON body).
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>

namespace xks::tls {

// 16 bytes of header, then at most 36 of IPv6 addresses and ports.
constexpr size_t kProxyHeaderMax = 16 + 36;

// Writes the header of a TCP connection from `peer` to `local` (as accept() and getsockname() give
// them; an IPv4-mapped IPv6 address stays IPv6, as uWS itself would see it) into `out`, which has
// room for kProxyHeaderMax bytes; returns its length. Any other family: the LOCAL command (no
// address: uWS then reports an empty one).
size_t WriteProxyHeader(const sockaddr_storage& peer, const sockaddr_storage& local, uint8_t* out);

class SignatureScan {
 public:
  // The next `n` bytes of the client's plaintext: true when the stream so far holds the signature.
  bool Feed(const char* p, size_t n);

 private:
  static constexpr size_t kCarry = 11;  // the signature's length - 1
  char carry_[kCarry] = {};             // the stream's last bytes (fewer at its start)
  size_t carried_ = 0;
};

}  // namespace xks::tls
