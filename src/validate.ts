/**
 * The input checks every operation shares (each operation's own request shape is in its file,
 * src/ops/<op>.ts). They run once at the edge, in the Rust proxy's order:
 *   1. JSON shape (types, required fields, enum values)       -> 400 ValidationException
 *   2. (pipeline) keyId in the keystore's xks_key_id_set        -> 404 KeyNotFoundException
 *   3. size limits of the Base64 strings ([limits])             -> 501 UnsupportedOperationException
 *   4. Base64 decoding and binary sizes                         -> 400 ValidationException
 * Operations receive decoded, typed values and never look at raw JSON.
 */
import { decodeBase64Strict } from './codec.js';
import { XksError, validation } from './errors.js';

export interface RequestMetadata {
  kmsRequestId: string;
  kmsOperation: string;
  awsPrincipalArn?: string | undefined;
  kmsKeyArn?: string | undefined;
  awsSourceVpc?: string | undefined;
  awsSourceVpce?: string | undefined;
  kmsViaService?: string | undefined;
}

export interface Limits {
  max_plaintext_in_base64: number;
  max_aad_in_base64: number;
}

/** A request body: a JSON object. */
export type Json = Record<string, unknown>;

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

/** `o[field]`, a string (`where` prefixes the field's name in the message). */
export function requiredString(o: Json, field: string, where: string): string {
  const v = o[field];
  if (typeof v !== 'string') throw validation(v === undefined ? `Missing ${where}${field}` : `${where}${field} must be a string`);
  return v;
}

/** `o[field]`, a string, or undefined when absent or null. */
export function optionalString(o: Json, field: string, where: string): string | undefined {
  const v = o[field];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw validation(`${where}${field} must be a string`);
  return v;
}

const META = 'requestMetadata.';

/** requestMetadata; `needPrincipal` says whether awsPrincipalArn is required (all but health), `needKeyArn` kmsKeyArn. */
export function requestMetadata(o: Json, needPrincipal: boolean, needKeyArn: boolean): RequestMetadata {
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

/** encryptionAlgorithm, which must be AES_GCM (Encrypt and Decrypt). */
export function encryptionAlgorithm(o: Json): void {
  const v = requiredString(o, 'encryptionAlgorithm', '');
  if (v !== 'AES_GCM') throw validation('encryptionAlgorithm must be AES_GCM');
}

/** A Base64 field's size limit ([limits]): 501 UnsupportedOperationException beyond it. */
export function checkLimit(value: string, max: number, label: string): void {
  if (value.length > max) {
    throw new XksError(
      'UnsupportedOperationException',
      `${label} in Base64 with size of ${value.length} bytes is too large; the maximum is ${max} bytes`,
    );
  }
}

/** Strict Base64 of `field`. */
export function decode(value: string, field: string): Buffer {
  const b = decodeBase64Strict(value);
  if (b === undefined) throw validation(`${field} is not valid Base64`);
  return b;
}

/** Strict Base64 of `field`, whose decoded length must be one of `sizes` (`what` says them). */
export function decodeSized(value: string, field: string, sizes: readonly number[], what: string): Buffer {
  const b = decode(value, field);
  if (!sizes.includes(b.length)) throw validation(`${field} must be ${what}, got ${b.length} bytes`);
  return b;
}

const MAX_AAD_BYTES = 0xffff; // its length travels in two bytes

/** additionalAuthenticatedData, when present: Base64 of at most 65535 bytes. */
export function decodeAad(value: string | undefined): Buffer | undefined {
  if (value === undefined) return undefined;
  const b = decode(value, 'additionalAuthenticatedData');
  if (b.length > MAX_AAD_BYTES)
    throw new XksError('UnsupportedOperationException', 'additionalAuthenticatedData is longer than 65535 bytes');
  return b;
}
