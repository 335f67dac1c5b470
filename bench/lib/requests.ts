/** Request pools: distinct, pre-signed XKS requests as raw HTTP/1.1 bytes. */
import { randomBytes, randomUUID } from 'node:crypto';
import type { SignatureV4 } from '@smithy/signature-v4';
import { rawRequest, signPost } from './sign.js';

export const PRINCIPAL = 'arn:aws:iam::123456789012:role/bench';
export const KEY_ARN = 'arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab';

/** An Encrypt body; `cdiv`: asks for the ciphertext data integrity value (SHA_256). */
export function encryptBody(plaintext: Buffer, aad: Buffer, op = 'GenerateDataKey', cdiv = false): string {
  return JSON.stringify({
    requestMetadata: { awsPrincipalArn: PRINCIPAL, kmsKeyArn: KEY_ARN, kmsOperation: op, kmsRequestId: randomUUID() },
    plaintext: plaintext.toString('base64'),
    additionalAuthenticatedData: aad.toString('base64'),
    encryptionAlgorithm: 'AES_GCM',
    ...(cdiv ? { ciphertextDataIntegrityValueAlgorithm: 'SHA_256' } : {}),
  });
}

/** A GetKeyMetadata body (KMS DescribeKey). */
export function metadataBody(): string {
  return JSON.stringify({
    requestMetadata: { awsPrincipalArn: PRINCIPAL, kmsKeyArn: KEY_ARN, kmsOperation: 'DescribeKey', kmsRequestId: randomUUID() },
  });
}

/** A GetHealthStatus body (KMS CreateCustomKeyStore). */
export function healthBody(): string {
  return JSON.stringify({ requestMetadata: { kmsOperation: 'CreateCustomKeyStore', kmsRequestId: randomUUID() } });
}

export interface Sealed {
  ciphertext: string;
  initializationVector: string;
  authenticationTag: string;
  aad: string;
}

export function decryptBody(s: Sealed): string {
  return JSON.stringify({
    requestMetadata: { awsPrincipalArn: PRINCIPAL, kmsKeyArn: KEY_ARN, kmsOperation: 'Decrypt', kmsRequestId: randomUUID() },
    ciphertext: s.ciphertext,
    additionalAuthenticatedData: s.aad,
    encryptionAlgorithm: 'AES_GCM',
    initializationVector: s.initializationVector,
    authenticationTag: s.authenticationTag,
  });
}

export interface SignedRequest {
  path: string;
  body: string;
  headers: Record<string, string>;
  raw: Buffer;
}

export async function signAll(signer: SignatureV4, host: string, path: string, bodies: string[]): Promise<SignedRequest[]> {
  const date = new Date();
  const out: SignedRequest[] = [];
  for (const body of bodies) {
    const headers = await signPost(signer, host, path, body, date);
    out.push({ path, body, headers, raw: rawRequest(path, headers, body) });
  }
  return out;
}

export function encryptBodies(n: number, plaintextBytes: number, aadBytes: number, cdiv = false): string[] {
  const bodies: string[] = [];
  for (let i = 0; i < n; i++) bodies.push(encryptBody(randomBytes(plaintextBytes), randomBytes(aadBytes), 'GenerateDataKey', cdiv));
  return bodies;
}

/** Sends signed requests with fetch (a few at a time) and returns the parsed JSON answers. */
export async function sendAll(base: string, reqs: SignedRequest[], concurrency = 16): Promise<Record<string, unknown>[]> {
  const out: Record<string, unknown>[] = new Array(reqs.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < reqs.length) {
      const i = next++;
      const r = reqs[i]!;
      const headers = { ...r.headers };
      delete headers.host;
      const res = await fetch(base + r.path, { method: 'POST', headers, body: r.body });
      const text = await res.text();
      if (res.status !== 200) throw new Error(`${r.path}: HTTP ${res.status} ${text.slice(0, 300)}`);
      out[i] = JSON.parse(text) as Record<string, unknown>;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return out;
}
