/**
 * The audit trail's writer thread (build/Release/xks_audit.node, native/audit/): its control,
 * made once per process by the writer (src/audit/writer.ts), and the channel through which each
 * event loop hands it records (src/audit/channel.ts).
 */
import { loadBuilt } from '../native-build.js';
import type { ClientAddress } from './record.js';

export interface AuditLogOptions {
  /** before-response: the file is O_DSYNC and each group is written at once. */
  durable: boolean;
  /** batched: records wait up to this long for their write ... */
  writeMs: number;
  /** ... and a written file is synced this long after its first unsynced write. */
  syncMs: number;
  checkpointEvery: number;
  checkpointSecs: number;
  instance: string;
  /** Every written text also comes back as a "text" event (stdout = true). */
  copyOut: boolean;
  /** The writer's clock now (nowMicros()): the thread's time stamps follow it. */
  nowMicros: number;
}

/** What the writer thread asks of (or tells) its control. */
export type AuditEventKind = 'checkpoint' | 'end' | 'ended' | 'failed' | 'text';

/**
 * checkpoint: the HMAC of the head is wanted for the line at `seq` with `time` (answer resume());
 * end: the file ends here (`needsCheckpoint`: its last line is not one; answer finish());
 * ended: the file is written, synced and closed, `head` is its last line's hash;
 * failed: a write or sync failed (`text` its errno code); text: lines written (stdout = true).
 */
export type AuditEventHandler = (
  kind: AuditEventKind,
  epoch: number,
  seq: number,
  time: string,
  head: string,
  needsCheckpoint: boolean,
  text: string,
) => void;

export interface NativeAuditLog {
  /** What the channels of every event loop name to attach to it. */
  id(): number;
  /** Hands the thread a new file (`fd` is its own now): the next line has `seq`, `head` = hash of the start record. */
  useFile(epoch: number, fd: number, seq: number, headHex: string, periodEndsMicros: number): void;
  /** Answers "checkpoint": the checkpoint line, or null to skip it. */
  resume(epoch: number, line: string | null): void;
  /** Answers "end": a last checkpoint line, or null. */
  finish(epoch: number, line: string | null): void;
  /** A clean stop: once every queued record is written, "end". */
  requestEnd(): void;
  /** No next file could be made: queued records are lost, new ones refused until useFile(). */
  markBroken(): void;
  /** Keeps the event loop up while an answer of the thread is awaited. */
  ref(): void;
  unref(): void;
  close(): void;
}

/** What use() did with a record. */
export const USE_REFUSED = 0;
export const USE_QUEUED = 1;
/** A string needs JSON's escapes: nothing was queued, record(useFields()) instead. */
export const USE_NOT_PLAIN = 2;
export type UseResult = typeof USE_REFUSED | typeof USE_QUEUED | typeof USE_NOT_PLAIN;

export interface NativeAuditChannel {
  /**
   * Queues a use record from its fields' values, in useFields' order (src/audit/record.ts), framed
   * natively: no JavaScript string is built for it. id 0: nobody waits.
   */
  use(
    id: number,
    kmsRequestId: string | undefined,
    kmsOperation: string | undefined,
    awsPrincipalArn: string | undefined,
    kmsKeyArn: string | undefined,
    kmsViaService: string | undefined,
    awsSourceVpc: string | undefined,
    awsSourceVpce: string | undefined,
    prefix: string,
    keyId: string,
    operation: string,
    outcome: string,
    status: number,
    micros: number,
    accessKeyId: string | undefined,
    client: ClientAddress,
  ): UseResult;
  /** Queues a record's fields (a useFields() fragment); id 0: nobody waits. false: refused (the trail cannot be written). */
  record(fields: string, id: number): boolean;
  /** before-response: write what this loop queued (once per turn of the loop). */
  kick(): void;
  failed(): boolean;
  close(): void;
}

interface AuditAddon {
  AuditLog: new (options: AuditLogOptions, onEvent: AuditEventHandler) => NativeAuditLog;
  /** `onWritten` gets the ids of records now on disk (ok) or lost (not ok): the first `count` of `ids` (one array, reused). */
  AuditChannel: new (
    logId: number,
    onWritten: (ids: Uint32Array, count: number, ok: boolean) => void,
  ) => NativeAuditChannel;
}

let addon: AuditAddon | undefined;

export function auditAddon(): AuditAddon {
  addon ??= loadBuilt<AuditAddon>('xks_audit.node', 'the audit addon');
  return addon;
}
