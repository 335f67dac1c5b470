/**
 * Byte-level formats of the XKS API: strict Base64, the AAD handed to the HSM
 * (byte-compatible with the Rust xks-proxy) and the ciphertext data integrity value.
 */
import { createHash, hash } from 'node:crypto';

/**
 * Decodes canonical standard Base64 with padding (RFC 4648 section 4), the only form the
 * Rust proxy accepts; undefined for anything else. Node's decoder silently skips junk and
 * tolerates missing padding, so the result is re-encoded and compared: equal strings mean
 * the input was canonical. (Measured faster than a character-class scan for 4,300 bytes.)
 * A refused input's decoded bytes are wiped.
 */
export function decodeBase64Strict(s: string): Buffer | undefined {
  if (s.length % 4 !== 0) return undefined;
  const b = Buffer.from(s, 'base64');
  if (b.toString('base64') === s) return b;
  // A plaintext in a non-canonical form decodes too: wipe what was decoded before refusing it.
  b.fill(0);
  return undefined;
}

/**
 * Why decodeBase64Strict refused `s`: a character or padding outside canonical padded Base64
 * ('alphabet'), or the right form with non-zero bits after the last byte ('trailing-bits').
 */
export function base64Refusal(s: string): 'alphabet' | 'trailing-bits' {
  return /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(s) ? 'trailing-bits' : 'alphabet';
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
    off += hash('sha256', aad, 'buffer').copy(out, off);
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
