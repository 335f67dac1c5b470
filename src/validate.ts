/**
 * Input checks, done once at the edge, in the Rust proxy's order:
 *   1. JSON shape (types, required fields, enum values)       -> 400 ValidationException
 *   2. (caller) keyId in the keystore's xks_key_id_set          -> 404 KeyNotFoundException
 *   3. size limits of the Base64 strings ([limits])             -> 501 UnsupportedOperationException
 *   4. Base64 decoding and binary sizes                         -> 400 ValidationException
 * Operations receive decoded, typed values and never look at raw JSON.
 */
import { decodeBase64Strict } from './codec.js';
import { XksError, validation } from './errors.js';
import { plaintextCopy } from './http/plaintext-copies.js';

export interface RequestMetadata {
  kmsRequestId: string;
  kmsOperation: string;
  awsPrincipalArn?: string | undefined;
  kmsKeyArn?: string | undefined;
  awsSourceVpc?: string | undefined;
  awsSourceVpce?: string | undefined;
  kmsViaService?: string | undefined;
}

export interface EncryptShape {
  requestMetadata: RequestMetadata;
  plaintext: string;
  additionalAuthenticatedData: string | undefined;
  cdiv: boolean;
}

export interface DecryptShape {
  requestMetadata: RequestMetadata;
  ciphertext: string;
  ciphertextMetadata: string | undefined;
  additionalAuthenticatedData: string | undefined;
  initializationVector: string;
  authenticationTag: string;
}

export interface EncryptInput {
  plaintext: Buffer;
  aad: Buffer | undefined;
  cdiv: boolean;
}

export interface DecryptInput {
  ciphertext: Buffer;
  ciphertextMetadata: Buffer | undefined;
  aad: Buffer | undefined;
  iv: Buffer;
  tag: Buffer;
}

export interface Limits {
  max_plaintext_in_base64: number;
  max_aad_in_base64: number;
}

type Json = Record<string, unknown>;

export function parseJsonObject(body: Buffer): Json {
  let value: unknown;
  try {
    value = JSON.parse(body.toString('utf8'));
  } catch {
    throw validation('Request body is not valid JSON');
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw validation('Request body must be a JSON object');
  return value as Json;
}

function requiredString(o: Json, field: string, where: string): string {
  const v = o[field];
  if (typeof v !== 'string') throw validation(v === undefined ? `Missing ${where}${field}` : `${where}${field} must be a string`);
  return v;
}

function optionalString(o: Json, field: string, where: string): string | undefined {
  const v = o[field];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw validation(`${where}${field} must be a string`);
  return v;
}

const META = 'requestMetadata.';

/** requestMetadata; `principal` says whether awsPrincipalArn is required (all but health). */
function requestMetadata(o: Json, needPrincipal: boolean, needKeyArn: boolean): RequestMetadata {
  const m = o.requestMetadata;
  if (m === null || typeof m !== 'object' || Array.isArray(m)) throw validation('Missing requestMetadata');
  const j = m as Json;
  return {
    kmsRequestId: requiredString(j, 'kmsRequestId', META),
    kmsOperation: requiredString(j, 'kmsOperation', META),
    awsPrincipalArn: needPrincipal ? requiredString(j, 'awsPrincipalArn', META) : optionalString(j, 'awsPrincipalArn', META),
    kmsKeyArn: needKeyArn ? requiredString(j, 'kmsKeyArn', META) : optionalString(j, 'kmsKeyArn', META),
    awsSourceVpc: optionalString(j, 'awsSourceVpc', META),
    awsSourceVpce: optionalString(j, 'awsSourceVpce', META),
    kmsViaService: optionalString(j, 'kmsViaService', META),
  };
}

function encryptionAlgorithm(o: Json): void {
  const v = requiredString(o, 'encryptionAlgorithm', '');
  if (v !== 'AES_GCM') throw validation('encryptionAlgorithm must be AES_GCM');
}

export function healthShape(o: Json): RequestMetadata {
  return requestMetadata(o, false, false);
}

export function metadataShape(o: Json): RequestMetadata {
  return requestMetadata(o, true, false);
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

function checkLimit(value: string, max: number, label: string): void {
  if (value.length > max) {
    throw new XksError(
      'UnsupportedOperationException',
      `${label} in Base64 with size of ${value.length} bytes is too large; the maximum is ${max} bytes`,
    );
  }
}

function decode(value: string, field: string): Buffer {
  const b = decodeBase64Strict(value);
  if (b === undefined) throw validation(`${field} is not valid Base64`);
  return b;
}

function decodeSized(value: string, field: string, sizes: readonly number[], what: string): Buffer {
  const b = decode(value, field);
  if (!sizes.includes(b.length)) throw validation(`${field} must be ${what}, got ${b.length} bytes`);
  return b;
}

const MAX_AAD_BYTES = 0xffff; // its length travels in two bytes

function decodeAad(value: string | undefined): Buffer | undefined {
  if (value === undefined) return undefined;
  const b = decode(value, 'additionalAuthenticatedData');
  if (b.length > MAX_AAD_BYTES) throw new XksError('UnsupportedOperationException', 'additionalAuthenticatedData is longer than 65535 bytes');
  return b;
}

export function encryptInput(s: EncryptShape, limits: Limits): EncryptInput {
  checkLimit(s.plaintext, limits.max_plaintext_in_base64, 'plaintext');
  if (s.additionalAuthenticatedData !== undefined) checkLimit(s.additionalAuthenticatedData, limits.max_aad_in_base64, 'additionalAuthenticatedData');
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

export function decryptInput(s: DecryptShape, limits: Limits): DecryptInput {
  // The ciphertext is as long as the plaintext it came from; bound it like a plaintext.
  checkLimit(s.ciphertext, limits.max_plaintext_in_base64, 'ciphertext');
  if (s.additionalAuthenticatedData !== undefined) checkLimit(s.additionalAuthenticatedData, limits.max_aad_in_base64, 'additionalAuthenticatedData');
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
