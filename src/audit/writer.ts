/**
 * The one writer of the audit trail (format v1, docs/audit.md), on the main thread: records
 * from every event loop are chained (`prev` = SHA-256 of the previous line), appended to
 * `<file_prefix>.<period>.<n>.jsonl` with group commit (every line queued while a write is in
 * flight goes in the next write), checkpointed with the HSM's HMAC, rotated with the period, and
 * continued from the newest file at start-up. Every disk operation is asynchronous (libuv's
 * thread pool), so no event loop waits on the disk.
 *
 * Durability: before-response opens the file O_DSYNC (each write returns once its lines are on
 * disk, as after an fdatasync: one thread-pool job per group, not two) and calls a record's
 * `written` after the write that covers it; batched writes what queued every BATCHED_WRITE_MS
 * (one write for many loop turns: a thread-pool hand-off costs the event loop more than the
 * record) and syncs at most every 100 ms.
 *
 * Failure: a failed write (disk full, permissions, file size limit) abandons the file; records are
 * then refused (`written(false)`) and every second the writer tries to continue the chain in a new
 * file (reason "torn"); once that works it serves again.
 */
import { randomUUID } from 'node:crypto';
import { constants } from 'node:fs';
import { close as closeFd, fchmod, fdatasync, fsync, open as openFd, write as writeFd } from 'node:fs';
import { mkdir, open as openFile, unlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { AuditSection } from '../config.js';
import type { Logger } from '../log.js';
import { chainTail, fileName, periodEnd, periodOf, type ChainTail } from './files.js';
import {
  checkpointLine,
  checkpointMessage,
  GENESIS,
  lineHash,
  nowMicros,
  rfc3339Micros,
  startLine,
  useLine,
  type StartFields,
} from './record.js';
import type { AuditSink, Written } from './sink.js';

export const BATCHED_SYNC_MS = 100;
/** batched: lines wait at most this long for their write (or until BATCHED_WRITE_LINES queued). */
export const BATCHED_WRITE_MS = 10;
const BATCHED_WRITE_LINES = 4096;
export const RETRY_MS = 1000;
const ERROR_LOG_INTERVAL_MS = 60_000;
const FILE_MODE = 0o640;
const DIR_MODE = 0o750;
/** append()'s mark of a checkpoint line (it has no record waiting for it). */
const CHECKPOINT: Written = () => undefined;

export interface AuditWriterOptions {
  section: AuditSection;
  /** HMAC-SHA256 in the HSM with [audit] hmac_key_id (Hsm.hmacSign). */
  hmac: (data: Buffer) => Promise<Buffer>;
  log: Logger;
  version: string;
  /** Where `stdout = true` writes the records (default process.stdout). */
  stdout?: NodeJS.WritableStream | undefined;
}

interface OpenFile {
  name: string;
  fd: number;
  period: string;
  /** When the period ends (epoch microseconds): the next record then rotates. */
  periodEnds: number;
  n: number;
  /** seq of the next line. */
  seq: number;
}

const p = <T>(f: (cb: (e: NodeJS.ErrnoException | null, v: T) => void) => void): Promise<T> =>
  new Promise((resolve, reject) => f((e, v) => (e ? reject(e) : resolve(v))));

function errText(e: unknown): string {
  if (typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'string') return e.code;
  return e instanceof Error ? e.message : String(e);
}

export class AuditWriter implements AuditSink {
  readonly instance = randomUUID();
  readonly waitsForDisk: boolean;
  readonly failClosed: boolean;
  private readonly s: AuditSection;
  private readonly stdout: NodeJS.WritableStream | undefined;

  private file: OpenFile | undefined;
  /** Hash of the last line put in the chain. */
  private head = GENESIS;
  /** Records waiting to be put in the chain (while a checkpoint or a new file is being made). */
  private pending: { fields: string; written: Written | undefined }[] = [];
  /** An asynchronous step of the chain (checkpoint HMAC, rotation) is running: pending waits. */
  private busy = false;
  /** Lines chained, not yet handed to write(), and the callbacks of their records. */
  private out: string[] = [];
  private outWritten: Written[] = [];
  private writing = false;
  /** batched: the timer of the next write. */
  private writeTimer: NodeJS.Timeout | undefined;
  private idleWaiters: (() => void)[] = [];
  private writeWaiters: (() => void)[] = [];
  /** batched: lines written since the last fdatasync, and the timer of the next one. */
  private unsynced = false;
  private syncTimer: NodeJS.Timeout | undefined;
  private sinceCheckpoint = 0;
  /** The file's last line is a checkpoint (a rotation or a shutdown then needs none). */
  private endsInCheckpoint = false;
  private checkpointTimer: NodeJS.Timeout | undefined;
  private checkpointDue = false;
  private broken: string | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private closing = false;
  private loggedAt = Number.NEGATIVE_INFINITY;
  private readonly listeners: ((failed: boolean) => void)[] = [];

  private constructor(private readonly o: AuditWriterOptions) {
    this.s = o.section;
    this.waitsForDisk = o.section.durability === 'before-response';
    this.failClosed = o.section.on_failure === 'fail-closed';
    this.stdout = o.section.stdout ? (o.stdout ?? process.stdout) : undefined;
  }

  /**
   * Checks the HMAC key (one HMAC in the HSM) and the directory (created 0750 when missing), then
   * opens a new file continuing the chain of the newest one. Throws a start-up error naming the problem.
   */
  static async open(o: AuditWriterOptions): Promise<AuditWriter> {
    const w = new AuditWriter(o);
    const s = o.section;
    try {
      const mac = await o.hmac(Buffer.from('xks-proxy-audit-v1 start-up check', 'utf8'));
      if (mac.length !== 32) throw new Error(`the HMAC has ${mac.length} bytes, not 32`);
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      throw new Error(`audit.hmac_key_id: the HSM cannot compute an HMAC-SHA256 with the key "${s.hmac_key_id}": ${why}`);
    }
    try {
      await mkdir(s.directory, { recursive: true, mode: DIR_MODE });
      await w.openNext(undefined);
    } catch (e) {
      throw new Error(`audit.directory: cannot write the audit trail in ${s.directory}: ${errText(e)}`);
    }
    return w;
  }

  /** The base name of the file being written (undefined while the trail is broken). */
  get currentFile(): string | undefined {
    return this.file?.name;
  }

  failed(): boolean {
    return this.broken !== undefined;
  }

  /** Called on every change between writable and broken. */
  onStateChange(f: (failed: boolean) => void): void {
    this.listeners.push(f);
  }

  record(fields: string, written?: Written): void {
    if (this.broken !== undefined || this.closing) {
      written?.(false);
      return;
    }
    this.pending.push({ fields, written });
    this.pump();
  }

  servedWithout(): void {
    this.logError('a request was answered without its audit record ([audit] on_failure = "fail-open")');
  }

  /** Clean shutdown: the pending records, a last checkpoint, fdatasync, close. */
  async close(): Promise<void> {
    this.closing = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.checkpointTimer);
    while (this.busy || this.pending.length > 0) await this.idle();
    if (this.file !== undefined && this.broken === undefined) {
      if (!this.endsInCheckpoint) {
        this.busy = true;
        await this.checkpoint();
        this.busy = false;
      }
      this.flush();
      await this.idle();
      await this.closeFile();
    }
    clearTimeout(this.syncTimer);
  }

  // ------------------------------------------------------------------ the chain

  private pump(): void {
    while (!this.busy && this.broken === undefined && this.file !== undefined && (this.pending.length > 0 || this.checkpointDue)) {
      if (this.checkpointDue) {
        this.checkpointDue = false;
        if (this.sinceCheckpoint > 0) {
          this.step(() => this.checkpoint());
          break;
        }
        continue;
      }
      const now = nowMicros();
      if (now >= this.file.periodEnds) {
        this.step(() => this.rotate());
        break;
      }
      const batch = this.pending;
      this.pending = [];
      let i = 0;
      for (; i < batch.length; i++) {
        const r = batch[i]!;
        this.append(useLine(this.common(now), r.fields, this.head), r.written);
        if (++this.sinceCheckpoint === 1) this.armCheckpointTimer();
        if (this.sinceCheckpoint >= this.s.checkpoint_every) {
          i++;
          this.step(() => this.checkpoint());
          break;
        }
      }
      if (i < batch.length) this.pending = batch.slice(i).concat(this.pending);
    }
    this.flushSoon();
    this.wakeIdle();
  }

  /** Runs an asynchronous step of the chain; pending records wait for it. */
  private step(f: () => Promise<void>): void {
    this.busy = true;
    f()
      .catch((e: unknown) => this.fail(e))
      .finally(() => {
        this.busy = false;
        this.pump();
      });
  }

  private common(now: number): { seq: number; time: string; instance: string } {
    return { seq: this.file!.seq, time: rfc3339Micros(now), instance: this.instance };
  }

  private append(line: string, written: Written | undefined): void {
    this.head = lineHash(line);
    this.file!.seq++;
    this.endsInCheckpoint = written === CHECKPOINT;
    this.out.push(line);
    if (written !== undefined && written !== CHECKPOINT) this.outWritten.push(written);
  }

  private armCheckpointTimer(): void {
    clearTimeout(this.checkpointTimer);
    this.checkpointTimer = setTimeout(() => {
      this.checkpointDue = true;
      this.pump();
    }, this.s.checkpoint_secs * 1000);
    this.checkpointTimer.unref();
  }

  /** A checkpoint line: the head and its HMAC from the HSM. An HSM failure skips it (logged). */
  private async checkpoint(): Promise<void> {
    const f = this.file!;
    const c = this.common(nowMicros());
    const head = this.head;
    clearTimeout(this.checkpointTimer);
    this.sinceCheckpoint = 0;
    let mac: Buffer;
    try {
      mac = await this.o.hmac(checkpointMessage(f.name, c.seq, c.time, head));
    } catch (e) {
      this.logError('audit checkpoint skipped: the HSM did not compute its HMAC', e);
      return;
    }
    if (this.file !== f || this.broken !== undefined) return;
    this.append(checkpointLine(c, this.s.hmac_key_id, mac.toString('hex'), head), CHECKPOINT);
  }

  /** The period changed: a checkpoint ends the file, the next one starts with reason "rotate". */
  private async rotate(): Promise<void> {
    const f = this.file!;
    if (!this.endsInCheckpoint) await this.checkpoint();
    this.flush();
    await this.written();
    if (this.broken !== undefined) return;
    await this.closeFile();
    await this.openNext({ reason: 'rotate', previousFile: f.name, previousHash: this.head });
  }

  /**
   * Opens the next file and writes (and syncs) its start record. `start` undefined: continue the
   * chain found in the directory (start-up, recovery).
   */
  private async openNext(start: Pick<StartFields, 'reason' | 'previousFile' | 'previousHash'> | undefined): Promise<void> {
    const s = this.s;
    const now = nowMicros();
    const period = periodOf(s.rotation_kind, now);
    let fields: Pick<StartFields, 'reason' | 'previousFile' | 'previousHash' | 'tornBytes'>;
    let n = 1;
    if (start !== undefined) {
      fields = start;
      if (this.file?.period === period) n = this.file.n + 1;
    } else {
      const tail: ChainTail | undefined = await chainTail(s.directory, s.file_prefix);
      if (tail === undefined) fields = { reason: 'first' };
      else {
        fields = tail.clean
          ? { reason: 'restart', previousFile: tail.file, previousHash: tail.lastHash }
          : { reason: 'torn', previousFile: tail.file, previousHash: tail.lastHash, tornBytes: tail.tornBytes };
        if (tail.period === period) n = tail.n + 1;
      }
      this.head = fields.previousHash ?? GENESIS;
    }
    let fd = -1;
    let name = '';
    for (let tries = 0; fd < 0; tries++, n++) {
      name = fileName(s.file_prefix, period, n);
      try {
        fd = await p<number>((cb) =>
          openFd(
            path.join(s.directory, name),
            constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_APPEND | (this.waitsForDisk ? constants.O_DSYNC : 0),
            FILE_MODE,
            cb,
          ),
        );
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || tries > 1000) throw e;
      }
    }
    this.file = { name, fd, period, periodEnds: periodEnd(s.rotation_kind, now), n, seq: 0 };
    try {
      await p<void>((cb) => fchmod(fd, FILE_MODE, (e) => cb(e, undefined)));
      const line = startLine(
        this.common(now),
        { ...fields, host: os.hostname(), version: this.o.version, hmacKeyId: s.hmac_key_id },
        this.head,
      );
      this.head = lineHash(line);
      this.file.seq = 1;
      this.sinceCheckpoint = 0;
      this.endsInCheckpoint = false;
      await writeAll(fd, Buffer.from(`${line}\n`, 'utf8'));
      this.stdout?.write(`${line}\n`);
      await p<void>((cb) => fdatasync(fd, (e) => cb(e, undefined)));
      await syncDir(s.directory);
    } catch (e) {
      // Not one complete line made it (a full disk): the file goes, so that retries leave no trace.
      this.file = undefined;
      await p<void>((cb) => closeFd(fd, (err) => cb(err, undefined))).catch(() => undefined);
      await unlink(path.join(s.directory, name)).catch(() => undefined);
      throw e;
    }
  }

  private async closeFile(): Promise<void> {
    const f = this.file;
    if (f === undefined) return;
    this.file = undefined;
    clearTimeout(this.syncTimer);
    this.syncTimer = undefined;
    this.unsynced = false;
    try {
      await p<void>((cb) => fdatasync(f.fd, (e) => cb(e, undefined)));
    } finally {
      await p<void>((cb) => closeFd(f.fd, (e) => cb(e, undefined)));
    }
  }

  // ------------------------------------------------------------------ the disk

  /**
   * New lines are chained: before-response writes them now (or after the write in flight);
   * batched within BATCHED_WRITE_MS, or now when many queued.
   */
  private flushSoon(): void {
    if (this.waitsForDisk || this.out.length >= BATCHED_WRITE_LINES) {
      this.flush();
      return;
    }
    if (this.writeTimer !== undefined || this.writing || this.out.length === 0) return;
    this.writeTimer = setTimeout(() => {
      this.writeTimer = undefined;
      this.flush();
    }, BATCHED_WRITE_MS);
  }

  /** Hands every chained line to one write (before-response: O_DSYNC, on disk when it returns). */
  private flush(): void {
    clearTimeout(this.writeTimer);
    this.writeTimer = undefined;
    if (this.writing || this.out.length === 0 || this.file === undefined) {
      if (!this.writing) this.wakeIdle();
      return;
    }
    const f = this.file;
    const text = `${this.out.join('\n')}\n`;
    const written = this.outWritten;
    this.out = [];
    this.outWritten = [];
    this.writing = true;
    const sync = this.waitsForDisk;
    writeAll(f.fd, Buffer.from(text, 'utf8')).then(
      () => {
        this.stdout?.write(text);
        this.writing = false;
        if (!sync) this.scheduleSync(f);
        for (const w of written) w(true);
        if (sync) this.flush();
        else this.flushSoon();
        this.wakeIdle();
      },
      (e: unknown) => {
        this.writing = false;
        this.fail(e, written);
      },
    );
  }

  private scheduleSync(f: OpenFile): void {
    this.unsynced = true;
    if (this.syncTimer !== undefined) return;
    this.syncTimer = setTimeout(() => {
      this.syncTimer = undefined;
      if (this.file !== f || !this.unsynced) return;
      this.unsynced = false;
      fdatasync(f.fd, (e) => {
        if (e) this.fail(e);
      });
    }, BATCHED_SYNC_MS);
  }

  /** Resolves when no line is queued or being written and no step runs. */
  private idle(): Promise<void> {
    if (!this.writing && this.out.length === 0 && !this.busy && this.pending.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Resolves when every chained line is written (a step of the chain may be running: rotation). */
  private written(): Promise<void> {
    if (!this.writing && this.out.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.writeWaiters.push(resolve));
  }

  private wakeIdle(): void {
    if (this.writing || this.out.length > 0) return;
    const lines = this.writeWaiters;
    this.writeWaiters = [];
    for (const w of lines) w();
    if (this.busy || this.pending.length > 0) return;
    const ws = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of ws) w();
  }

  // ------------------------------------------------------------------ failure and recovery

  /** The trail cannot be written: refuse records, abandon the file, retry every RETRY_MS. */
  private fail(e: unknown, inFlight: readonly Written[] = []): void {
    if (this.broken !== undefined) {
      for (const w of inFlight) w(false);
      return;
    }
    this.broken = errText(e);
    const lost = [...inFlight, ...this.pending.map((r) => r.written), ...this.outWritten];
    this.pending = [];
    this.out = [];
    this.outWritten = [];
    const f = this.file;
    this.file = undefined;
    clearTimeout(this.checkpointTimer);
    clearTimeout(this.syncTimer);
    this.syncTimer = undefined;
    clearTimeout(this.writeTimer);
    this.writeTimer = undefined;
    if (f !== undefined) closeFd(f.fd, () => undefined);
    this.logError(
      this.failClosed
        ? 'the audit trail cannot be written: key-use requests are answered 500 and health UNAVAILABLE until it can ([audit] on_failure = "fail-closed")'
        : 'the audit trail cannot be written: requests are served without their records until it can ([audit] on_failure = "fail-open")',
      e,
    );
    for (const l of this.listeners) l(true);
    for (const w of lost) w?.(false);
    this.wakeIdle();
    this.scheduleRetry();
  }

  private scheduleRetry(): void {
    if (this.closing) return;
    this.retryTimer = setTimeout(() => {
      this.openNext(undefined).then(
        () => {
          const was = this.broken;
          this.broken = undefined;
          this.o.log.info('the audit trail is written again', { file: this.file?.name, after: was });
          for (const l of this.listeners) l(false);
          this.pump();
        },
        () => this.scheduleRetry(),
      );
    }, RETRY_MS);
    this.retryTimer.unref();
  }

  private logError(message: string, e?: unknown): void {
    const now = performance.now();
    if (now - this.loggedAt < ERROR_LOG_INTERVAL_MS) return;
    this.loggedAt = now;
    this.o.log.error(message, { directory: this.s.directory, ...(e !== undefined ? { error: errText(e) } : {}) });
  }
}

/** write(2) until every byte is written (a short write is followed by the rest, or its error). */
async function writeAll(fd: number, buf: Buffer): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const n = await p<number>((cb) => writeFd(fd, buf, off, buf.length - off, null, cb));
    if (n === 0) throw Object.assign(new Error('write returned 0'), { code: 'EIO' });
    off += n;
  }
}

/** fsync of the directory: a new file's name survives a crash. */
async function syncDir(dir: string): Promise<void> {
  const h = await openFile(dir, constants.O_RDONLY);
  try {
    await p<void>((cb) => fsync(h.fd, (e) => cb(e, undefined)));
  } finally {
    await h.close();
  }
}
