/**
 * The signing side of SigV4, as AWS KMS signs XKS requests: POST, headers host and x-amz-date
 * signed (content-type sent unsigned), service kms-xks-proxy. The doctor's remote probe uses it;
 * the canonical URI is the verifier's (src/sigv4.ts), so both sides encode paths alike.
 */
import { createHash, createHmac } from 'node:crypto';
import { canonicalUri, SIGV4_ALGORITHM } from '../sigv4.js';

export interface SignInput {
  host: string;
  path: string;
  body: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
  service: string;
  date: Date;
}

const hmac = (key: Buffer | string, data: string): Buffer => createHmac('sha256', key).update(data, 'utf8').digest();
const sha256Hex = (data: string): string => createHash('sha256').update(data, 'utf8').digest('hex');

/** `20260102T030405Z` */
export function amzDate(d: Date): string {
  return d
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}/, '');
}

/** The headers to send: host, x-amz-date, content-type and authorization. */
export function signKmsRequest(i: SignInput): Record<string, string> {
  const date = amzDate(i.date);
  const day = date.slice(0, 8);
  const canonical = [
    'POST',
    canonicalUri(i.path),
    '',
    `host:${i.host}`,
    `x-amz-date:${date}`,
    '',
    'host;x-amz-date',
    sha256Hex(i.body),
  ].join('\n');
  const scope = `${day}/${i.region}/${i.service}/aws4_request`;
  const toSign = [SIGV4_ALGORITHM, date, scope, sha256Hex(canonical)].join('\n');
  const key = hmac(hmac(hmac(hmac(`AWS4${i.secretAccessKey}`, day), i.region), i.service), 'aws4_request');
  const signature = createHmac('sha256', key).update(toSign, 'utf8').digest('hex');
  return {
    host: i.host,
    'x-amz-date': date,
    'content-type': 'application/json',
    authorization: `${SIGV4_ALGORITHM} Credential=${i.accessKeyId}/${scope}, SignedHeaders=host;x-amz-date, Signature=${signature}`,
  };
}
