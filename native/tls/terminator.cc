#include "terminator.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <queue>
#include <stdexcept>
#include <system_error>
#include <unordered_map>
#include <vector>

#include "proxy_header.h"
#include "verify_names.h"

namespace xks::tls {

namespace {

using Clock = std::chrono::steady_clock;

// One TLS record of plaintext per direction per connection.
constexpr size_t kBufSize = 16 * 1024;
// After refusing a client: read and discard what it still sends for this long (and at most this much)
// before closing, so that a client already sending its request reads the alert instead of a reset.
constexpr auto kLinger = std::chrono::milliseconds(1000);
constexpr size_t kLingerMaxBytes = 64 * 1024;
// accept() failing for lack of descriptors or memory: retry after this pause.
constexpr auto kAcceptPause = std::chrono::milliseconds(100);
// At most one report per this interval for connections closed over the limit.
constexpr auto kOverLimitReportEvery = std::chrono::seconds(10);
constexpr int kAcceptBatch = 64;
// Rounds of copying one connection may do before the others get their turn.
constexpr int kPumpRounds = 32;

enum Tag : uint64_t { kListener = 0, kWake = 1, kClient = 2, kUpstream = 3 };
uint64_t Key(uint64_t id, Tag t) { return (id << 2) | t; }

struct Buffer {
  std::unique_ptr<char[]> bytes{new char[kBufSize]};
  size_t off = 0;
  size_t len = 0;
  char* head() { return bytes.get() + off; }
  char* tail() { return bytes.get() + off + len; }
  size_t space() {
    if (len == 0) off = 0;
    if (off > 0 && off + len == kBufSize) {
      // SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER lets a pending SSL_write's bytes move.
      std::memmove(bytes.get(), head(), len);
      off = 0;
    }
    return kBufSize - off - len;
  }
  void consume(size_t n) {
    off += n;
    len -= n;
    if (len == 0) off = 0;
  }
};

enum class State { kHandshake, kConnecting, kOpen, kLinger };

struct Conn {
  uint64_t id = 0;
  int cfd = -1;
  int ufd = -1;
  SSL* ssl = nullptr;
  State state = State::kHandshake;
  std::string remote;
  sockaddr_storage peer{};  // as accept() gave it: the PROXY header names it to the HTTP server
  SignatureScan scan;       // the client's plaintext must never hold a PROXY header of its own
  VerifyFailure failure;
  Clock::time_point deadline;
  std::unique_ptr<Buffer> c2u;  // plaintext from the client, to the HTTP server
  std::unique_ptr<Buffer> u2c;  // the HTTP server's bytes, to the client
  bool clientEof = false;       // the client sent close_notify or closed
  bool upstreamEof = false;     // the HTTP server closed
  bool upstreamShut = false;    // shutdown(SHUT_WR) sent to the HTTP server
  bool upstreamRegistered = false;
  bool clientRegistered = false;
  uint32_t clientEvents = 0;
  uint32_t upstreamEvents = 0;
  size_t lingered = 0;
};

std::string Errno(int e) { return std::strerror(e); }

// close_notify, or (SSL_OP_IGNORE_UNEXPECTED_EOF) a TCP FIN without one.
bool IsEof(int err) {
  return err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && errno == 0);
}

std::string Address(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (ss.ss_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(ss).sin_addr, buf, sizeof buf);
  } else if (ss.ss_family == AF_INET6) {
    const auto& a6 = reinterpret_cast<const sockaddr_in6&>(ss);
    if (IN6_IS_ADDR_V4MAPPED(&a6.sin6_addr)) {
      inet_ntop(AF_INET, &a6.sin6_addr.s6_addr[12], buf, sizeof buf);
    } else {
      inet_ntop(AF_INET6, &a6.sin6_addr, buf, sizeof buf);
    }
  }
  return buf;
}

}  // namespace

struct Terminator::Impl {
  SslCtxPtr ctx;
  ListenOptions o;
  std::string dnsName;
  EventFn onEvent;
  sockaddr_un upstream{};

