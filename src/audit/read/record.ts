/**
 * One line of an audit trail as a reader sees it (docs/audit.md, the format contract v1): the three
 * record types with their fields checked for presence and type. A reader never re-serializes a line;
 * hashes are over the bytes as written (see trail-files.ts).
 */
import type { AuditUse } from '../record.js';

export interface CommonFields {
  v: 1;
  seq: number;
  time: string;
  instance: string;
  prev: string;
}

export type StartReason = 'first' | 'restart' | 'rotate' | 'torn';

export interface StartRecord extends CommonFields {
  type: 'start';
  reason: StartReason;
  previousFile?: string;
  previousHash?: string;
  tornBytes?: number;
  host: string;
  version: string;
  hmacKeyId: string;
}

/** A key use: the writer's fields (src/audit/record.ts, AuditUse) as read back. */
export interface UseRecord extends CommonFields, Omit<AuditUse, 'client'> {
  type: 'use';
  client: string;
}

export interface CheckpointRecord extends CommonFields {
  type: 'checkpoint';
  records: number;
  head: string;
  hmacKeyId: string;
  hmac: string;
}

export type AuditRecord = StartRecord | UseRecord | CheckpointRecord;

const HASH = /^[0-9a-f]{64}$/;
const TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/;
const REASONS: readonly string[] = ['first', 'restart', 'rotate', 'torn'];

type Kind = 'string' | 'integer' | 'hash';
const COMMON: Record<string, Kind> = { seq: 'integer', time: 'string', instance: 'string', prev: 'hash' };
const REQUIRED: Record<AuditRecord['type'], Record<string, Kind>> = {
  start: { reason: 'string', host: 'string', version: 'string', hmacKeyId: 'string' },
  use: {
    prefix: 'string',
    keyId: 'string',
    operation: 'string',
    outcome: 'string',
    status: 'integer',
    micros: 'integer',
    client: 'string',
  },
  checkpoint: { records: 'integer', head: 'hash', hmacKeyId: 'string', hmac: 'string' },
};
const OPTIONAL: Record<AuditRecord['type'], Record<string, Kind>> = {
  start: { previousFile: 'string', previousHash: 'hash', tornBytes: 'integer' },
  use: {
    kmsRequestId: 'string',
    kmsOperation: 'string',
    awsPrincipalArn: 'string',
    kmsKeyArn: 'string',
    kmsViaService: 'string',
    awsSourceVpc: 'string',
    awsSourceVpce: 'string',
    accessKeyId: 'string',
  },
  checkpoint: {},
};

function fits(value: unknown, kind: Kind): boolean {
  if (kind === 'integer') return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
  if (kind === 'hash') return typeof value === 'string' && HASH.test(value);
  return typeof value === 'string';
}

/** Per type: the required and the optional fields with their kinds (computed once). */
const CHECKS = Object.fromEntries(
  (['start', 'use', 'checkpoint'] as const).map((t) => [
    t,
    { required: Object.entries({ ...COMMON, ...REQUIRED[t] }), optional: Object.entries(OPTIONAL[t]) },
  ]),
) as Record<AuditRecord['type'], { required: [string, Kind][]; optional: [string, Kind][] }>;

/** The record on this line, or why it is not one (a problem for an "edited" verdict). */
export function parseRecord(text: string): AuditRecord | string {
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch {
    return 'not JSON';
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) return 'not a JSON object';
  const r = o as Record<string, unknown>;
  if (r['v'] !== 1) return 'v is not 1';
  const type = r['type'];
  if (type !== 'start' && type !== 'use' && type !== 'checkpoint') return 'unknown type';
  const keys = Object.keys(r);
  if (keys[keys.length - 1] !== 'prev') return 'prev is not the last field';
  const checks = CHECKS[type];
  for (const [k, kind] of checks.required) {
    if (!fits(r[k], kind)) return `${k} is missing or not a${kind === 'integer' ? 'n integer' : ` ${kind}`}`;
  }
  for (const [k, kind] of checks.optional) {
    if (k in r && !fits(r[k], kind)) return `${k} is not a${kind === 'integer' ? 'n integer' : ` ${kind}`}`;
  }
  if (!TIME.test(r['time'] as string)) return 'time is not RFC 3339 UTC with microseconds';
  if (type === 'start' && !REASONS.includes(r['reason'] as string)) return 'unknown start reason';
  if (type === 'checkpoint' && !/^[0-9a-f]{64}$/.test(r['hmac'] as string)) return 'hmac is not 64 hex digits';
  return r as unknown as AuditRecord;
}

/** Microseconds since the epoch of a record's `time` (or of any RFC 3339 time with up to 6 decimals). */
export function timeMicros(time: string): number | undefined {
  const m = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,6}))?(Z|[+-]\d{2}:\d{2})$/.exec(time);
  if (!m) return undefined;
  const ms = Date.parse(`${m[1]}${m[3]}`);
  if (Number.isNaN(ms)) return undefined;
  return ms * 1000 + Number((m[2] ?? '').padEnd(6, '0'));
}
