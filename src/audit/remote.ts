/**
 * The audit trail across event loops: a worker thread's sink forwards its records to the main
 * thread's one writer over the worker's port (batched per turn of its loop) and gets back, for
 * the records a 200 waits for, whether they were written; the writer's state (writable or not)
 * is pushed to every worker on each change.
 */
import type { AuditSink, Written } from './sink.js';
import type { AuditWriter } from './writer.js';

/** Worker -> main. */
export interface AuditRecordsMessage {
  type: 'audit';
  /** useFields() fragments, and per record an id (0: nobody waits for it). */
  fields: string[];
  ids: number[];
}
export interface AuditServedWithoutMessage {
  type: 'audit-served-without';
}
/** Main -> worker. */
export interface AuditWrittenMessage {
  type: 'audit-written';
  ids: number[];
  ok: boolean[];
}
export interface AuditStateMessage {
  type: 'audit-state';
  failed: boolean;
}

/** What a worker thread is told of the trail at its start. */
export interface AuditInit {
  waitsForDisk: boolean;
  failClosed: boolean;
  failed: boolean;
}

export function auditInit(w: AuditWriter): AuditInit {
  return { waitsForDisk: w.waitsForDisk, failClosed: w.failClosed, failed: w.failed() };
}

/** A worker thread's sink. */
export class RemoteAuditSink implements AuditSink {
  readonly waitsForDisk: boolean;
  readonly failClosed: boolean;
  private broken: boolean;
  private nextId = 1;
  private fields: string[] = [];
  private ids: number[] = [];
  private readonly waiting = new Map<number, Written>();
  private scheduled = false;

  constructor(
    init: AuditInit,
    private readonly send: (m: AuditRecordsMessage | AuditServedWithoutMessage) => void,
  ) {
    this.waitsForDisk = init.waitsForDisk;
    this.failClosed = init.failClosed;
    this.broken = init.failed;
  }

  failed(): boolean {
    return this.broken;
  }

  record(fields: string, written?: Written): void {
    let id = 0;
    if (written !== undefined) {
      id = this.nextId++;
      this.waiting.set(id, written);
    }
    this.fields.push(fields);
    this.ids.push(id);
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      const m: AuditRecordsMessage = { type: 'audit', fields: this.fields, ids: this.ids };
      this.fields = [];
      this.ids = [];
      this.send(m);
    });
  }

  servedWithout(): void {
    this.send({ type: 'audit-served-without' });
  }

  /** A message of the main thread's writer. */
  receive(m: AuditWrittenMessage | AuditStateMessage): void {
    if (m.type === 'audit-state') {
      this.broken = m.failed;
      return;
    }
    m.ids.forEach((id, i) => {
      const w = this.waiting.get(id);
      if (w === undefined) return;
      this.waiting.delete(id);
      w(m.ok[i] === true);
    });
  }
}

/** The main thread's end of one worker's port: its records into the writer, the answers back. */
export class AuditBridge {
  private ids: number[] = [];
  private ok: boolean[] = [];
  private scheduled = false;

  constructor(
    private readonly writer: AuditWriter,
    private readonly post: (m: AuditWrittenMessage) => void,
  ) {}

  receive(m: AuditRecordsMessage | AuditServedWithoutMessage): void {
    if (m.type === 'audit-served-without') {
      this.writer.servedWithout();
      return;
    }
    m.fields.forEach((fields, i) => {
      const id = m.ids[i]!;
      if (id === 0) this.writer.record(fields);
      else this.writer.record(fields, (ok) => this.answer(id, ok));
    });
  }

  private answer(id: number, ok: boolean): void {
    this.ids.push(id);
    this.ok.push(ok);
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      const ids = this.ids;
      const oks = this.ok;
      this.ids = [];
      this.ok = [];
      this.post({ type: 'audit-written', ids, ok: oks });
    });
  }
}
