/**
 * CloudTrail input for reconcile: the JSON `aws cloudtrail lookup-events` prints (Events[], each with
 * the event as a JSON string in CloudTrailEvent) and the files an S3 trail delivers (Records[], plain
 * or .gz). Kept: AWS KMS events, each with its requestID (the kmsRequestId KMS sends the proxy in
 * requestMetadata), and whether it is a cryptographic operation on a key in an external key store
 * (additionalEventData.customKeyStoreId with xksKeyId, as AWS KMS logs such events).
 */
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { timeMicros } from './record.js';
import { TrailReadError } from './trail-files.js';

/** KMS operations that reach an XKS proxy as Encrypt or Decrypt. */
export const KEY_USE_EVENTS: readonly string[] = [
  'Encrypt',
  'Decrypt',
  'ReEncrypt',
  'GenerateDataKey',
  'GenerateDataKeyWithoutPlaintext',
  'GenerateDataKeyPair',
  'GenerateDataKeyPairWithoutPlaintext',
];

export interface KmsEvent {
  requestID: string;
  eventName: string;
  /** As CloudTrail gives it (second resolution). */
  eventTime: string;
  micros: number;
  principal: string | undefined;
  keyArn: string | undefined;
  customKeyStoreId: string | undefined;
  xksKeyId: string | undefined;
  errorCode: string | undefined;
  /** A key-use operation on a KMS key in an external key store. */
  xksKeyUse: boolean;
  source: string;
}

type Json = Record<string, unknown>;
const obj = (v: unknown): Json | undefined => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Json) : undefined);
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

function keyArnOf(e: Json): string | undefined {
  const resources = Array.isArray(e['resources']) ? e['resources'] : [];
  for (const r of resources) {
    const arn = str(obj(r)?.['ARN']);
    if (arn !== undefined && obj(r)?.['type'] === 'AWS::KMS::Key') return arn;
  }
  return str(obj(e['requestParameters'])?.['keyId']);
}

function toEvent(e: Json, source: string): KmsEvent | undefined {
  if (e['eventSource'] !== 'kms.amazonaws.com') return undefined;
  const requestID = str(e['requestID']);
  const eventName = str(e['eventName']);
  const eventTime = str(e['eventTime']);
  if (requestID === undefined || eventName === undefined || eventTime === undefined) return undefined;
  const micros = timeMicros(eventTime);
  if (micros === undefined) return undefined;
  const extra = obj(e['additionalEventData']);
  const customKeyStoreId = str(extra?.['customKeyStoreId']);
  const xksKeyId = str(extra?.['xksKeyId']);
  return {
    requestID,
    eventName,
    eventTime,
    micros,
    principal: str(obj(e['userIdentity'])?.['arn']),
    keyArn: keyArnOf(e),
    customKeyStoreId,
    xksKeyId,
    errorCode: str(e['errorCode']),
    xksKeyUse: KEY_USE_EVENTS.includes(eventName) && customKeyStoreId !== undefined && xksKeyId !== undefined,
    source,
  };
}

/** The KMS events of one file (either shape). */
export function readCloudTrail(file: string): KmsEvent[] {
  let text: string;
  try {
    const bytes = readFileSync(file);
    text = (bytes[0] === 0x1f && bytes[1] === 0x8b ? gunzipSync(bytes) : bytes).toString('utf8');
  } catch (e) {
    throw new TrailReadError(`${file}: ${(e as NodeJS.ErrnoException).code ?? 'cannot read'}`);
  }
  let doc: Json | undefined;
  try {
    doc = obj(JSON.parse(text));
  } catch {
    throw new TrailReadError(`${file}: not JSON`);
  }
  const raw: unknown[] = [];
  if (Array.isArray(doc?.['Records'])) raw.push(...(doc['Records'] as unknown[]));
  else if (Array.isArray(doc?.['Events'])) {
    for (const ev of doc['Events'] as unknown[]) {
      const s = str(obj(ev)?.['CloudTrailEvent']);
      if (s === undefined) continue;
      try {
        raw.push(JSON.parse(s));
      } catch {
        throw new TrailReadError(`${file}: an Events[].CloudTrailEvent is not JSON`);
      }
    }
  } else throw new TrailReadError(`${file}: neither Records[] (an S3 trail file) nor Events[] (lookup-events output)`);
  const out: KmsEvent[] = [];
  for (const r of raw) {
    const o = obj(r);
    const e = o === undefined ? undefined : toEvent(o, file);
    if (e !== undefined) out.push(e);
  }
  return out;
}