  int lfd = -1;
  int epfd = -1;
  int wakefd = -1;
  std::atomic<bool> stopAccepting{false};
  std::atomic<bool> quit{false};
  bool listening = false;
  bool acceptPaused = false;
  Clock::time_point acceptPausedUntil;
  Clock::time_point lastOverLimitReport;
  uint64_t overLimitSinceReport = 0;

  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns;
  uint64_t nextId = 1;
  struct Timer {
    Clock::time_point at;
    uint64_t id;
    bool operator>(const Timer& t) const { return at > t.at; }
  };
  std::priority_queue<Timer, std::vector<Timer>, std::greater<Timer>> timers;
  std::vector<uint64_t> ready;  // connections that still had work when their turn ended

  std::atomic<uint64_t> nOpen{0}, nAccepted{0}, nServed{0}, nRefused{0}, nTimedOut{0}, nOverLimit{0}, nSilent{0};

  ~Impl() {
    for (auto& [id, c] : conns) {
      if (c->ssl) SSL_free(c->ssl);
      if (c->cfd >= 0) ::close(c->cfd);
      if (c->ufd >= 0) ::close(c->ufd);
    }
    if (lfd >= 0) ::close(lfd);
    if (wakefd >= 0) ::close(wakefd);
    if (epfd >= 0) ::close(epfd);
  }

  void Listen();
  void Run();
  int NextTimeoutMs();
  void RunTimers();
  void AcceptAll();
  void SetUpClientSocket(int fd);
  void OnEvent(Conn& c, Tag tag, uint32_t events);
  void Step(Conn& c);
  void Handshake(Conn& c);
  std::string HandshakeReason(Conn& c, int err);
  void Refuse(Conn& c, const std::string& reason, bool report);
  void ConnectUpstream(Conn& c);
  void Opened(Conn& c);
  void Pump(Conn& c);
  void Linger(Conn& c);
  void Destroy(Conn& c, bool closeNotify);
  void SetClientEvents(Conn& c, uint32_t ev);
  void SetUpstreamEvents(Conn& c, uint32_t ev);
  void CloseListener();
  void CloseAll();
};

void Terminator::Impl::Listen() {
  sockaddr_storage ss{};
  socklen_t len = 0;
  auto* a4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* a6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, o.host.c_str(), &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons(static_cast<uint16_t>(o.port));
    len = sizeof *a4;
  } else if (inet_pton(AF_INET6, o.host.c_str(), &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(static_cast<uint16_t>(o.port));
    len = sizeof *a6;
  } else {
    throw std::runtime_error("not an IPv4 or IPv6 address: " + o.host);
  }
  const std::string where = (ss.ss_family == AF_INET6 ? "[" + o.host + "]" : o.host) + ":" + std::to_string(o.port);
  lfd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (lfd < 0) throw std::system_error(errno, std::generic_category(), "socket");
  int one = 1;
  // SO_REUSEADDR only (a restart binds while old connections are in TIME_WAIT); never SO_REUSEPORT:
  // another process on this port is a start-up error.
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(lfd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    throw std::system_error(errno, std::generic_category(), "listen " + where);
  }
  if (::listen(lfd, 511) != 0) throw std::system_error(errno, std::generic_category(), "listen " + where);
  sockaddr_storage bound{};
  socklen_t blen = sizeof bound;
  getsockname(lfd, reinterpret_cast<sockaddr*>(&bound), &blen);
  o.port = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6&>(bound).sin6_port
                                             : reinterpret_cast<sockaddr_in&>(bound).sin_port);

  epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) throw std::system_error(errno, std::generic_category(), "epoll_create1");
  wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wakefd < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = Key(0, kWake);
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, wakefd, &ev) != 0)
    throw std::system_error(errno, std::generic_category(), "epoll_ctl");
  ev.data.u64 = Key(0, kListener);
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev) != 0)
    throw std::system_error(errno, std::generic_category(), "epoll_ctl");
  listening = true;
}

