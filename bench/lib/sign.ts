/**
 * Pre-signs requests the way AWS KMS does (SigV4, SignedHeaders host;x-amz-date,
 * content-type sent but unsigned) with the real AWS SDK signer. Bench-local copy of
 * test/helpers/sign.ts (test/ is not compiled).
 */
import { SignatureV4 } from '@smithy/signature-v4';
import { Sha256 } from '@aws-crypto/sha256-js';

export interface Credentials {
  accessKeyId: string;
  secretAccessKey: string;
}

export const REGION = 'us-east-1';
export const SERVICE = 'kms-xks-proxy';

/** One signer per credential (the signer caches derived keys). */
export function makeSigner(creds: Credentials): SignatureV4 {
  return new SignatureV4({ credentials: creds, region: REGION, service: SERVICE, sha256: Sha256, applyChecksum: false });
}

/** Returns the headers to send (lower-case names): host, content-type, x-amz-date, authorization. */
export async function signPost(
  signer: SignatureV4,
  host: string,
  urlPath: string,
  body: string,
  date: Date,
): Promise<Record<string, string>> {
  const [hostname, port] = host.split(':');
  const signed = await signer.sign(
    {
      method: 'POST',
      protocol: 'http:',
      hostname: hostname!,
      port: port === undefined ? undefined : Number(port),
      path: urlPath,
      query: {},
      headers: { host, 'content-type': 'application/json' },
      body,
    },
    { signingDate: date, unsignableHeaders: new Set(['content-type']) },
  );
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(signed.headers)) out[k.toLowerCase()] = String(v);
  return out;
}

/** The complete HTTP/1.1 request bytes for a signed POST with a JSON body. */
export function rawRequest(urlPath: string, headers: Record<string, string>, body: string): Buffer {
  const b = Buffer.from(body, 'utf8');
  let head = `POST ${urlPath} HTTP/1.1\r\n`;
  for (const [k, v] of Object.entries(headers)) {
    if (k === 'content-length') continue;
    head += `${k}: ${v}\r\n`;
  }
  head += `content-length: ${b.length}\r\n\r\n`;
  return Buffer.concat([Buffer.from(head, 'latin1'), b]);
}
