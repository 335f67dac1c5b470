/**
 * TLS settings shared by both TLS front ends (uWS SSLApp for TLS, the native terminator for mTLS).
 * The XKS spec asks for TLS 1.2 or 1.3 with these suites only.
 */

/** TLS 1.3 suites of the spec. */
export const TLS13_SUITES = ['TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256'] as const;
/** TLS 1.2 suites of the spec (OpenSSL names). */
export const TLS12_CIPHERS = ['ECDHE-RSA-AES256-GCM-SHA384', 'ECDHE-ECDSA-AES256-GCM-SHA384'] as const;

/** OpenSSL cipher list for TLS 1.2 (uWS `ssl_ciphers`). */
export const TLS12_CIPHER_LIST = TLS12_CIPHERS.join(':');
