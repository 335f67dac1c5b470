/**
 * The one writer of the audit trail (format v1, docs/audit.md), per process. The lines are made,
 * chained (`prev` = SHA-256 of the previous line), written and synced by a thread of its own
 * (native/audit/, src/audit/native.ts), which every event loop hands its records to directly
 * (src/audit/channel.ts) and which tells each loop when they are on disk: no event loop waits on
 * the disk, and a record crosses no other event loop.
 *
 * This class is that thread's control, on the main thread: it checks the HMAC key, opens each
 * `<file_prefix>.<period>.<n>.jsonl` and writes its start record (continuing the chain of the
 * newest file at start-up), computes each checkpoint's HMAC in the HSM when the thread asks, ends
 * a file at its period's end or at a clean stop, and after a failure (disk full, permissions, a
 * file size limit) tries every second to continue the chain in a new file (reason "torn").
 *
 * Durability: before-response opens the file O_DSYNC (a write returns once its lines are on disk)
 * and a record's `written` is called after the write that covers it; the thread writes its groups
 * into blocks it has prepared (zeros, synced) and cuts what is left of them at the file's end.
 * batched appends what queued every BATCHED_WRITE_MS and syncs at most every BATCHED_SYNC_MS.
 */
import { randomUUID } from 'node:crypto';
import { constants } from 'node:fs';
import { close as closeFd, fchmod, fdatasync, fsync, open as openFd, write as writeFd } from 'node:fs';
import { mkdir, open as openFile, unlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { AuditSection } from '../config.js';
import type { Logger } from '../log.js';
import { type AuditInit, ChannelSink } from './channel.js';
import { chainTail, cutZeros, fileName, periodEnd, periodOf, type ChainTail } from './files.js';
import { auditAddon, type AuditEventKind, type NativeAuditLog } from './native.js';
import {
  type AuditUse,
  checkpointLine,
  checkpointMessage,
  GENESIS,
  lineHash,
  nowMicros,
  rfc3339Micros,
  startLine,
  type StartFields,
} from './record.js';
import type { AuditSink, Written } from './sink.js';

export const BATCHED_SYNC_MS = 100;
/** batched: lines wait at most this long for their write. */
export const BATCHED_WRITE_MS = 10;
export const RETRY_MS = 1000;
const ERROR_LOG_INTERVAL_MS = 60_000;
const FILE_MODE = 0o640;
const DIR_MODE = 0o750;

export interface AuditWriterOptions {
  section: AuditSection;
  /** HMAC-SHA256 in the HSM with [audit] hmac_key_id (Hsm.hmacSign). */
  hmac: (data: Buffer) => Promise<Buffer>;
  log: Logger;
  version: string;
  /** Where `stdout = true` writes the records (default process.stdout). */
  stdout?: NodeJS.WritableStream | undefined;
}

/** The file the thread writes (it owns the descriptor). */
interface OpenFile {
  name: string;
  period: string;
  n: number;
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
  private readonly thread: NativeAuditLog;
  /** The main thread's own channel into the thread. */
  private readonly sink: ChannelSink;

  private file: OpenFile | undefined;
  /** The newest file made (a rotation's next file in the same period takes its n + 1). */
  private lastFile: OpenFile | undefined;
  /** Which file the thread's events are about (each useFile() has a new one; older events are stale). */
  private epoch = 0;
  private broken: string | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  /** A rotation's next file is being opened. */
  private opening: Promise<void> | undefined;
  private closing = false;
  /** close() waits here for the file's end ("ended" or "failed"). */
  private onEnd: (() => void) | undefined;
  /** When each repeated condition was last logged (performance.now()). */
  private readonly loggedAt = new Map<string, number>();

  private constructor(private readonly o: AuditWriterOptions) {
    const s = o.section;
    this.s = s;
    this.waitsForDisk = s.durability === 'before-response';
    this.failClosed = s.on_failure === 'fail-closed';
    this.stdout = s.stdout ? (o.stdout ?? process.stdout) : undefined;
    const { AuditLog } = auditAddon();
    this.thread = new AuditLog(
      {
        durable: this.waitsForDisk,
        writeMs: BATCHED_WRITE_MS,
        syncMs: BATCHED_SYNC_MS,
        checkpointEvery: s.checkpoint_every,
        checkpointSecs: s.checkpoint_secs,
        instance: this.instance,
        copyOut: this.stdout !== undefined,
        nowMicros: nowMicros(),
      },
      (kind, epoch, seq, time, head, needsCheckpoint, text) => this.onThread(kind, epoch, seq, time, head, needsCheckpoint, text),
    );
    this.sink = new ChannelSink(this.init(), () => this.servedWithout());
  }

  /**
   * Checks the HMAC key (one HMAC in the HSM) and the directory (created 0750 when missing), then
   * opens a new file continuing the chain of the newest one. Throws a start-up error naming the problem.
   */
  static async open(o: AuditWriterOptions): Promise<AuditWriter> {
    const s = o.section;
    try {
      const mac = await o.hmac(Buffer.from('xks-proxy-audit-v1 start-up check', 'utf8'));
      if (mac.length !== 32) throw new Error(`the HMAC has ${mac.length} bytes, not 32`);
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      throw new Error(`audit.hmac_key_id: the HSM cannot compute an HMAC-SHA256 with the key "${s.hmac_key_id}": ${why}`);
    }
    const w = new AuditWriter(o);
    try {
      await mkdir(s.directory, { recursive: true, mode: DIR_MODE });
      await w.openNext(undefined);
    } catch (e) {
      w.shutDown();
      throw new Error(`audit.directory: cannot write the audit trail in ${s.directory}: ${errText(e)}`);
    }
    return w;
  }

  /** What another event loop's sink needs (a worker thread's ChannelSink). */
  init(): AuditInit {
    return { logId: this.thread.id(), waitsForDisk: this.waitsForDisk, failClosed: this.failClosed };
  }

  /** The base name of the file being written (undefined while the trail is broken). */
  get currentFile(): string | undefined {
    return this.file?.name;
  }

  failed(): boolean {
    return this.sink.failed();
  }

  record(use: AuditUse, written?: Written): void {
    this.sink.record(use, written);
  }

  servedWithout(): void {
    this.logRepeated('a request was answered without its audit record ([audit] on_failure = "fail-open")');
  }

  /** Clean shutdown: the queued records, a last checkpoint, fdatasync, close. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    clearTimeout(this.retryTimer);
    await this.opening;
    if (this.file !== undefined && this.broken === undefined) {
      this.thread.ref();
      await new Promise<void>((resolve) => {
        this.onEnd = resolve;
        this.thread.requestEnd();
      });
      this.thread.unref();
    }
    this.shutDown();
  }

  private shutDown(): void {
    this.sink.close();
    this.thread.close();
  }

  // ------------------------------------------------------------------ the thread's requests

  private onThread(
    kind: AuditEventKind,
    epoch: number,
    seq: number,
    time: string,
    head: string,
    needsCheckpoint: boolean,
    text: string,
  ): void {
    // Events about an earlier file (given up after a failure) are stale.
    const current = epoch === this.epoch;
    switch (kind) {
      case 'text':
        this.stdout?.write(text);
        break;
      case 'checkpoint':
        if (current) void this.checkpointLine(seq, time, head).then((line) => this.thread.resume(epoch, line));
        break;
      case 'end':
        if (current) {
          void (needsCheckpoint ? this.checkpointLine(seq, time, head) : Promise.resolve(null)).then((line) =>
            this.thread.finish(epoch, line),
          );
        }
        break;
      case 'ended':
        if (current) this.ended(head);
        break;
      case 'failed':
        if (current) this.fail(text);
        break;
    }
  }

  /** A checkpoint line: the head and its HMAC from the HSM; null when the HSM cannot (logged: the checkpoint is skipped). */
  private async checkpointLine(seq: number, time: string, head: string): Promise<string | null> {
    const f = this.file;
    if (f === undefined) return null;
    try {
      const mac = await this.o.hmac(checkpointMessage(f.name, seq, time, head));
      return checkpointLine({ seq, time, instance: this.instance }, this.s.hmac_key_id, mac.toString('hex'), head);
    } catch (e) {
      this.logRepeated('audit checkpoint skipped: the HSM did not compute its HMAC', e);
      return null;
    }
  }

  /** The file is closed: a clean stop is done; a rotation opens the next file, whose start record names it. */
  private ended(head: string): void {
    const f = this.file;
    this.file = undefined;
    if (this.closing || f === undefined) {
      this.onEnd?.();
      return;
    }
    this.opening = this.openNext({ reason: 'rotate', previousFile: f.name, previousHash: head })
      .catch((e: unknown) => {
        this.thread.markBroken();
        this.fail(errText(e));
      })
      .finally(() => {
        this.opening = undefined;
      });
  }

  /**
   * Opens the next file, writes (and syncs) its start record and hands it to the thread. `start`
   * undefined: continue the chain found in the directory (start-up, recovery).
   */
  private async openNext(start: Pick<StartFields, 'reason' | 'previousFile' | 'previousHash'> | undefined): Promise<void> {
    const s = this.s;
    const now = nowMicros();
    const period = periodOf(s.rotation_kind, now);
    let fields: Pick<StartFields, 'reason' | 'previousFile' | 'previousHash' | 'tornBytes'>;
    let prev: string;
    let n = 1;
    if (start !== undefined) {
      fields = start;
      prev = start.previousHash ?? GENESIS;
      if (this.lastFile?.period === period) n = this.lastFile.n + 1;
    } else {
      const tail: ChainTail | undefined = await chainTail(s.directory, s.file_prefix);
      if (tail === undefined) fields = { reason: 'first' };
      else {
        if (tail.zeros > 0) {
          // The blocks a before-response writer prepared and could not cut off (it was killed).
          await cutZeros(path.join(s.directory, tail.file), tail.dataBytes);
          this.o.log.info('audit trail: cut the zeros a stopped writer left after the last line', { file: tail.file, bytes: tail.zeros });
        }
        fields = tail.clean
          ? { reason: 'restart', previousFile: tail.file, previousHash: tail.lastHash }
          : { reason: 'torn', previousFile: tail.file, previousHash: tail.lastHash, tornBytes: tail.tornBytes };
        if (tail.period === period) n = tail.n + 1;
      }
      prev = fields.previousHash ?? GENESIS;
    }
    let fd = -1;
    let name = '';
    for (let tries = 0; fd < 0; tries++, n++) {
      name = fileName(s.file_prefix, period, n);
      try {
        fd = await p<number>((cb) =>
          openFd(
            path.join(s.directory, name),
            // before-response: no O_APPEND, the thread writes at its own offset (into prepared blocks).
            constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | (this.waitsForDisk ? constants.O_DSYNC : constants.O_APPEND),
            FILE_MODE,
            cb,
          ),
        );
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || tries > 1000) throw e;
      }
    }
    let line: string;
    try {
      await p<void>((cb) => fchmod(fd, FILE_MODE, (e) => cb(e, undefined)));
      line = startLine(
        { seq: 0, time: rfc3339Micros(now), instance: this.instance },
        { ...fields, host: os.hostname(), version: this.o.version, hmacKeyId: s.hmac_key_id },
        prev,
      );
      await writeAll(fd, Buffer.from(`${line}\n`, 'utf8'));
      await p<void>((cb) => fdatasync(fd, (e) => cb(e, undefined)));
      await syncDir(s.directory);
    } catch (e) {
      // Not one complete line made it (a full disk): the file goes, so that retries leave no trace.
      await p<void>((cb) => closeFd(fd, (err) => cb(err, undefined))).catch(() => undefined);
      await unlink(path.join(s.directory, name)).catch(() => undefined);
      throw e;
    }
    this.stdout?.write(`${line}\n`);
    this.file = { name, period, n };
    this.lastFile = this.file;
    this.epoch++;
    this.thread.useFile(this.epoch, fd, 1, lineHash(line), periodEnd(s.rotation_kind, now));
  }

  // ------------------------------------------------------------------ failure and recovery

  /** The trail cannot be written: the thread refuses records; retry every RETRY_MS. */
  private fail(code: string): void {
    this.file = undefined;
    if (this.closing) {
      this.onEnd?.();
      return;
    }
    if (this.broken !== undefined) return;
    this.broken = code;
    this.logError(
      this.failClosed
        ? 'the audit trail cannot be written: key-use requests are answered 500 and health UNAVAILABLE until it can ([audit] on_failure = "fail-closed")'
        : 'the audit trail cannot be written: requests are served without their records until it can ([audit] on_failure = "fail-open")',
      code,
    );
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
        },
        () => this.scheduleRetry(),
      );
    }, RETRY_MS);
    this.retryTimer.unref();
  }

  /**
   * An ERROR of a condition that repeats (per request, per checkpoint): at most once a minute for
   * each message, so that one never hides another (a request served without its record must not
   * hide why: the failure itself is always logged).
   */
  private logRepeated(message: string, e?: unknown): void {
    const now = performance.now();
    if (now - (this.loggedAt.get(message) ?? Number.NEGATIVE_INFINITY) < ERROR_LOG_INTERVAL_MS) return;
    this.loggedAt.set(message, now);
    this.logError(message, e);
  }

  private logError(message: string, e?: unknown): void {
    this.o.log.error(message, {
      directory: this.s.directory,
      ...(e !== undefined ? { error: typeof e === 'string' ? e : errText(e) } : {}),
    });
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
