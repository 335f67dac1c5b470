/** XKS Decrypt: AES-256-GCM open in the HSM with the AAD built as the Rust proxy builds it. */
import { hsmAad } from '../codec.js';
import { validation } from '../errors.js';
import {
  checkLimit,
  decode,
  decodeAad,
  decodeSized,
  encryptionAlgorithm,
  optionalString,
  requestMetadata,
  requiredString,
  type Json,
  type Limits,
  type RequestMetadata,
} from '../validate.js';
import type { OpContext } from './context.js';
import { EncryptMetadata } from './encrypt.js';
import type { Operation } from './operation.js';

export interface DecryptShape {
  requestMetadata: RequestMetadata;
  ciphertext: string;
  ciphertextMetadata: string | undefined;
  additionalAuthenticatedData: string | undefined;
  initializationVector: string;
  authenticationTag: string;
}

export interface DecryptInput {
  ciphertext: Buffer;
  ciphertextMetadata: Buffer | undefined;
  aad: Buffer | undefined;
  iv: Buffer;
  tag: Buffer;
}

export function decryptShape(o: Json): DecryptShape {
  const requestMeta = requestMetadata(o, true, true);
  const ciphertext = requiredString(o, 'ciphertext', '');
  encryptionAlgorithm(o);
  return {
    requestMetadata: requestMeta,
    ciphertext,
    ciphertextMetadata: optionalString(o, 'ciphertextMetadata', ''),
    additionalAuthenticatedData: optionalString(o, 'additionalAuthenticatedData', ''),
    initializationVector: requiredString(o, 'initializationVector', ''),
    authenticationTag: requiredString(o, 'authenticationTag', ''),
  };
}

export function decryptInput(s: DecryptShape, limits: Limits): DecryptInput {
  // The ciphertext is as long as the plaintext it came from; bound it like a plaintext.
  checkLimit(s.ciphertext, limits.max_plaintext_in_base64, 'ciphertext');
  if (s.additionalAuthenticatedData !== undefined)
    checkLimit(s.additionalAuthenticatedData, limits.max_aad_in_base64, 'additionalAuthenticatedData');
  const ciphertext = decode(s.ciphertext, 'ciphertext');
  let ctm: Buffer | undefined;
  if (s.ciphertextMetadata !== undefined) {
    ctm = decode(s.ciphertextMetadata, 'ciphertextMetadata');
    if (ctm.length > 20) throw validation(`ciphertextMetadata must be at most 20 bytes, got ${ctm.length} bytes`);
  }
  return {
    ciphertext,
    ciphertextMetadata: ctm,
    aad: decodeAad(s.additionalAuthenticatedData),
    iv: decodeSized(s.initializationVector, 'initializationVector', [12, 16], '12 or 16 bytes'),
    tag: decodeSized(s.authenticationTag, 'authenticationTag', [16], '16 bytes'),
  };
}

export async function decrypt(ctx: OpContext, keyId: string, input: DecryptInput): Promise<string> {
  const aad = hsmAad(input.aad, input.ciphertextMetadata);
  const plaintext = await ctx.hsm.decrypt(keyId, input.ciphertext, input.tag, input.iv, aad);
  try {
    return `{"plaintext":"${plaintext.toString('base64')}"}`;
  } finally {
    plaintext.fill(0);
  }
}

export const decryptOperation: Operation<DecryptShape, DecryptInput> = {
  name: 'Decrypt',
  route: '/keys/:keyId/decrypt',
  namesKey: true,
  // The Rust proxy's decrypt handler takes its policy class from encrypt (encrypt::RequestMetadata).
  policy: { action: 'decrypt', resource: EncryptMetadata, className: 'EncryptMetadata', enforced: true },
  shape: decryptShape,
  metadata: (s) => s.requestMetadata,
  decode: decryptInput,
  run: decrypt,
};
