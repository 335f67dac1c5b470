/**
 * What the request pipeline sees of the audit trail, on every event loop: record a request, and
 * whether key use is refused now (fail-closed while the trail cannot be written). Every loop's sink
 * hands its records to the process's writer thread (src/audit/channel.ts); on the main thread the
 * writer's control (src/audit/writer.ts) is the sink and holds its own channel.
 */
import type { AuditUse } from './record.js';

/** `ok`: the record is written (durably, in the before-response mode); false: it could not be. */
export type Written = (ok: boolean) => void;

export interface AuditSink {
  /** before-response: a 200 waits for its record (record() with `written`). */
  readonly waitsForDisk: boolean;
  /** fail-closed: while the trail cannot be written, key-use requests are answered 500 instead. */
  readonly failClosed: boolean;
  /** The trail cannot be written now. */
  failed(): boolean;
  /** Records one request. `written`, when given, is called once its record is on disk (or cannot be). */
  record(use: AuditUse, written?: Written): void;
  /** Logs that a 200 went out without its record (fail-open), at most once a minute. */
  servedWithout(): void;
}

/** The errorMessage of key-use requests refused because the trail cannot be written (fail-closed). */
export const AUDIT_REFUSAL = 'The audit trail cannot be written: key use is refused until it can ([audit] on_failure = "fail-closed")';
