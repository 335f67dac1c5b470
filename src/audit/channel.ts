/**
 * One event loop's sink of the audit trail: its records go straight to the writer thread
 * (src/audit/native.ts), which calls back on this loop once they are on disk. The same on the
 * main thread and on every worker thread.
 */
import { auditAddon, type NativeAuditChannel, USE_NOT_PLAIN, USE_QUEUED, USE_REFUSED, type UseResult } from './native.js';
import { type AuditUse, useFields } from './record.js';
import type { AuditSink, Written } from './sink.js';
import { Waiting } from './waiting.js';

/** What a worker thread is told of the trail at its start. */
export interface AuditInit {
  /** The process's writer thread (NativeAuditLog.id()). */
  logId: number;
  waitsForDisk: boolean;
  failClosed: boolean;
}

/** Worker -> main: a 200 went out without its record (fail-open); the writer logs it. */
export interface AuditServedWithoutMessage {
  type: 'audit-served-without';
}

/** Hands `u`'s values to the native framing (NativeAuditChannel.use()); USE_NOT_PLAIN: use record(useFields(u)). */
export function useValues(c: NativeAuditChannel, u: AuditUse, id: number): UseResult {
  return c.use(
    id,
    u.kmsRequestId,
    u.kmsOperation,
    u.awsPrincipalArn,
    u.kmsKeyArn,
    u.kmsViaService,
    u.awsSourceVpc,
    u.awsSourceVpce,
    u.prefix,
    u.keyId,
    u.operation,
    u.outcome,
    u.status,
    u.micros,
    u.accessKeyId,
    u.client,
  );
}

export class ChannelSink implements AuditSink {
  readonly waitsForDisk: boolean;
  readonly failClosed: boolean;
  private readonly channel: NativeAuditChannel;
  private readonly waiting = new Waiting();
  /** before-response: a kick() is due at the end of this turn of the loop. */
  private kickDue = false;
  private readonly kick = (): void => {
    this.kickDue = false;
    this.channel.kick();
  };

  constructor(
    init: AuditInit,
    private readonly onServedWithout: () => void,
  ) {
    this.waitsForDisk = init.waitsForDisk;
    this.failClosed = init.failClosed;
    const { AuditChannel } = auditAddon();
    this.channel = new AuditChannel(init.logId, (ids, count, ok) => {
      for (let i = 0; i < count; i++) {
        const w = this.waiting.take(ids[i]!);
        if (w !== undefined) w(ok);
      }
    });
  }

  failed(): boolean {
    return this.channel.failed();
  }

  record(u: AuditUse, written?: Written): void {
    const id = written === undefined ? 0 : this.waiting.add(written);
    const c = this.channel;
    let r = useValues(c, u, id);
    if (r === USE_NOT_PLAIN) r = c.record(useFields(u), id) ? USE_QUEUED : USE_REFUSED;
    if (r === USE_QUEUED) {
      // One wake of the writer thread per turn of this loop, after every record of the turn.
      if (this.waitsForDisk && !this.kickDue) {
        this.kickDue = true;
        setImmediate(this.kick);
      }
      return;
    }
    if (written !== undefined) {
      this.waiting.take(id);
      written(false);
    }
  }

  servedWithout(): void {
    this.onServedWithout();
  }

  /** This loop is done: records still waiting count as lost. */
  close(): void {
    this.channel.close();
    for (const w of this.waiting.takeAll()) w(false);
  }
}
