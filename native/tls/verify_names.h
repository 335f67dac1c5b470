// Names of X509_V_ERR_* codes as Node prints them ("CERT_HAS_EXPIRED"), for the refusal log line.
#pragma once

#include <string>

namespace xks::tls {

std::string VerifyErrorName(int x509Error);

}  // namespace xks::tls
