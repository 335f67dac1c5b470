/**
 * Logging per `[tracing]`: one logfmt-style line per event,
 *
 *     2026-11-30T02:56:26.123Z INFO message key=value key2="quoted value"
 *
 * to stdout and/or a rolling file named as tracing-appender names them (`<file_prefix>.<UTC date>`).
 *
 * Off the hot path: a call formats one string and appends it to an in-memory buffer; a timer (50 ms) or a
 * full buffer (64 KiB) starts an asynchronous drain with one write in flight per sink. Memory is bounded:
 * past `maxBufferBytes` lines are dropped and counted, and a WARN line reports the count once writing
 * catches up. Calls below the configured level return before formatting anything.
 *
 * Injection-safe: control characters, line/paragraph separators and bidi controls are escaped everywhere
 * (message, keys, values), so one call is always exactly one line. Callers must never pass plaintext,
 * keys, PINs or secrets.
 */
import * as fs from 'node:fs';
import { join as joinPath } from 'node:path';
import { DEFAULT_LOG_FILE_MODE, type Level, type RotationKind, type TracingSection } from './config.js';
import type { RequestMetadata } from './validate.js';

export type { Level, RotationKind, TracingSection } from './config.js';

export type LogFields = Record<string, string | number | boolean | undefined>;

/** requestMetadata, which the spec says SHOULD be logged (never secret), when it could be read. */
export interface RequestLogLine extends Partial<RequestMetadata> {
  op: string;
  prefix: string;
  keyId?: string;
  /** "ok" or the XKS errorName. */
  outcome: string;
  status: number;
  micros: number;
  detail?: string;
}

export interface Logger {
  trace(msg: string, fields?: LogFields): void;
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  enabled(level: Level): boolean;
  /**
   * One line per request: ERROR for 5xx, WARN for a refused signature (AuthenticationFailedException,
   * as the Rust proxy's "SigV4 failure" WARN line), INFO otherwise.
   */
  request(line: RequestLogLine): void;
  /** Resolves once everything logged so far has been handed to the sinks. */
  flush(): Promise<void>;
  /** Flushes, closes the log file; later calls are ignored. */
  close(): Promise<void>;
}

export interface LoggerStats {
  /** Lines dropped because the buffer was full. */
  dropped: number;
  /** Lines handed to the sinks. */
  written: number;
  /** Bytes (UTF-16 units) waiting in memory. */
  bufferedBytes: number;
  /** Failed sink writes (the lines are lost). */
  writeErrors: number;
}

export interface BufferedLogger extends Logger {
  stats(): LoggerStats;
  /**
   * Appends complete, already formatted lines (each ending in '\n', escaped by formatLine) as they
   * are, to every sink: the lines of worker threads' loggers (src/workers/), so that one writer
   * owns the sinks and lines never interleave mid-line. Subject to the buffer limit like any line.
   */
  raw(lines: string): void;
  /** Path of the file the next line goes to (undefined without the file writer). */
  currentFile(): string | undefined;
}

export interface LoggerOptions {
  /** Default process.stdout. */
  stdout?: NodeJS.WritableStream;
  /** Clock for timestamps and file rotation; default `() => new Date()`. */
  now?: () => Date;
  /** Drain timer, default 50 ms. */
  flushIntervalMs?: number;
  /** Drain at once above this many buffered bytes, default 64 KiB. */
  flushThresholdBytes?: number;
  /** Drop lines above this many buffered bytes, default 8 MiB. */
  maxBufferBytes?: number;
  /** Fields appended to every line (e.g. `{ worker: 1 }` with several event loops). */
  context?: LogFields;
}

/** The request outcome of a refused signature (src/errors.ts). */
const AUTH_FAILED = 'AuthenticationFailedException';
const LEVEL_NUM: Record<Level, number> = { TRACE: 0, DEBUG: 1, INFO: 2, WARN: 3, ERROR: 4 };
const OFF = 5;
const MAX_VALUE_CHARS = 1024;
const MAX_MESSAGE_CHARS = 2048;

/** The rolling file name tracing-appender uses for `date` (UTC). */
export function rollingFileName(prefix: string, rotation: RotationKind, date: Date): string {
  if (rotation === 'NEVER') return prefix;
  const y = date.getUTCFullYear();
  const d = `${y}-${pad2(date.getUTCMonth() + 1)}-${pad2(date.getUTCDate())}`;
  if (rotation === 'DAILY') return `${prefix}.${d}`;
  const h = `${d}-${pad2(date.getUTCHours())}`;
  if (rotation === 'HOURLY') return `${prefix}.${h}`;
  return `${prefix}.${h}-${pad2(date.getUTCMinutes())}`;
}

