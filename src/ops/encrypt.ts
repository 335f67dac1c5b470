/** XKS Encrypt: AES-256-GCM in the HSM, with the optional ciphertext data integrity value. */
import { cdivSha256, hsmAad } from '../codec.js';
import { validation } from '../errors.js';
import { plaintextCopy } from '../http/plaintext-copies.js';
import {
  checkLimit,
  decode,
  decodeAad,
  encryptionAlgorithm,
  optionalString,
  requestMetadata,
  requiredString,
  type Json,
  type Limits,
  type RequestMetadata,
} from '../validate.js';
import type { OpContext } from './context.js';
import type { Operation } from './operation.js';
import { policyOption, policyString, type PolicyOption } from './policy-fields.js';

export interface EncryptShape {
  requestMetadata: RequestMetadata;
  plaintext: string;
  additionalAuthenticatedData: string | undefined;
  cdiv: boolean;
}

export interface EncryptInput {
  plaintext: Buffer;
  aad: Buffer | undefined;
  cdiv: boolean;
}

export function encryptShape(o: Json): EncryptShape {
  const requestMeta = requestMetadata(o, true, true);
  const plaintext = requiredString(o, 'plaintext', '');
  encryptionAlgorithm(o);
  const aad = optionalString(o, 'additionalAuthenticatedData', '');
  const cdivAlg = optionalString(o, 'ciphertextDataIntegrityValueAlgorithm', '');
  if (cdivAlg !== undefined && cdivAlg !== 'SHA_256') throw validation('ciphertextDataIntegrityValueAlgorithm must be SHA_256');
  return { requestMetadata: requestMeta, plaintext, additionalAuthenticatedData: aad, cdiv: cdivAlg !== undefined };
}

export function encryptInput(s: EncryptShape, limits: Limits): EncryptInput {
  checkLimit(s.plaintext, limits.max_plaintext_in_base64, 'plaintext');
  if (s.additionalAuthenticatedData !== undefined)
    checkLimit(s.additionalAuthenticatedData, limits.max_aad_in_base64, 'additionalAuthenticatedData');
  const plaintext = plaintextCopy(decode(s.plaintext, 'plaintext'));
  try {
    if (plaintext.length === 0) throw validation('plaintext must not be empty');
    return { plaintext, aad: decodeAad(s.additionalAuthenticatedData), cdiv: s.cdiv };
  } catch (e) {
    // A good plaintext before a bad AAD: the caller never sees it, so it is wiped here.
    plaintext.fill(0);
    throw e;
  }
}

/** What a policy sees of an Encrypt or a Decrypt (the Rust proxy's encrypt::RequestMetadata, registered as EncryptMetadata). */
export class EncryptMetadata {
  readonly awsPrincipalArn: string | null;
  readonly kmsOperation: string;
  readonly kmsKeyArn: string | null;
  readonly awsSourceVpc: PolicyOption;
  readonly awsSourceVpce: PolicyOption;
  readonly kmsViaService: PolicyOption;
  constructor(m: RequestMetadata) {
    this.awsPrincipalArn = policyString(m.awsPrincipalArn);
    this.kmsOperation = m.kmsOperation;
    this.kmsKeyArn = policyString(m.kmsKeyArn);
    this.awsSourceVpc = policyOption(m.awsSourceVpc);
    this.awsSourceVpce = policyOption(m.awsSourceVpce);
    this.kmsViaService = policyOption(m.kmsViaService);
  }
}

export const encryptOperation: Operation<EncryptShape, EncryptInput> = {
  name: 'Encrypt',
  route: '/keys/:keyId/encrypt',
  namesKey: true,
  policy: { action: 'encrypt', resource: EncryptMetadata, className: 'EncryptMetadata', enforced: true },
  shape: encryptShape,
  metadata: (s) => s.requestMetadata,
  decode: encryptInput,
  run: encrypt,
};

export async function encrypt(ctx: OpContext, keyId: string, input: EncryptInput): Promise<string> {
  let sealed;
  try {
    const aad = hsmAad(input.aad, ctx.ciphertextMetadata);
    // With CDIV (spec Appendix C) the HSM job also proves that the very bytes we return decrypt
    // to the input (src/hsm/hsm.ts encrypt's `verify`): no ciphertext comes back otherwise.
    sealed = await ctx.hsm.encrypt(keyId, input.plaintext, aad, input.cdiv);
  } finally {
    input.plaintext.fill(0);
  }
  const { ciphertext, tag, iv } = sealed;
  const cdiv = input.cdiv ? `,"ciphertextDataIntegrityValue":"${cdivSha256(input.aad, ctx.ciphertextMetadata, iv, ciphertext, tag)}"` : '';
  const ctm = ctx.ciphertextMetadataB64 === undefined ? '' : `,"ciphertextMetadata":"${ctx.ciphertextMetadataB64}"`;
  return (
    `{"authenticationTag":"${tag.toString('base64')}","ciphertext":"${ciphertext.toString('base64')}"` +
    `${cdiv}${ctm},"initializationVector":"${iv.toString('base64')}"}`
  );
}