int Terminator::Impl::NextTimeoutMs() {
  if (!ready.empty()) return 0;
  Clock::time_point next = Clock::time_point::max();
  if (!timers.empty()) next = timers.top().at;
  if (acceptPaused && acceptPausedUntil < next) next = acceptPausedUntil;
  if (next == Clock::time_point::max()) return -1;
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now()).count() + 1;
  return ms < 0 ? 0 : static_cast<int>(ms > 60000 ? 60000 : ms);
}

void Terminator::Impl::Run() {
  epoll_event evs[128];
  while (!quit.load()) {
    int n = epoll_wait(epfd, evs, 128, NextTimeoutMs());
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < n; ++i) {
      const uint64_t key = evs[i].data.u64;
      const auto tag = static_cast<Tag>(key & 3);
      if (tag == kWake) {
        uint64_t v;
        while (::read(wakefd, &v, sizeof v) > 0) {
        }
        continue;
      }
      if (tag == kListener) {
        if (listening && !acceptPaused) AcceptAll();
        continue;
      }
      auto it = conns.find(key >> 2);
      if (it != conns.end()) OnEvent(*it->second, tag, evs[i].events);
    }
    if (!ready.empty()) {
      std::vector<uint64_t> again;
      again.swap(ready);
      for (uint64_t id : again) {
        auto it = conns.find(id);
        if (it != conns.end()) Step(*it->second);
      }
    }
    if (stopAccepting.load() && lfd >= 0) CloseListener();
    RunTimers();
  }
  CloseAll();
}

void Terminator::Impl::RunTimers() {
  const auto now = Clock::now();
  if (acceptPaused && now >= acceptPausedUntil && lfd >= 0) {
    acceptPaused = false;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = Key(0, kListener);
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
  }
  while (!timers.empty() && timers.top().at <= now) {
    const Timer t = timers.top();
    timers.pop();
    auto it = conns.find(t.id);
    if (it == conns.end()) continue;
    Conn& c = *it->second;
    if (c.deadline != t.at) continue;
    if (c.state == State::kHandshake || c.state == State::kConnecting) {
      nTimedOut.fetch_add(1, std::memory_order_relaxed);
      const bool spoke = c.ssl != nullptr && BIO_number_read(SSL_get_rbio(c.ssl)) > 0;
      if (spoke) {
        nRefused.fetch_add(1, std::memory_order_relaxed);
        onEvent(EventKind::kRefused, c.remote,
                "TLS handshake not finished within " + std::to_string(o.handshakeTimeoutMs) + " ms");
      }
      Destroy(c, false);
    } else if (c.state == State::kLinger) {
      Destroy(c, false);
    }
  }
}

void Terminator::Impl::SetUpClientSocket(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  const Keepalive& k = o.keepalive;
  if (!k.enabled) return;
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  if (k.idleSecs > 0) setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &k.idleSecs, sizeof k.idleSecs);
  if (k.intervalSecs > 0) setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &k.intervalSecs, sizeof k.intervalSecs);
  if (k.count > 0) setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &k.count, sizeof k.count);
}