const PERIOD_MS: Record<RotationKind, number> = { MINUTELY: 60_000, HOURLY: 3_600_000, DAILY: 86_400_000, NEVER: Infinity };

// Characters that must never reach a log line raw: C0/C1 controls, DEL, line/paragraph separators,
// bidi and zero-width controls, BOM.
const UNSAFE_RE = /[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff\ud800-\udfff]/;
const BARE_VALUE_RE = /^[A-Za-z0-9_.:/@+,-]+$/;
const KEY_BAD_RE = /[^A-Za-z0-9_.-]/g;

function escapeChar(c: string): string {
  switch (c) {
    case '\n':
      return '\\n';
    case '\r':
      return '\\r';
    case '\t':
      return '\\t';
    default:
      return `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`;
  }
}

function truncate(s: string, max: number): string {
  return s.length > max ? `${s.slice(0, max)}...(${s.length - max} more)` : s;
}

/** Escapes backslashes, quotes and everything that could break or disguise the line. */
function escapeText(s: string): string {
  // Lone surrogates are escaped by UNSAFE_RE too; valid pairs are re-joined below.
  let out = s.replace(/\\/g, '\\\\').replace(/"/g, '\\"');
  if (UNSAFE_RE.test(out)) {
    out = out.replace(
      /[\ud800-\udbff][\udc00-\udfff]|[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff\ud800-\udfff]/g,
      (c) => (c.length === 2 ? c : escapeChar(c)),
    );
  }
  return out;
}

/** Formats a field value: bare when it is plainly safe, else double-quoted and escaped. */
export function formatValue(v: string | number | boolean): string {
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  const s = truncate(v, MAX_VALUE_CHARS);
  if (BARE_VALUE_RE.test(s)) return s;
  return `"${escapeText(s)}"`;
}

function formatMessage(msg: string): string {
  const s = truncate(msg, MAX_MESSAGE_CHARS);
  // Bare unless it could be mistaken for fields or contains anything to escape.
  if (s !== '' && !s.includes('=') && !s.includes('"') && !s.includes('\\') && !UNSAFE_RE.test(s)) return s;
  return `"${escapeText(s)}"`;
}

function formatKey(k: string): string {
  const s = k.replace(KEY_BAD_RE, '_');
  return s === '' ? '_' : s.slice(0, 64);
}

/** ` key=value` for a request line field (the key is a constant identifier: no escaping). */
function field(key: string, v: string | number | undefined): string {
  return v === undefined ? '' : ` ${key}=${formatValue(v)}`;
}

/**
 * The per-request line: the same text formatLine gives for these fields in this order, without
 * building a fields object or escaping the constant keys (this runs once per request).
 */
export function formatRequestLine(time: Date, level: Level, l: RequestLogLine): string {
  return (
    `${time.toISOString()} ${level} request` +
    field('op', l.op) +
    field('prefix', l.prefix) +
    field('keyId', l.keyId) +
    field('kmsRequestId', l.kmsRequestId) +
    field('outcome', l.outcome) +
    field('status', l.status) +
    field('micros', l.micros) +
    field('detail', l.detail) +
    field('kmsOperation', l.kmsOperation) +
    field('awsPrincipalArn', l.awsPrincipalArn) +
    field('kmsKeyArn', l.kmsKeyArn) +
    field('kmsViaService', l.kmsViaService) +
    field('awsSourceVpc', l.awsSourceVpc) +
    field('awsSourceVpce', l.awsSourceVpce) +
    '\n'
  );
}

/** One complete line (with '\n'). */
export function formatLine(time: Date, level: Level, msg: string, fields?: LogFields): string {
  let line = `${time.toISOString()} ${level} ${formatMessage(msg)}`;
  if (fields !== undefined) {
    for (const k of Object.keys(fields)) {
      const v = fields[k];
      if (v === undefined) continue;
      line += ` ${formatKey(k)}=${formatValue(v)}`;
    }
  }
  return line + '\n';
}

interface Segment {
  /** Target file path (undefined when the file writer is disabled). */
  file: string | undefined;
  parts: string[];
}

interface Sink {
  write(file: string | undefined, data: string): Promise<void>;
  close(): Promise<void>;
}

class StreamSink implements Sink {
  constructor(private readonly stream: NodeJS.WritableStream) {}
  write(_file: string | undefined, data: string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      // The callback fires once the stream has taken the data: one write in flight at a time.
      this.stream.write(data, (err?: Error | null) => (err ? reject(err) : resolve()));
    });
  }
  async close(): Promise<void> {}
}

/**
 * Appends to the rolling files. Each file gets `mode` ([tracing] file_mode) whatever the umask,
 * also a file that already existed (a changed file_mode applies from the next start).
 */
