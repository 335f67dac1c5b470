/**
 * Byte-level formats of the XKS API: strict Base64, the AAD handed to the HSM
 * (byte-compatible with the Rust xks-proxy) and the ciphertext data integrity value.
 */
import { createHash } from 'node:crypto';

const B64_CHAR = new Uint8Array(128);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/') B64_CHAR[c.charCodeAt(0)] = 1;
/** Value of a Base64 digit, for the canonical-padding check. */
const B64_VALUE = new Uint8Array(128);
'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'.split('').forEach((c, i) => (B64_VALUE[c.charCodeAt(0)] = i));

/**
 * True when `s` is canonical standard Base64 with padding (RFC 4648 section 4), the
 * only form the Rust proxy accepts. Node's decoder silently skips junk, so we check first.
 */
export function isStrictBase64(s: string): boolean {
  const n = s.length;
  if (n % 4 !== 0) return false;
  if (n === 0) return true;
  let end = n;
  if (s.charCodeAt(n - 1) === 61 /* = */) end = s.charCodeAt(n - 2) === 61 ? n - 2 : n - 1;
  for (let i = 0; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c > 127 || B64_CHAR[c] === 0) return false;
  }
  // Unused trailing bits must be zero (canonical encoding).
  const pad = n - end;
  if (pad > 0) {
    const last = B64_VALUE[s.charCodeAt(end - 1)] ?? 0;
    if (pad === 1 && (last & 0x03) !== 0) return false;
    if (pad === 2 && (last & 0x0f) !== 0) return false;
  }
  return true;
}

/** Decoded length of a strict Base64 string, without decoding it. */
export function base64DecodedLength(s: string): number {
  const n = s.length;
  if (n === 0) return 0;
  let pad = 0;
  if (s.charCodeAt(n - 1) === 61) pad = s.charCodeAt(n - 2) === 61 ? 2 : 1;
  return (n / 4) * 3 - pad;
}

/**
 * The AAD given to AES-GCM inside the HSM, as the Rust xks-proxy builds it:
 *
 *     u16_be(len(aad)) || [SHA-256(aad) if aad present] || u8(len(ctm)) || ctm
 *
 * `aad` undefined means "absent"; an empty Buffer means "present but empty" and still
 * contributes its hash. (The spec's formula puts the raw AAD where Rust puts its digest;
 * we follow Rust so ciphertexts stay interchangeable.)
 */
export function hsmAad(aad: Buffer | undefined, ctm: Buffer | undefined): Buffer {
  const ctmLen = ctm ? ctm.length : 0;
  const out = Buffer.allocUnsafe(2 + (aad ? 32 : 0) + 1 + ctmLen);
  let off = out.writeUInt16BE(aad ? aad.length : 0, 0);
  if (aad) {
    off += createHash('sha256').update(aad).digest().copy(out, off);
  }
  out[off++] = ctmLen;
  if (ctm) ctm.copy(out, off);
  return out;
}

/** Ciphertext data integrity value (spec Appendix C): Base64 SHA-256 of aad || ctm || iv || ciphertext || tag. */
export function cdivSha256(aad: Buffer | undefined, ctm: Buffer | undefined, iv: Buffer, ciphertext: Buffer, tag: Buffer): string {
  const h = createHash('sha256');
  if (aad) h.update(aad);
  if (ctm) h.update(ctm);
  return h.update(iv).update(ciphertext).update(tag).digest('base64');
}