void Terminator::Impl::AcceptAll() {
  for (int i = 0; i < kAcceptBatch; ++i) {
    sockaddr_storage ss{};
    socklen_t sl = sizeof ss;
    int fd = accept4(lfd, reinterpret_cast<sockaddr*>(&ss), &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      const int e = errno;
      if (e == EAGAIN || e == EWOULDBLOCK) return;
      if (e == EINTR || e == ECONNABORTED || e == EPROTO || e == EPERM) continue;
      if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
        // The pending connection stays queued; level-triggered epoll would spin on it.
        acceptPaused = true;
        acceptPausedUntil = Clock::now() + kAcceptPause;
        epoll_ctl(epfd, EPOLL_CTL_DEL, lfd, nullptr);
        onEvent(EventKind::kListenError, "", "accept: " + Errno(e));
        return;
      }
      onEvent(EventKind::kListenError, "", "accept: " + Errno(e));
      return;
    }
    nAccepted.fetch_add(1, std::memory_order_relaxed);
    if (conns.size() >= static_cast<size_t>(o.maxConnections)) {
      ::close(fd);
      nOverLimit.fetch_add(1, std::memory_order_relaxed);
      ++overLimitSinceReport;
      const auto now = Clock::now();
      if (now - lastOverLimitReport >= kOverLimitReportEvery) {
        lastOverLimitReport = now;
        onEvent(EventKind::kRefused, Address(ss),
                "connection limit reached (" + std::to_string(o.maxConnections) + " open; " +
                    std::to_string(overLimitSinceReport) + " closed since the last report)");
        overLimitSinceReport = 0;
      }
      continue;
    }
    SetUpClientSocket(fd);
    auto c = std::make_unique<Conn>();
    c->id = nextId++;
    c->cfd = fd;
    c->remote = Address(ss);
    c->peer = ss;
    c->ssl = SSL_new(ctx.get());
    if (c->ssl == nullptr || SSL_set_fd(c->ssl, fd) != 1) {
      ERR_clear_error();
      if (c->ssl) SSL_free(c->ssl);
      ::close(fd);
      onEvent(EventKind::kListenError, c->remote, "SSL_new failed");
      continue;
    }
    SSL_set_accept_state(c->ssl);
    AttachVerifyFailure(c->ssl, &c->failure);
    c->deadline = Clock::now() + std::chrono::milliseconds(o.handshakeTimeoutMs);
    timers.push(Timer{c->deadline, c->id});
    Conn& ref = *c;
    conns.emplace(c->id, std::move(c));
    nOpen.fetch_add(1, std::memory_order_relaxed);
    SetClientEvents(ref, EPOLLIN);
  }
}

void Terminator::Impl::OnEvent(Conn& c, Tag tag, uint32_t events) {
  if (tag == kClient && (events & (EPOLLERR | EPOLLHUP)) != 0) {
    // The client is gone both ways (reset, or closed after we shut down our side).
    const uint64_t id = c.id;
    Step(c);
    auto it = conns.find(id);
    if (it != conns.end()) Destroy(*it->second, false);
    return;
  }
  if (tag == kUpstream && (events & (EPOLLERR | EPOLLHUP)) != 0 && c.upstreamRegistered) {
    // The HTTP server closed: stop watching (the event would repeat); what it sent is still read.
    epoll_ctl(epfd, EPOLL_CTL_DEL, c.ufd, nullptr);
    c.upstreamRegistered = false;
    c.upstreamEvents = 0;
  }
  Step(c);
}

void Terminator::Impl::Step(Conn& c) {
  switch (c.state) {
    case State::kHandshake:
      Handshake(c);
      return;
    case State::kConnecting: {
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(c.ufd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        onEvent(EventKind::kUpstreamError, c.remote, "HTTP server socket: " + Errno(err));
        Destroy(c, true);
        return;
      }
      Opened(c);
      return;
    }
    case State::kOpen:
      Pump(c);
      return;
    case State::kLinger:
      Linger(c);
      return;
  }
}

void Terminator::Impl::Handshake(Conn& c) {
  ERR_clear_error();
  errno = 0;
  const int r = SSL_do_handshake(c.ssl);
  if (r == 1) {
    ConnectUpstream(c);
    return;
  }
  const int err = SSL_get_error(c.ssl, r);
  if (err == SSL_ERROR_WANT_READ) {
    SetClientEvents(c, EPOLLIN);
    return;
  }
  if (err == SSL_ERROR_WANT_WRITE) {
    SetClientEvents(c, EPOLLOUT);
    return;
  }
  const bool silent = BIO_number_read(SSL_get_rbio(c.ssl)) == 0;
  const std::string reason = HandshakeReason(c, err);
  ERR_clear_error();
  Refuse(c, reason, !silent);
}

std::string Terminator::Impl::HandshakeReason(Conn& c, int err) {
  if (c.failure.code == X509_V_ERR_HOSTNAME_MISMATCH) return "certificate is not valid for " + dnsName;
  if (c.failure.code != 0) return VerifyErrorName(c.failure.code);
  const unsigned long e = ERR_peek_error();
  if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
    return "no client certificate";
  }
  if (e == 0 || (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING)) {
    if (err == SSL_ERROR_SYSCALL && errno != 0) return "TLS handshake: " + Errno(errno);
    return "connection closed during the TLS handshake";
  }
  const char* why = ERR_reason_error_string(e);
  return std::string("TLS handshake: ") + (why != nullptr ? why : "error " + std::to_string(e));
}

