/**
 * Reading trail files for the verifier, the listing and reconcile: FILE and DIR arguments to files
 * (a directory gives its *.jsonl files), each file to complete lines with their SHA-256 and the
 * byte count of an incomplete tail (bytes after the last "\n": a crash, or a line being written).
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
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
  lines: TrailLine[];
  /** Bytes after the last "\n" (0 when the file ends in a complete line). */
  tornBytes: number;
}

/** A file or directory that cannot be read (exit 2, not a break). */
export class TrailReadError extends Error {}

export const ZERO_HASH = '0'.repeat(64);

export function sha256Hex(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** The files named (a directory: its *.jsonl files), each once, in no particular order. */
export function trailPaths(args: readonly string[]): string[] {
  const out = new Set<string>();
  for (const a of args) {
    let st;
    try {
      st = statSync(a);
    } catch (e) {
      throw new TrailReadError(`${a}: ${(e as NodeJS.ErrnoException).code ?? 'cannot stat'}`);
    }
    if (st.isDirectory()) {
      let names: string[];
      try {
        names = readdirSync(a);
      } catch (e) {
        throw new TrailReadError(`${a}: ${(e as NodeJS.ErrnoException).code ?? 'cannot list'}`);
      }
      for (const n of names) if (n.endsWith('.jsonl')) out.add(path.resolve(a, n));
    } else out.add(path.resolve(a));
  }
  return [...out];
}

export function readTrailFile(file: string): TrailFile {
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (e) {
    throw new TrailReadError(`${file}: ${(e as NodeJS.ErrnoException).code ?? 'cannot read'}`);
  }
  const lines: TrailLine[] = [];
  let start = 0;
  for (let nl = bytes.indexOf(0x0a, start); nl !== -1; nl = bytes.indexOf(0x0a, start)) {
    const raw = bytes.subarray(start, nl);
    const text = raw.toString('utf8');
    lines.push({ line: lines.length + 1, text, hash: sha256Hex(raw), record: parseRecord(text) });
    start = nl + 1;
  }
  return { path: file, name: path.basename(file), lines, tornBytes: bytes.length - start };
}

/** Every file the arguments name, read. */
export function readTrail(args: readonly string[]): TrailFile[] {
  const files = trailPaths(args).map(readTrailFile);
  const seen = new Map<string, string>();
  for (const f of files) {
    const other = seen.get(f.name);
    if (other !== undefined) throw new TrailReadError(`two files named ${f.name}: ${other} and ${f.path}`);
    seen.set(f.name, f.path);
  }
  return files;
}