class FileSink implements Sink {
  private fd: number | undefined;
  private path: string | undefined;

  /** Opens the first file synchronously (start-up), so a bad directory fails createLogger at once. */
  constructor(
    first: string,
    private readonly mode: number,
  ) {
    fs.mkdirSync(joinPath(first, '..'), { recursive: true });
    const fd = fs.openSync(first, 'a', mode);
    try {
      fs.fchmodSync(fd, mode);
    } catch (e) {
      if (!notOwner(e)) {
        fs.closeSync(fd);
        throw e;
      }
    }
    this.fd = fd;
    this.path = first;
  }

  async write(file: string | undefined, data: string): Promise<void> {
    if (file === undefined) return;
    if (file !== this.path || this.fd === undefined) await this.reopen(file);
    const fd = this.fd;
    if (fd === undefined) return;
    const buf = Buffer.from(data, 'utf8');
    let off = 0;
    while (off < buf.length) {
      off += await new Promise<number>((resolve, reject) =>
        fs.write(fd, buf, off, buf.length - off, null, (err, n) => (err ? reject(err) : resolve(n))),
      );
    }
  }

  private async reopen(file: string): Promise<void> {
    const old = this.fd;
    this.fd = undefined;
    this.path = file;
    if (old !== undefined) await closeFd(old);
    await fs.promises.mkdir(joinPath(file, '..'), { recursive: true });
    const fd = await new Promise<number>((resolve, reject) =>
      fs.open(file, 'a', this.mode, (err, fd) => (err ? reject(err) : resolve(fd))),
    );
    try {
      await new Promise<void>((resolve, reject) => fs.fchmod(fd, this.mode, (err) => (err && !notOwner(err) ? reject(err) : resolve())));
    } catch (e) {
      await closeFd(fd);
      throw e;
    }
    this.fd = fd;
  }

  async close(): Promise<void> {
    const fd = this.fd;
    this.fd = undefined;
    this.path = undefined;
    if (fd !== undefined) await closeFd(fd);
  }
}

/** EPERM from fchmod: the file belongs to another user; it keeps its mode and is still written. */
function notOwner(e: unknown): boolean {
  return typeof e === 'object' && e !== null && 'code' in e && e.code === 'EPERM';
}

function closeFd(fd: number): Promise<void> {
  return new Promise<void>((resolve) => fs.close(fd, () => resolve()));
}

const noop = (): void => {};

/** A logger that discards everything (for tests and tools). */
export function createNullLogger(): BufferedLogger {
  return {
    trace: noop,
    debug: noop,
    info: noop,
    warn: noop,
    error: noop,
    enabled: () => false,
    request: noop,
    flush: () => Promise.resolve(),
    close: () => Promise.resolve(),
    stats: () => ({ dropped: 0, written: 0, bufferedBytes: 0, writeErrors: 0 }),
    currentFile: () => undefined,
    raw: noop,
  };
}