void Terminator::Impl::Refuse(Conn& c, const std::string& reason, bool report) {
  if (report) {
    nRefused.fetch_add(1, std::memory_order_relaxed);
    onEvent(EventKind::kRefused, c.remote, reason);
  } else {
    nSilent.fetch_add(1, std::memory_order_relaxed);
  }
  // OpenSSL has written its alert. Send FIN after it and read what the client still sends (its
  // request, in TLS 1.3) before closing: closing with unread bytes would reset the connection and
  // the client could lose the alert.
  if (::shutdown(c.cfd, SHUT_WR) != 0 || !report) {
    Destroy(c, false);
    return;
  }
  c.state = State::kLinger;
  c.deadline = Clock::now() + kLinger;
  timers.push(Timer{c.deadline, c.id});
  Linger(c);
}

void Terminator::Impl::Linger(Conn& c) {
  char sink[4096];
  for (;;) {
    const ssize_t n = ::recv(c.cfd, sink, sizeof sink, 0);
    if (n > 0) {
      c.lingered += static_cast<size_t>(n);
      if (c.lingered > kLingerMaxBytes) break;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      SetClientEvents(c, EPOLLIN);
      return;
    }
    break;
  }
  Destroy(c, false);
}

void Terminator::Impl::ConnectUpstream(Conn& c) {
  c.state = State::kConnecting;
  c.ufd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c.ufd < 0) {
    onEvent(EventKind::kUpstreamError, c.remote, "HTTP server socket: " + Errno(errno));
    Destroy(c, true);
    return;
  }
  if (::connect(c.ufd, reinterpret_cast<const sockaddr*>(&upstream), sizeof upstream) == 0) {
    Opened(c);
    return;
  }
  if (errno == EINPROGRESS) {
    SetClientEvents(c, 0);
    SetUpstreamEvents(c, EPOLLOUT);
    return;
  }
  // EAGAIN: the HTTP server's accept queue is full.
  onEvent(EventKind::kUpstreamError, c.remote, "HTTP server socket: " + Errno(errno));
  Destroy(c, true);
}

void Terminator::Impl::Opened(Conn& c) {
  c.state = State::kOpen;
  c.c2u = std::make_unique<Buffer>();
  c.u2c = std::make_unique<Buffer>();
  if (o.proxyHeader) {
    // The HTTP server's first bytes from this connection: who the client is (proxy_header.h).
    sockaddr_storage local{};
    socklen_t ll = sizeof local;
    if (getsockname(c.cfd, reinterpret_cast<sockaddr*>(&local), &ll) != 0) local.ss_family = AF_UNSPEC;
    c.c2u->len = WriteProxyHeader(c.peer, local, reinterpret_cast<uint8_t*>(c.c2u->tail()));
  }
  nServed.fetch_add(1, std::memory_order_relaxed);
  Pump(c);
}

