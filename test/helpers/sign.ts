/**
 * Signs a request the way AWS KMS does (SigV4, headers host + x-amz-date [+ content-type
 * and any extra headers given]), with the real AWS SDK signer.
 */
import { SignatureV4 } from '@smithy/signature-v4';
import { Sha256 } from '@aws-crypto/sha256-js';

export interface SignRequestOptions {
  /** Full URL, e.g. http://127.0.0.1:8000/kms/xks/v1/health (a query string is signed too). */
  url: string;
  body: string | Buffer;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
  service: string;
  /** Signing time; default now. */
  date?: Date;
  /** Extra headers to send and sign (names are lower-cased). May override content-type. */
  headers?: Record<string, string>;
  /** HTTP method; default POST. */
  method?: string;
  /** Also send and sign x-amz-content-sha256 (the SDK default; KMS does not). Default false. */
  contentSha256?: boolean;
  /** Headers (lower-case names) to send but leave out of SignedHeaders, e.g. ['content-type'] for KMS's exact host;x-amz-date. */
  unsignedHeaders?: string[];
}

/**
 * Returns every header to send: host, content-type (application/json), x-amz-date,
 * authorization, the extra headers and, if asked, x-amz-content-sha256.
 */
export async function signRequest(opts: SignRequestOptions): Promise<{ headers: Record<string, string> }> {
  const url = new URL(opts.url);
  const query: Record<string, string | string[]> = {};
  for (const [k, v] of url.searchParams) {
    const prev = query[k];
    if (prev === undefined) query[k] = v;
    else query[k] = Array.isArray(prev) ? [...prev, v] : [prev, v];
  }
  const headers: Record<string, string> = { host: url.host, 'content-type': 'application/json' };
  for (const [k, v] of Object.entries(opts.headers ?? {})) headers[k.toLowerCase()] = v;

  const signer = new SignatureV4({
    credentials: { accessKeyId: opts.accessKeyId, secretAccessKey: opts.secretAccessKey },
    region: opts.region,
    service: opts.service,
    sha256: Sha256,
    applyChecksum: opts.contentSha256 === true,
  });
  const signed = await signer.sign(
    {
      method: opts.method ?? 'POST',
      protocol: url.protocol,
      hostname: url.hostname,
      port: url.port === '' ? undefined : Number(url.port),
      path: url.pathname,
      query,
      headers,
      body: typeof opts.body === 'string' ? opts.body : new Uint8Array(opts.body),
    },
    {
      signingDate: opts.date ?? new Date(),
      ...(opts.unsignedHeaders ? { unsignableHeaders: new Set(opts.unsignedHeaders.map((h) => h.toLowerCase())) } : {}),
    },
  );
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(signed.headers)) out[k.toLowerCase()] = String(v);
  return { headers: out };
}
