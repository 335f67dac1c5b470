/**
 * The listing: the use records of a trail that match an auditor's question ("every use of key K by
 * principal P in March"): a time window, a key (the XKS key id or the KMS key ARN), a principal ARN,
 * an XKS operation. Records come in chain order with their file and line, up to the first break.
 */
import { timeMicros, type UseRecord } from './record.js';
import type { UseSink } from './verify.js';

export interface UseFilter {
  /** Inclusive, microseconds since the epoch. */
  since?: number;
  /** Exclusive. */
  until?: number;
  /** Matches `keyId` or `kmsKeyArn` (or the key id at the end of the ARN). */
  key?: string;
  principal?: string;
  operation?: string;
}

export interface ListedUse {
  file: string;
  line: number;
  record: UseRecord;
}

/**
 * A bound as the command line gives it: RFC 3339 (offset or Z, seconds optional), or a UTC date
 * YYYY-MM-DD, or a UTC month YYYY-MM (its first instant). Undefined when it is none of these.
 */
export function parseBound(s: string): number | undefined {
  if (/^\d{4}-\d{2}$/.test(s)) return timeMicros(`${s}-01T00:00:00Z`);
  if (/^\d{4}-\d{2}-\d{2}$/.test(s)) return timeMicros(`${s}T00:00:00Z`);
  const m = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2})(Z|[+-]\d{2}:\d{2})$/.exec(s);
  if (m) return timeMicros(`${m[1]}:00${m[2]}`);
  return timeMicros(s);
}

function keyMatches(r: UseRecord, key: string): boolean {
  if (r.keyId === key || r.kmsKeyArn === key) return true;
  return r.kmsKeyArn?.endsWith(`:key/${key}`) === true;
}

export function matches(r: UseRecord, q: UseFilter): boolean {
  const t = timeMicros(r.time);
  if (t === undefined) return false;
  if (q.since !== undefined && t < q.since) return false;
  if (q.until !== undefined && t >= q.until) return false;
  if (q.key !== undefined && !keyMatches(r, q.key)) return false;
  if (q.principal !== undefined && r.awsPrincipalArn !== q.principal) return false;
  if (q.operation !== undefined && r.operation !== q.operation) return false;
  return true;
}

/** Collects the matching uses the verifier's walk passes (chain order; it stops at a break). */
export function collectUses(q: UseFilter): { sink: UseSink; uses: ListedUse[] } {
  const uses: ListedUse[] = [];
  return {
    uses,
    sink: (file, line, record) => {
      if (matches(record, q)) uses.push({ file, line, record });
    },
  };
}

/** One human line per use: time, operation, outcome, key, principal, KMS request id, where. */
export function formatUse(u: ListedUse): string {
  const r = u.record;
  return [
    r.time,
    r.operation,
    r.outcome,
    `key=${r.keyId || '-'}`,
    `principal=${r.awsPrincipalArn ?? '-'}`,
    `kmsRequestId=${r.kmsRequestId ?? '-'}`,
    `kmsOperation=${r.kmsOperation ?? '-'}`,
    `${u.file}:${u.line}`,
  ].join(' ');
}
