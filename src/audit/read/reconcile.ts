/**
 * reconcile: the proxy's use records against CloudTrail's KMS events, matched by the KMS request id
 * (requestMetadata.kmsRequestId = the event's requestID). Reported: proxy uses with no KMS event (a
 * request that did not come from AWS KMS: a leaked SigV4 credential), KMS key-use events on external
 * key store keys the proxy never saw (within the trail's time span), and pairs whose operation or key
 * disagree. KMS's own health checks (GetHealthStatus) have no CloudTrail event and are not reconciled;
 * requests refused at authentication are counted, not listed as uses.
 */
import type { KmsEvent } from './cloudtrail.js';
import { timeMicros, type UseRecord } from './record.js';
import type { ListedUse } from './uses.js';

export interface Mismatch {
  use: ListedUse;
  event: KmsEvent;
  problem: string;
}

export interface Reconciliation {
  /** Proxy uses (Encrypt, Decrypt, GetKeyMetadata) matched to a KMS event. */
  matched: number;
  /** Proxy uses with no KMS event of that request id (or with no request id at all). */
  unmatchedUses: ListedUse[];
  /** KMS key-use events on XKS keys, within the trail's span, that no proxy record carries. */
  unseenEvents: KmsEvent[];
  /** The same, for events that failed in KMS (errorCode): KMS may have refused them before calling the proxy. */
  unseenFailedEvents: KmsEvent[];
  mismatches: Mismatch[];
  /** Requests refused by the SigV4 check (not key uses). */
  refused: number;
  /** KMS key-use events on XKS keys outside the trail's time span (not judged). */
  outsideSpan: number;
  /** The trail's span (microseconds), or undefined when it has no use record. */
  span: [number, number] | undefined;
}

/** Events up to this long after the trail's last record still count as inside it (KMS's timeout). */
const SPAN_SLACK_MICROS = 5_000_000;

const RECONCILED = new Set(['Encrypt', 'Decrypt', 'GetKeyMetadata']);

function refusedAtAuth(r: UseRecord): boolean {
  return r.outcome === 'AuthenticationFailedException' || r.status === 401;
}

/**
 * `customKeyStoreId`: when given, only events of that key store are expected at this proxy.
 */
export function reconcile(uses: readonly ListedUse[], events: readonly KmsEvent[], customKeyStoreId?: string): Reconciliation {
  const byId = new Map<string, KmsEvent[]>();
  for (const e of events) byId.set(e.requestID, [...(byId.get(e.requestID) ?? []), e]);
  const seen = new Set<string>();
  const out: Reconciliation = {
    matched: 0,
    unmatchedUses: [],
    unseenEvents: [],
    unseenFailedEvents: [],
    mismatches: [],
    refused: 0,
    outsideSpan: 0,
    span: undefined,
  };
  let lo = Number.POSITIVE_INFINITY;
  let hi = Number.NEGATIVE_INFINITY;
  for (const u of uses) {
    const r = u.record;
    const t = timeMicros(r.time);
    if (t !== undefined) {
      lo = Math.min(lo, t);
      hi = Math.max(hi, t);
    }
    if (!RECONCILED.has(r.operation)) continue;
    if (refusedAtAuth(r)) {
      out.refused++;
      continue;
    }
    const id = r.kmsRequestId;
    const found = id === undefined ? undefined : byId.get(id);
    if (found === undefined) {
      out.unmatchedUses.push(u);
      continue;
    }
    seen.add(id!);
    out.matched++;
    const e = found.find((x) => x.xksKeyUse) ?? found[0]!;
    if (r.kmsOperation !== undefined && r.kmsOperation !== e.eventName)
      out.mismatches.push({ use: u, event: e, problem: `the proxy was told ${r.kmsOperation}, CloudTrail says ${e.eventName}` });
    else if (e.xksKeyUse && e.xksKeyId !== undefined && !found.some((x) => x.xksKeyId === r.keyId))
      out.mismatches.push({ use: u, event: e, problem: `the proxy used key ${r.keyId}, CloudTrail says xksKeyId ${e.xksKeyId}` });
  }
  if (lo <= hi) out.span = [Math.floor(lo / 1_000_000) * 1_000_000, hi + SPAN_SLACK_MICROS];
  for (const e of events) {
    if (!e.xksKeyUse || seen.has(e.requestID)) continue;
    if (customKeyStoreId !== undefined && e.customKeyStoreId !== customKeyStoreId) continue;
    if (out.span === undefined || e.micros < out.span[0] || e.micros > out.span[1]) out.outsideSpan++;
    else if (e.errorCode !== undefined) out.unseenFailedEvents.push(e);
    else out.unseenEvents.push(e);
  }
  return out;
}
