#include "tls_context.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <cstring>
#include <mutex>
#include <stdexcept>

// The headers must be the ones of the OpenSSL inside node (binding.gyp puts node's include
// directory first); the addon links against no other.
static_assert(OPENSSL_VERSION_MAJOR == 3, "build against the OpenSSL 3 headers that ship with node");

namespace xks::tls {

namespace {

int FailureIndex() {
  static int index = -1;
  static std::once_flag once;
  std::call_once(once, [] { index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr); });
  return index;
}

std::string OpensslError() {
  unsigned long e = ERR_get_error();
  std::string out;
  while (e != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
    e = ERR_get_error();
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

[[noreturn]] void Fail(const std::string& what) { throw std::runtime_error(what + ": " + OpensslError()); }

// OpenSSL has checked one certificate of the chain (and the name, through the verify param). When
// it found a fault, remember it for the log and fail with X509_V_ERR_APPLICATION_VERIFICATION:
// OpenSSL then sends the handshake_failure alert (ssl_x509err2alert), the one the AWS test client
// (written against the Rust proxy) looks for, instead of one that tells the client which check failed.
int VerifyCallback(int preverifyOk, X509_STORE_CTX* store) {
  if (preverifyOk == 1) return 1;
  auto* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  if (ssl != nullptr) {
    auto* slot = static_cast<VerifyFailure*>(SSL_get_ex_data(ssl, FailureIndex()));
    if (slot != nullptr && slot->code == 0) {
      slot->code = X509_STORE_CTX_get_error(store);
      slot->depth = X509_STORE_CTX_get_error_depth(store);
    }
  }
  X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
  return 0;
}

int SelectAlpn(SSL*, const unsigned char** out, unsigned char* outLen, const unsigned char* in, unsigned int inLen,
               void*) {
  static const unsigned char kHttp11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  unsigned char* selected = nullptr;
  unsigned char selectedLen = 0;
  if (SSL_select_next_proto(&selected, &selectedLen, kHttp11, sizeof kHttp11, in, inLen) != OPENSSL_NPN_NEGOTIATED) {
    // The client offered protocols and http/1.1 is not among them (RFC 7301: no_application_protocol).
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  *out = selected;
  *outLen = selectedLen;
  return SSL_TLSEXT_ERR_OK;
}

}  // namespace

void AttachVerifyFailure(SSL* ssl, VerifyFailure* slot) { SSL_set_ex_data(ssl, FailureIndex(), slot); }

SslCtxPtr MakeContext(const ContextOptions& o) {
  if (o.dnsName.empty()) throw std::runtime_error("mtls_client_dns_name must not be empty");
  ERR_clear_error();
  FailureIndex();
  SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  if (!ctx) Fail("SSL_CTX_new");
  SSL_CTX* c = ctx.get();
  if (SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION) != 1 || SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION) != 1) {
    Fail("TLS versions");
  }
  if (SSL_CTX_set_cipher_list(c, o.cipherList.c_str()) != 1) Fail("TLS 1.2 cipher list \"" + o.cipherList + "\"");
  if (SSL_CTX_set_ciphersuites(c, o.cipherSuites.c_str()) != 1)
    Fail("TLS 1.3 cipher suites \"" + o.cipherSuites + "\"");
  // No renegotiation; no resumption (tickets or cache): every connection verifies its certificate.
  SSL_CTX_set_options(c, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET |
                             SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(c, 0);
  SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

  if (SSL_CTX_use_certificate_chain_file(c, o.certFile.c_str()) != 1) Fail("tls_cert_pem " + o.certFile);
  if (SSL_CTX_use_PrivateKey_file(c, o.keyFile.c_str(), SSL_FILETYPE_PEM) != 1) Fail("tls_key_pem " + o.keyFile);
  if (SSL_CTX_check_private_key(c) != 1)
    Fail("tls_key_pem " + o.keyFile + " does not match tls_cert_pem " + o.certFile);

  // Only the configured CA: no default verify paths.
  if (SSL_CTX_load_verify_locations(c, o.caFile.c_str(), nullptr) != 1) Fail("mtls_client_ca_pem " + o.caFile);
  STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(o.caFile.c_str());
  if (names == nullptr) Fail("mtls_client_ca_pem " + o.caFile + " (CA names)");
  SSL_CTX_set_client_CA_list(c, names);

  // Every certificate in the CA file is a trust anchor, an intermediate too (as webpki, the Rust
  // proxy's verifier, takes its root store): a chain may end at any of them.
  X509_VERIFY_PARAM* param = SSL_CTX_get0_param(c);
  X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_PARTIAL_CHAIN);

  // The name check runs inside the handshake too: subject alternative DNS names only (never the
  // subject CN), a wildcard only as the whole left-most label (RFC 6125).
  X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NEVER_CHECK_SUBJECT | X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  if (X509_VERIFY_PARAM_set1_host(param, o.dnsName.c_str(), o.dnsName.size()) != 1) Fail("mtls_client_dns_name");

  SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, VerifyCallback);
  SSL_CTX_set_alpn_select_cb(c, SelectAlpn, nullptr);
  return ctx;
}

}  // namespace xks::tls
