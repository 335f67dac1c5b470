/**
 * What the spec requires of each answer the remote doctor gets, and the ConnectionErrorCode
 * (or key exception) KMS reports when an answer is an error or breaks the spec.
 */
import type { IncomingMessage } from 'node:http';
import { cdivSha256, decodeBase64Strict } from '../codec.js';

/** How long the probe waits for a connection, a handshake or an answer. */
export const WAIT_MS = 5000;
export const NOT_REACHABLE = 'XKS_PROXY_NOT_REACHABLE';
export const TLS_ERR = 'XKS_PROXY_INVALID_TLS_CONFIGURATION';
export const BAD_RESPONSE = 'XKS_PROXY_INVALID_RESPONSE';
export const TIMED_OUT = 'XKS_PROXY_TIMED_OUT';

export interface Reply {
  status: number;
  headers: IncomingMessage['headers'];
  json: Record<string, unknown> | undefined;
  ms: number;
}

export type Json = Record<string, unknown>;

/** The ConnectionErrorCode (or key error) of an error answer, and the fix. */
export function answerError(r: Reply, keyCall: boolean): { kms: string; fix: string } {
  const name = typeof r.json?.errorName === 'string' ? r.json.errorName : '';
  if (r.status === 401)
    return {
      kms: 'INVALID_CREDENTIALS',
      fix: 'give KMS the access key id and secret of the key store this URI path names (xks-proxy kms-config), and check the clocks',
    };
  if (r.status === 403)
    return { kms: 'XKS_PROXY_ACCESS_DENIED', fix: 'check the secondary authorization (Oso policy) and the mTLS client name' };
  if (name === 'InvalidUriPathException')
    return { kms: 'XKS_PROXY_INVALID_CONFIGURATION', fix: 'make XksProxyUriPath "<uri_path_prefix>/kms/xks/v1" of a configured key store' };
  if (keyCall && name === 'KeyNotFoundException')
    return {
      kms: 'XksKeyNotFoundException (CreateKey); KMSInvalidStateException (use)',
      fix: "list the key id in the key store's xks_key_id_set and create it in the HSM (xks-proxy doctor FILE checks both)",
    };
  if (name === 'DependencyTimeoutException')
    return { kms: TIMED_OUT, fix: "the HSM answered too slowly: see xks-proxy doctor FILE's latency" };
  if (keyCall && (name === 'InvalidKeyUsageException' || name === 'InvalidStateException'))
    return {
      kms: 'XksKeyInvalidConfigurationException (CreateKey); KMSInvalidStateException (use)',
      fix: 'the key needs CKA_ENCRYPT and CKA_DECRYPT and must be enabled',
    };
  return { kms: BAD_RESPONSE, fix: "see the proxy's log for this request" };
}

const str = (o: Json, k: string): boolean => typeof o[k] === 'string' && o[k] !== '';

/** The response-field problems of GetHealthStatus (empty when it follows the spec). */
export function healthFields(j: Json): string[] {
  const bad: string[] = [];
  if (!Number.isInteger(j.xksProxyFleetSize) || (j.xksProxyFleetSize as number) < 1) bad.push('xksProxyFleetSize is not an integer > 0');
  for (const k of ['xksProxyVendor', 'xksProxyModel', 'ekmVendor']) if (!str(j, k)) bad.push(`${k} is missing or not a string`);
  const fleet = j.ekmFleetDetails;
  if (!Array.isArray(fleet) || fleet.length < 1 || fleet.length > 10) bad.push('ekmFleetDetails is not an array of 1..10 entries');
  else
    fleet.forEach((e: unknown, i) => {
      const o = (e ?? {}) as Json;
      if (!str(o, 'id') || !str(o, 'model')) bad.push(`ekmFleetDetails[${i}] lacks id or model`);
      if (!['ACTIVE', 'DEGRADED', 'UNAVAILABLE'].includes(o.healthStatus as string))
        bad.push(`ekmFleetDetails[${i}].healthStatus is not ACTIVE, DEGRADED or UNAVAILABLE`);
    });
  return bad;
}

export function b64(j: Json, k: string, sizes?: readonly number[]): Buffer | string {
  const v = j[k];
  if (typeof v !== 'string') return `${k} is missing or not a string`;
  const b = decodeBase64Strict(v);
  if (b === undefined) return `${k} is not Base64`;
  if (sizes !== undefined && !sizes.includes(b.length)) return `${k} is ${b.length} bytes, not ${sizes.join(' or ')}`;
  return b;
}

/**
 * The problems of an Encrypt answer to `plaintext` with `aad` and CDIV requested (empty when it
 * follows the spec), and the IV and metadata lengths when it does.
 */
export function encryptProblems(
  enc: Json,
  plaintext: Buffer,
  aad: Buffer,
): { problems: string[]; ivBytes: number; ctmBytes: number | undefined } {
  const ct = b64(enc, 'ciphertext');
  const iv = b64(enc, 'initializationVector', [12, 16]);
  const tag = b64(enc, 'authenticationTag', [16]);
  const ctm = enc.ciphertextMetadata === undefined ? undefined : b64(enc, 'ciphertextMetadata');
  const cdiv = b64(enc, 'ciphertextDataIntegrityValue', [32]);
  const bad = [ct, iv, tag, ctm, cdiv].filter((x): x is string => typeof x === 'string');
  if (Buffer.isBuffer(ct) && ct.length !== plaintext.length)
    bad.push(`ciphertext is ${ct.length} bytes for ${plaintext.length} bytes of plaintext`);
  if (Buffer.isBuffer(ctm) && ctm.length > 20) bad.push(`ciphertextMetadata is ${ctm.length} bytes, more than 20`);
  if (bad.length === 0 && Buffer.isBuffer(iv) && iv.every((b) => b === 0)) bad.push('initializationVector is all zero');
  if (bad.length === 0) {
    const expected = cdivSha256(aad, ctm as Buffer | undefined, iv as Buffer, ct as Buffer, tag as Buffer);
    if (expected !== enc.ciphertextDataIntegrityValue)
      bad.push('ciphertextDataIntegrityValue is not SHA-256(aad || metadata || iv || ciphertext || tag)');
  }
  return { problems: bad, ivBytes: Buffer.isBuffer(iv) ? iv.length : 0, ctmBytes: Buffer.isBuffer(ctm) ? ctm.length : undefined };
}