void Terminator::Impl::Pump(Conn& c) {
  uint32_t clientWant = 0;
  uint32_t upstreamWant = 0;
  bool progress = true;
  int rounds = 0;
  while (progress) {
    if (++rounds > kPumpRounds) {
      ready.push_back(c.id);
      break;
    }
    progress = false;
    clientWant = 0;
    upstreamWant = 0;
    // Client -> buffer.
    if (!c.clientEof) {
      const size_t space = c.c2u->space();
      if (space > 0) {
        ERR_clear_error();
        errno = 0;
        const int r = SSL_read(c.ssl, c.c2u->tail(), static_cast<int>(space));
        if (r > 0) {
          if (o.proxyHeader && c.scan.Feed(c.c2u->tail(), static_cast<size_t>(r))) {
            // Its bytes never reach the HTTP server: it would take the header's address as the client's.
            nRefused.fetch_add(1, std::memory_order_relaxed);
            onEvent(EventKind::kRefused, c.remote, "sent a PROXY protocol header (connection closed)");
            Destroy(c, true);
            return;
          }
          c.c2u->len += static_cast<size_t>(r);
          progress = true;
        } else {
          const int err = SSL_get_error(c.ssl, r);
          if (err == SSL_ERROR_WANT_READ) {
            clientWant |= EPOLLIN;
          } else if (err == SSL_ERROR_WANT_WRITE) {
            clientWant |= EPOLLOUT;
          } else if (IsEof(err)) {
            c.clientEof = true;
            progress = true;
          } else {
            ERR_clear_error();
            Destroy(c, false);
            return;
          }
        }
      }
    }
    // Buffer -> HTTP server.
    if (c.c2u->len > 0) {
      const ssize_t n = ::send(c.ufd, c.c2u->head(), c.c2u->len, MSG_NOSIGNAL);
      if (n > 0) {
        c.c2u->consume(static_cast<size_t>(n));
        progress = true;
      } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        upstreamWant |= EPOLLOUT;
      } else if (errno == EINTR) {
        progress = true;
      } else {
        // The HTTP server is gone: nothing more can be answered; send what it already wrote.
        c.c2u->consume(c.c2u->len);
        c.clientEof = true;
        progress = true;
      }
    }
    if (c.clientEof && c.c2u->len == 0 && !c.upstreamShut) {
      ::shutdown(c.ufd, SHUT_WR);
      c.upstreamShut = true;
    }
    // HTTP server -> buffer.
    if (!c.upstreamEof) {
      const size_t space = c.u2c->space();
      if (space > 0) {
        const ssize_t n = ::recv(c.ufd, c.u2c->tail(), space, 0);
        if (n > 0) {
          c.u2c->len += static_cast<size_t>(n);
          progress = true;
        } else if (n == 0) {
          c.upstreamEof = true;
          progress = true;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
          upstreamWant |= EPOLLIN;
        } else if (errno == EINTR) {
          progress = true;
        } else {
          c.upstreamEof = true;
          progress = true;
        }
      }
    }
    // Buffer -> client.
    if (c.u2c->len > 0) {
      ERR_clear_error();
      errno = 0;
      const int r = SSL_write(c.ssl, c.u2c->head(), static_cast<int>(c.u2c->len));
      if (r > 0) {
        c.u2c->consume(static_cast<size_t>(r));
        progress = true;
      } else {
        const int err = SSL_get_error(c.ssl, r);
        if (err == SSL_ERROR_WANT_WRITE) {
          clientWant |= EPOLLOUT;
        } else if (err == SSL_ERROR_WANT_READ) {
          clientWant |= EPOLLIN;
        } else {
          ERR_clear_error();
          Destroy(c, false);
          return;
        }
      }
    }
    if (c.upstreamEof && c.u2c->len == 0) {
      // The HTTP server closed and everything it sent is out: close_notify, then close.
      Destroy(c, true);
      return;
    }
  }
  SetClientEvents(c, clientWant);
  if (c.upstreamRegistered || upstreamWant != 0) SetUpstreamEvents(c, upstreamWant);
}

void Terminator::Impl::SetClientEvents(Conn& c, uint32_t ev) {
  // Registered with no events, a socket still reports errors and hang-ups.
  if (c.clientRegistered && c.clientEvents == ev) return;
  epoll_event e{};
  e.events = ev;
  e.data.u64 = Key(c.id, kClient);
  if (epoll_ctl(epfd, c.clientRegistered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c.cfd, &e) == 0) c.clientRegistered = true;
  c.clientEvents = ev;
}

void Terminator::Impl::SetUpstreamEvents(Conn& c, uint32_t ev) {
  epoll_event e{};
  e.events = ev;
  e.data.u64 = Key(c.id, kUpstream);
  if (!c.upstreamRegistered) {
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c.ufd, &e) == 0) c.upstreamRegistered = true;
  } else if (c.upstreamEvents != ev) {
    epoll_ctl(epfd, EPOLL_CTL_MOD, c.ufd, &e);
  }
  c.upstreamEvents = ev;
}

