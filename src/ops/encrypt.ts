/** XKS Encrypt: AES-256-GCM in the HSM, with the optional ciphertext data integrity value. */
import { timingSafeEqual } from 'node:crypto';
import { cdivSha256, hsmAad } from '../codec.js';
import type { Sealed } from '../hsm/hsm.js';
import { XksError } from '../errors.js';
import type { EncryptInput } from '../validate.js';
import type { OpContext } from './context.js';

export async function encrypt(ctx: OpContext, keyId: string, input: EncryptInput): Promise<string> {
  let cdiv = '';
  let sealed;
  try {
    const aad = hsmAad(input.aad, ctx.ciphertextMetadata);
    sealed = await ctx.hsm.encrypt(keyId, input.plaintext, aad);
    if (input.cdiv) {
      // Spec Appendix C: hash first, then prove the very bytes we return decrypt to the input.
      const { ciphertext, tag, iv } = sealed;
      const value = cdivSha256(input.aad, ctx.ciphertextMetadata, iv, ciphertext, tag);
      await verifyDecrypt(ctx, keyId, sealed, aad, input.plaintext);
      cdiv = `,"ciphertextDataIntegrityValue":"${value}"`;
    }
  } finally {
    input.plaintext.fill(0);
  }
  const { ciphertext, tag, iv } = sealed;
  const ctm = ctx.ciphertextMetadataB64 === undefined ? '' : `,"ciphertextMetadata":"${ctx.ciphertextMetadataB64}"`;
  return (
    `{"authenticationTag":"${tag.toString('base64')}","ciphertext":"${ciphertext.toString('base64')}"` +
    `${cdiv}${ctm},"initializationVector":"${iv.toString('base64')}"}`
  );
}

/** The CDIV's verifying decrypt: the new ciphertext must decrypt, to the plaintext (compared in constant time). */
async function verifyDecrypt(ctx: OpContext, keyId: string, sealed: Sealed, aad: Buffer, plaintext: Buffer): Promise<void> {
  let check: Buffer;
  try {
    check = await ctx.hsm.decrypt(keyId, sealed.ciphertext, sealed.tag, sealed.iv, aad);
  } catch (e) {
    // A key that cannot decrypt cannot vouch for its ciphertext (the Rust proxy and the
    // AWS test client expect InvalidKeyUsageException); any other failure means the
    // fresh ciphertext is not safe to hand out.
    if (e instanceof XksError && (e.errorName === 'InvalidKeyUsageException' || e.errorName === 'KeyNotFoundException')) throw e;
    const why = e instanceof XksError ? e.detail ?? e.errorName : String(e);
    throw new XksError('InternalException', 'The verifying decrypt of the new ciphertext failed', why);
  }
  // The length is not secret (the ciphertext has it); the contents are compared in constant time.
  const same = check.length === plaintext.length && timingSafeEqual(check, plaintext);
  check.fill(0);
  if (!same) throw new XksError('InternalException', 'The verifying decrypt of the new ciphertext failed', 'CDIV: the decrypted ciphertext differs from the plaintext');
}