export function createLogger(tracing: TracingSection, opts: LoggerOptions = {}): BufferedLogger {
  const now = opts.now ?? (() => new Date());
  const intervalMs = opts.flushIntervalMs ?? 50;
  const thresholdBytes = opts.flushThresholdBytes ?? 64 * 1024;
  const maxBytes = opts.maxBufferBytes ?? 8 * 1024 * 1024;
  const anySink = tracing.is_stdout_writer_enabled || tracing.is_file_writer_enabled;
  const threshold = anySink ? LEVEL_NUM[tracing.level] : OFF;

  const sinks: Sink[] = [];
  if (tracing.is_stdout_writer_enabled) sinks.push(new StreamSink(opts.stdout ?? process.stdout));

  // Rolling file name, recomputed only when the clock leaves the current period.
  const rotation = tracing.rotation_kind;
  const period = PERIOD_MS[rotation];
  let fileName: string | undefined;
  let periodEnd = -Infinity;
  const fileFor = (t: Date): string | undefined => {
    if (!tracing.is_file_writer_enabled) return undefined;
    const ms = t.getTime();
    if (fileName === undefined || ms >= periodEnd || ms < periodEnd - period) {
      const dir = tracing.directory ?? '.';
      const prefix = tracing.file_prefix ?? 'xks-proxy.log';
      fileName = joinPath(dir, rollingFileName(prefix, rotation, t));
      periodEnd = period === Infinity ? Infinity : (Math.floor(ms / period) + 1) * period;
    }
    return fileName;
  };
  if (tracing.is_file_writer_enabled) {
    const first = fileFor(now());
    if (first !== undefined) sinks.push(new FileSink(first, tracing.file_mode ?? DEFAULT_LOG_FILE_MODE));
  }

  let segments: Segment[] = [];
  let bufferedBytes = 0;
  let dropped = 0;
  let droppedReported = 0;
  let written = 0;
  let writeErrors = 0;
  let closed = false;
  let timer: NodeJS.Timeout | undefined;
  let immediate: NodeJS.Immediate | undefined;
  let draining: Promise<void> | undefined;

  const append = (t: Date, line: string, force = false): void => {
    if (closed) return;
    if (!force && bufferedBytes + line.length > maxBytes) {
      dropped++;
      return;
    }
    const file = fileFor(t);
    const last = segments[segments.length - 1];
    if (last !== undefined && last.file === file) last.parts.push(line);
    else segments.push({ file, parts: [line] });
    bufferedBytes += line.length;
    schedule();
  };

  const schedule = (): void => {
    if (draining !== undefined) return; // the running drain loops until the buffer is empty
    if (bufferedBytes >= thresholdBytes) {
      if (immediate === undefined) immediate = setImmediate(startDrain);
      return;
    }
    if (timer === undefined) {
      timer = setTimeout(startDrain, intervalMs);
      timer.unref();
    }
  };

  const startDrain = (): void => {
    if (timer !== undefined) clearTimeout(timer);
    if (immediate !== undefined) clearImmediate(immediate);
    timer = undefined;
    immediate = undefined;
    if (draining !== undefined) return;
    draining = drain().finally(() => {
      draining = undefined;
      if (segments.length > 0) schedule();
    });
  };

  const drain = async (): Promise<void> => {
    for (;;) {
      if (dropped > droppedReported && segments.length === 0) {
        const n = dropped - droppedReported;
        droppedReported = dropped;
        const t = now();
        append(t, formatLine(t, 'WARN', 'log lines dropped: buffer full', { dropped: n, total_dropped: dropped }), true);
      }
      if (segments.length === 0) return;
      const batch = segments;
      segments = [];
      bufferedBytes = 0;
      for (const seg of batch) {
        const data = seg.parts.join('');
        const results = await Promise.allSettled(sinks.map((s) => s.write(seg.file, data)));
        for (const r of results) if (r.status === 'rejected') writeErrors++;
        written += seg.parts.length;
      }
    }
  };

  // The context fields, formatted once: inserted before each line's '\n'.
  const context = opts.context === undefined ? '' : formatLine(new Date(0), 'INFO', '_', opts.context).slice(31, -1);
  const emit =
    context === ''
      ? (level: Level, msg: string, fields?: LogFields): void => {
          const t = now();
          append(t, formatLine(t, level, msg, fields));
        }
      : (level: Level, msg: string, fields?: LogFields): void => {
          const t = now();
          const line = formatLine(t, level, msg, fields);
          append(t, `${line.slice(0, -1)}${context}\n`);
        };

  const at = (level: Level): ((msg: string, fields?: LogFields) => void) =>
    LEVEL_NUM[level] >= threshold ? (msg, fields) => emit(level, msg, fields) : noop;

  const flush = async (): Promise<void> => {
    // Loop: lines logged while a drain runs are picked up by it; a new drain covers the rest.
    while (draining !== undefined || segments.length > 0 || dropped > droppedReported) {
      if (draining === undefined) startDrain();
      await draining;
    }
  };

  return {
    trace: at('TRACE'),
    debug: at('DEBUG'),
    info: at('INFO'),
    warn: at('WARN'),
    error: at('ERROR'),
    enabled: (level: Level) => LEVEL_NUM[level] >= threshold,
    request: (l: RequestLogLine): void => {
      const level: Level = l.status >= 500 ? 'ERROR' : l.outcome === AUTH_FAILED ? 'WARN' : 'INFO';
      if (LEVEL_NUM[level] < threshold) return;
      const t = now();
      const line = formatRequestLine(t, level, l);
      append(t, context === '' ? line : `${line.slice(0, -1)}${context}\n`);
    },
    flush,
    close: async (): Promise<void> => {
      if (closed) return;
      await flush();
      closed = true;
      if (timer !== undefined) clearTimeout(timer);
      if (immediate !== undefined) clearImmediate(immediate);
      await Promise.all(sinks.map((s) => s.close()));
    },
    stats: () => ({ dropped, written, bufferedBytes, writeErrors }),
    currentFile: () => fileFor(now()),
    raw: (lines: string): void => {
      if (threshold === OFF || lines === '') return;
      if (bufferedBytes + lines.length > maxBytes) {
        let n = 0;
        for (let i = lines.indexOf('\n'); i !== -1; i = lines.indexOf('\n', i + 1)) n++;
        dropped += n;
        return;
      }
      append(now(), lines);
    },
  };
}

function pad2(n: number): string {
  return n < 10 ? `0${n}` : String(n);
}
