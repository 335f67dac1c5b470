/** XKS Decrypt: AES-256-GCM open in the HSM with the AAD built as the Rust proxy builds it. */
import { hsmAad } from '../codec.js';
import type { DecryptInput } from '../validate.js';
import type { OpContext } from './context.js';

export async function decrypt(ctx: OpContext, keyId: string, input: DecryptInput): Promise<string> {
  const aad = hsmAad(input.aad, input.ciphertextMetadata);
  const plaintext = await ctx.hsm.decrypt(keyId, input.ciphertext, input.tag, input.iv, aad);
  try {
    return `{"plaintext":"${plaintext.toString('base64')}"}`;
  } finally {
    plaintext.fill(0);
  }
}
