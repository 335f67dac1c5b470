/**
 * Reading trail files for the verifier, the listing and reconcile: FILE and DIR arguments to files
 * (a directory gives its *.jsonl files), and each file as a stream of complete lines with their
 * SHA-256 (over the bytes as written), then the byte count of an incomplete tail (bytes after the
 * last "\n": a crash, or a line being written) and of the zeros after it (blocks a before-response
 * writer prepared: the file is open, or its writer was killed). A file is read in chunks, never
 * whole: an hour of a busy proxy is gigabytes.
 */
import { createHash } from 'node:crypto';
import { closeSync, openSync, readdirSync, readSync, statSync } from 'node:fs';
import path from 'node:path';
import { type AuditRecord, parseRecord } from './record.js';

export interface TrailLine {
  /** 1-based line number in its file. */
  line: number;
  text: string;
  /** Lowercase hex SHA-256 of the line's bytes without its "\n". */
  hash: string;
  /** The record, or why the line is not one. */
  record: AuditRecord | string;
}

export interface TrailFile {
  path: string;
  /** Base name: what start records call `previousFile`. */
  name: string;
  /** The first complete line (undefined: the file has none). */
  first: TrailLine | undefined;
}

/** A file or directory that cannot be read (exit 2, not a break). */
export class TrailReadError extends Error {}

export const ZERO_HASH = '0'.repeat(64);

const CHUNK = 1 << 20;

/** The error code of a failed fs call, for a message. */
const code = (e: unknown, fallback: string): string => (e as NodeJS.ErrnoException).code ?? fallback;

/** The files named (a directory: its *.jsonl files, of `prefix` when given), each once, in no particular order. */
export function trailPaths(args: readonly string[], prefix?: string): string[] {
  const out = new Set<string>();
  for (const a of args) {
    let st;
    try {
      st = statSync(a);
    } catch (e) {
      throw new TrailReadError(`${a}: ${code(e, 'cannot stat')}`);
    }
    if (st.isDirectory()) {
      let names: string[];
      try {
        names = readdirSync(a);
      } catch (e) {
        throw new TrailReadError(`${a}: ${code(e, 'cannot list')}`);
      }
      for (const n of names) if (n.endsWith('.jsonl') && (prefix === undefined || n.startsWith(`${prefix}.`))) out.add(path.resolve(a, n));
    } else out.add(path.resolve(a));
  }
  return [...out];
}

function toLine(raw: Buffer, line: number): TrailLine {
  const text = raw.toString('utf8');
  return { line, text, hash: createHash('sha256').update(raw).digest('hex'), record: parseRecord(text) };
}

/** One file's lines, in order, read in chunks; `tornBytes` is known once next() returned undefined. */
export class LineReader {
  private fd: number | undefined;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private ready: Buffer[] = [];
  private count = 0;
  private eof = false;
  /** Bytes after the last "\n", before the zeros (valid at the end). */
  tornBytes = 0;
  /** Zero bytes at the file's end (valid at the end). */
  zeros = 0;

  constructor(readonly file: string) {
    try {
      this.fd = openSync(file, 'r');
    } catch (e) {
      throw new TrailReadError(`${file}: ${code(e, 'cannot open')}`);
    }
  }

  next(): TrailLine | undefined {
    while (this.ready.length === 0 && !this.eof) this.fill();
    const raw = this.ready.shift();
    return raw === undefined ? undefined : toLine(raw, ++this.count);
  }

  private fill(): void {
    const buf = Buffer.allocUnsafe(CHUNK);
    let n: number;
    try {
      n = readSync(this.fd!, buf, 0, CHUNK, null);
    } catch (e) {
      this.close();
      throw new TrailReadError(`${this.file}: ${code(e, 'cannot read')}`);
    }
    if (n === 0) {
      this.eof = true;
      const tail = Buffer.concat(this.pending);
      let end = tail.length;
      while (end > 0 && tail[end - 1] === 0) end--;
      this.zeros = tail.length - end;
      this.tornBytes = end;
      this.close();
      return;
    }
    const chunk = buf.subarray(0, n);
    let start = 0;
    for (let nl = chunk.indexOf(0x0a); nl !== -1; nl = chunk.indexOf(0x0a, start)) {
      const piece = chunk.subarray(start, nl);
      this.ready.push(this.pending.length === 0 ? Buffer.from(piece) : Buffer.concat([...this.pending, piece]));
      this.pending = [];
      this.pendingBytes = 0;
      start = nl + 1;
    }
    if (start < n) {
      this.pending.push(Buffer.from(chunk.subarray(start)));
      this.pendingBytes += n - start;
    }
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

/** Every file the arguments name, with its first line (for the order). */
export function readTrail(args: readonly string[], prefix?: string): TrailFile[] {
  const files = trailPaths(args, prefix).map((p): TrailFile => {
    const r = new LineReader(p);
    try {
      return { path: p, name: path.basename(p), first: r.next() };
    } finally {
      r.close();
    }
  });
  const seen = new Map<string, string>();
  for (const f of files) {
    const other = seen.get(f.name);
    if (other !== undefined) throw new TrailReadError(`two files named ${f.name}: ${other} and ${f.path}`);
    seen.set(f.name, f.path);
  }
  return files;
}
