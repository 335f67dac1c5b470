/** XKS Encrypt: AES-256-GCM in the HSM, with the optional ciphertext data integrity value. */
import { cdivSha256, hsmAad } from '../codec.js';
import { XksError } from '../errors.js';
import type { EncryptInput } from '../validate.js';
import type { OpContext } from './context.js';

export async function encrypt(ctx: OpContext, keyId: string, input: EncryptInput): Promise<string> {
  const aad = hsmAad(input.aad, ctx.ciphertextMetadata);
  let sealed;
  try {
    sealed = await ctx.hsm.encrypt(keyId, input.plaintext, aad);
  } finally {
    input.plaintext.fill(0);
  }
  const { ciphertext, tag, iv } = sealed;
  let cdiv = '';
  if (input.cdiv) {
    // Spec Appendix C: hash first, then prove the very bytes we return decrypt.
    const value = cdivSha256(input.aad, ctx.ciphertextMetadata, iv, ciphertext, tag);
    try {
      const check = await ctx.hsm.decrypt(keyId, ciphertext, tag, iv, aad);
      check.fill(0);
    } catch (e) {
      // A key that cannot decrypt cannot vouch for its ciphertext (the Rust proxy and the
      // AWS test client expect InvalidKeyUsageException); any other failure means the
      // fresh ciphertext is not safe to hand out.
      if (e instanceof XksError && (e.errorName === 'InvalidKeyUsageException' || e.errorName === 'KeyNotFoundException')) throw e;
      const why = e instanceof XksError ? e.detail ?? e.errorName : String(e);
      throw new XksError('InternalException', 'The verifying decrypt of the new ciphertext failed', why);
    }
    cdiv = `,"ciphertextDataIntegrityValue":"${value}"`;
  }
  const ctm = ctx.ciphertextMetadataB64 === undefined ? '' : `,"ciphertextMetadata":"${ctx.ciphertextMetadataB64}"`;
  return (
    `{"authenticationTag":"${tag.toString('base64')}","ciphertext":"${ciphertext.toString('base64')}"` +
    `${cdiv}${ctm},"initializationVector":"${iv.toString('base64')}"}`
  );
}
