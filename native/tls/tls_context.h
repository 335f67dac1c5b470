// The SSL_CTX of the mTLS terminator: TLS 1.2/1.3, the XKS suites, ALPN http/1.1, no session
// resumption, and client-certificate verification that fails inside the handshake.
#pragma once

#include <openssl/ssl.h>

#include <memory>
#include <string>

namespace xks::tls {

struct SslCtxFree {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxFree>;

struct ContextOptions {
  std::string certFile;      // PEM: the server certificate, then any intermediates
  std::string keyFile;       // PEM private key (not encrypted)
  std::string caFile;        // PEM: the CA(s) client certificates must chain to
  std::string dnsName;       // a client certificate must have a subject alternative DNS name matching it
  std::string cipherList;    // TLS 1.2 (OpenSSL names)
  std::string cipherSuites;  // TLS 1.3
};

// Throws std::runtime_error naming the file or setting at fault.
SslCtxPtr MakeContext(const ContextOptions& o);

// What OpenSSL's own check of the client's certificate found, recorded by the verify callback
// (code 0: nothing failed). The callback then fails the handshake with a handshake_failure alert.
struct VerifyFailure {
  int code = 0;  // X509_V_ERR_*
  int depth = 0;
};

// Gives `ssl` the record its verify callback fills in (call once, before the handshake; `slot`
// must outlive the handshake).
void AttachVerifyFailure(SSL* ssl, VerifyFailure* slot);

}  // namespace xks::tls
