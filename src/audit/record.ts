/**
 * The audit trail's lines (format v1, docs/audit.md): the fields of each record type in their
 * order, the time stamp, the chain hash and the checkpoint's HMAC message. Lines are made by
 * JSON.stringify of objects built in that order; absent optional fields are left out.
 */
import { hash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { RequestMetadata } from '../validate.js';

/** `prev` of the very first line of a trail. */
export const GENESIS = '0'.repeat(64);

/** The client's address: its text, or that text's bytes as uWS gives them (ASCII). */
export type ClientAddress = string | ArrayBuffer;

/**
 * What the pipeline knows of one request (no plaintext, AAD, ciphertext, IV, tag or secret): its
 * requestMetadata when it could be read, and the rest.
 */
export interface AuditUse extends Partial<RequestMetadata> {
  prefix: string;
  keyId: string;
  operation: string;
  outcome: string;
  status: number;
  micros: number;
  accessKeyId?: string | undefined;
  client: ClientAddress;
}

export type StartReason = 'first' | 'restart' | 'rotate' | 'torn';

export interface StartFields {
  reason: StartReason;
  previousFile?: string | undefined;
  previousHash?: string | undefined;
  tornBytes?: number | undefined;
  host: string;
  version: string;
  hmacKeyId: string;
}

/** Fields every record begins with. */
export interface Common {
  seq: number;
  time: string;
  instance: string;
}

/** Lowercase hex SHA-256 of a line's bytes (without its "\n"). */
export function lineHash(line: string): string {
  return hash('sha256', line, 'hex');
}

/** Microseconds since the epoch: the wall clock at process start plus the monotonic clock since. */
export function nowMicros(): number {
  return Math.floor((performance.timeOrigin + performance.now()) * 1000);
}

/** The last second rfc3339Micros formatted, and its text up to the "." (one Date per second, not per record). */
let cachedSecond = Number.NaN;
let cachedPrefix = '';

/** RFC 3339 UTC with microseconds: "2026-12-02T00:05:17.123456Z". */
export function rfc3339Micros(epochMicros: number): string {
  const second = Math.floor(epochMicros / 1_000_000);
  if (second !== cachedSecond) {
    cachedPrefix = new Date(second * 1000).toISOString().slice(0, 20); // ...T00:05:17.
    cachedSecond = second;
  }
  return `${cachedPrefix}${String(epochMicros - second * 1_000_000).padStart(6, '0')}Z`;
}

/** The bytes a checkpoint's HMAC covers. */
export function checkpointMessage(fileName: string, seq: number, time: string, head: string): Buffer {
  return Buffer.from(`xks-proxy-audit-v1\n${fileName}\n${seq}\n${time}\n${head}`, 'utf8');
}

function put(o: Record<string, unknown>, key: string, v: string | number | undefined): void {
  if (v !== undefined) o[key] = v;
}

function common(type: string, c: Common): Record<string, unknown> {
  return { v: 1, type, seq: c.seq, time: c.time, instance: c.instance };
}

export function startLine(c: Common, s: StartFields, prev: string): string {
  const o = common('start', c);
  o.reason = s.reason;
  put(o, 'previousFile', s.previousFile);
  put(o, 'previousHash', s.previousHash);
  put(o, 'tornBytes', s.tornBytes);
  o.host = s.host;
  o.version = s.version;
  o.hmacKeyId = s.hmacKeyId;
  o.prev = prev;
  return JSON.stringify(o);
}

/** Printable ASCII but `"` and `\\`: JSON.stringify only adds the quotes (native/audit/addon.cc, Plain, is its twin). */
export const PLAIN = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/;

/** JSON.stringify(s), without its work for the usual case (ids, ARNs, addresses). */
function str(s: string): string {
  return PLAIN.test(s) ? `"${s}"` : JSON.stringify(s);
}

function opt(key: string, v: string | undefined): string {
  return v === undefined ? '' : `"${key}":${str(v)},`;
}

function clientText(c: ClientAddress): string {
  return typeof c === 'string' ? c : Buffer.from(c).toString('latin1');
}

/**
 * The use-specific fields of a record as a JSON fragment (`"kmsRequestId":...,"client":"..."`):
 * the bytes JSON.stringify gives for these fields in this order, without building an object for it
 * (test/audit-record.test.ts compares the two). The writer thread frames it (native/audit/log.cc)
 * as `{"v":1,"type":"use","seq":..,"time":"..","instance":"..",<fields>,"prev":".."}`. A channel
 * makes the same bytes natively from the values (NativeAuditChannel.use()); this is the way for
 * records with a string that needs JSON's escapes.
 */
export function useFields(u: AuditUse): string {
  return `${opt('kmsRequestId', u.kmsRequestId)}${opt('kmsOperation', u.kmsOperation)}${opt('awsPrincipalArn', u.awsPrincipalArn)}${opt('kmsKeyArn', u.kmsKeyArn)}${opt('kmsViaService', u.kmsViaService)}${opt('awsSourceVpc', u.awsSourceVpc)}${opt('awsSourceVpce', u.awsSourceVpce)}"prefix":${str(u.prefix)},"keyId":${str(u.keyId)},"operation":${str(u.operation)},"outcome":${str(u.outcome)},"status":${JSON.stringify(u.status)},"micros":${JSON.stringify(u.micros)},${opt('accessKeyId', u.accessKeyId)}"client":${str(clientText(u.client))}`;
}

export function checkpointLine(c: Common, hmacKeyId: string, hmac: string, head: string): string {
  const o = common('checkpoint', c);
  o.records = c.seq;
  o.head = head;
  o.hmacKeyId = hmacKeyId;
  o.hmac = hmac;
  o.prev = head;
  return JSON.stringify(o);
}