void Terminator::Impl::Destroy(Conn& c, bool closeNotify) {
  if (closeNotify && c.ssl != nullptr && SSL_is_init_finished(c.ssl)) {
    ERR_clear_error();
    SSL_shutdown(c.ssl);
    ERR_clear_error();
  }
  if (c.cfd >= 0) ::close(c.cfd);  // also leaves the epoll set
  if (c.ufd >= 0) ::close(c.ufd);
  if (c.ssl != nullptr) SSL_free(c.ssl);
  nOpen.fetch_sub(1, std::memory_order_relaxed);
  conns.erase(c.id);  // c is gone
}

void Terminator::Impl::CloseListener() {
  if (lfd < 0) return;
  if (!acceptPaused) epoll_ctl(epfd, EPOLL_CTL_DEL, lfd, nullptr);
  ::close(lfd);
  lfd = -1;
  listening = false;
}

void Terminator::Impl::CloseAll() {
  CloseListener();
  std::vector<uint64_t> ids;
  ids.reserve(conns.size());
  for (auto& [id, c] : conns) ids.push_back(id);
  for (uint64_t id : ids) {
    auto it = conns.find(id);
    if (it == conns.end()) continue;
    Conn& c = *it->second;
    if (c.state == State::kOpen && c.u2c->len > 0) {
      // What the HTTP server already answered goes out if the socket takes it now.
      ERR_clear_error();
      const int r = SSL_write(c.ssl, c.u2c->head(), static_cast<int>(c.u2c->len));
      if (r > 0) c.u2c->consume(static_cast<size_t>(r));
      ERR_clear_error();
    }
    Destroy(c, c.state == State::kOpen);
  }
}

Terminator::Terminator(SslCtxPtr ctx, ListenOptions o, std::string dnsName, EventFn onEvent) : impl_(new Impl) {
  Impl& m = *impl_;
  m.ctx = std::move(ctx);
  m.o = std::move(o);
  m.dnsName = std::move(dnsName);
  m.onEvent = std::move(onEvent);
  if (m.o.upstreamPath.empty() || m.o.upstreamPath.size() >= sizeof m.upstream.sun_path) {
    throw std::runtime_error("Unix socket path too long: " + m.o.upstreamPath);
  }
  if (m.o.maxConnections < 1) throw std::runtime_error("maxConnections must be at least 1");
  if (m.o.handshakeTimeoutMs < 1) throw std::runtime_error("handshakeTimeoutMs must be at least 1");
  m.upstream.sun_family = AF_UNIX;
  std::memcpy(m.upstream.sun_path, m.o.upstreamPath.c_str(), m.o.upstreamPath.size() + 1);
  m.Listen();
  port_ = m.o.port;
  // Signals go to node's threads, never to this one; the thread's name shows in top -H and ps -L.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  thread_ = std::thread([this] { impl_->Run(); });
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  pthread_setname_np(thread_.native_handle(), "xks-mtls");
}

Terminator::~Terminator() { Close(); }

void Terminator::StopAccepting() {
  if (closed_) return;
  impl_->stopAccepting.store(true);
  const uint64_t one = 1;
  if (::write(impl_->wakefd, &one, sizeof one) < 0) {
    // The counter is saturated: the thread is awake anyway.
  }
}

void Terminator::Close() {
  if (closed_) return;
  closed_ = true;
  impl_->quit.store(true);
  const uint64_t one = 1;
  if (::write(impl_->wakefd, &one, sizeof one) < 0) {
    // As above.
  }
  if (thread_.joinable()) thread_.join();
}

Stats Terminator::stats() const {
  Stats s;
  const Impl& m = *impl_;
  s.open = m.nOpen.load(std::memory_order_relaxed);
  s.accepted = m.nAccepted.load(std::memory_order_relaxed);
  s.served = m.nServed.load(std::memory_order_relaxed);
  s.refused = m.nRefused.load(std::memory_order_relaxed);
  s.timedOut = m.nTimedOut.load(std::memory_order_relaxed);
  s.overLimit = m.nOverLimit.load(std::memory_order_relaxed);
  s.silent = m.nSilent.load(std::memory_order_relaxed);
  return s;
}

}  // namespace xks::tls
