// The mTLS terminator: listens on [server] ip:port, does the TLS handshake (a client certificate that
// fails verification gets a handshake_failure alert inside the handshake), then copies bytes both ways
// between the TLS connection and the HTTP server's Unix socket (after a PROXY protocol v2 header naming
// the client, with ListenOptions::proxyHeader). One thread owned by this object runs
// every socket (epoll, non-blocking); nothing here blocks the JS thread except Close(), which joins it.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "tls_context.h"

namespace xks::tls {

struct Keepalive {
  bool enabled = false;
  int idleSecs = 0;      // TCP_KEEPIDLE (0: the kernel's default)
  int intervalSecs = 0;  // TCP_KEEPINTVL (0: the kernel's default)
  int count = 0;         // TCP_KEEPCNT (0: the kernel's default)
};

struct ListenOptions {
  std::string host;  // an IPv4 or IPv6 address
  int port = 0;      // 0: any free port
  std::string upstreamPath;
  Keepalive keepalive;
  int handshakeTimeoutMs = 10000;
  int maxConnections = 1024;
  // First on each connection to the HTTP server, a PROXY protocol v2 header naming the client; a
  // client that sends one itself is closed (proxy_header.h). false: the bytes as they are.
  bool proxyHeader = false;
};

struct Stats {
  uint64_t open = 0;       // connections now (handshaking, served, closing)
  uint64_t accepted = 0;   // TCP connections accepted
  uint64_t served = 0;     // handshakes completed and wired to the HTTP server
  uint64_t refused = 0;    // refused in or right after the handshake, or for sending a PROXY header (each reported)
  uint64_t timedOut = 0;   // handshakes that did not finish within handshakeTimeoutMs
  uint64_t overLimit = 0;  // closed at once because maxConnections were open
  uint64_t silent = 0;     // closed before sending a byte (TCP health checks, port scans)
};

enum class EventKind {
  kRefused,        // a client refused in or right after the handshake (or over the connection limit, or
                   // closed for sending a PROXY header)
  kUpstreamError,  // an accepted client that could not be wired to the HTTP server
  kListenError,    // accept() failed for a reason other than a client going away
};

// Called on the terminator's thread; must not block (the addon queues it to JS).
using EventFn = std::function<void(EventKind kind, const std::string& remote, const std::string& reason)>;

class Terminator {
 public:
  // Binds and listens (errors throw std::system_error / std::runtime_error), then starts the thread.
  Terminator(SslCtxPtr ctx, ListenOptions o, std::string dnsName, EventFn onEvent);
  ~Terminator();
  Terminator(const Terminator&) = delete;
  Terminator& operator=(const Terminator&) = delete;

  int port() const { return port_; }
  // Closes the listening socket; open connections go on. Thread-safe, idempotent.
  void StopAccepting();
  // Stops accepting, sends close_notify on every open connection (best effort), closes everything
  // and joins the thread. Idempotent.
  void Close();
  Stats stats() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  std::thread thread_;
  int port_ = 0;
  bool closed_ = false;
};

}  // namespace xks::tls
