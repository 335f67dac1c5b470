/**
 * The trail's files in [audit].directory: `<file_prefix>.<period>.<n>.jsonl`, the period of an
 * instant for each rotation kind, and what a restart (or a recovery) continues from: the newest
 * file's last complete line, whether it is a checkpoint (a clean end) and the bytes after it. The
 * zeros before-response prepares after the last line (native/audit/log.h) are not part of a file:
 * a writer that did not stop cleanly leaves them, and the next start-up cuts them off.
 */
import { constants } from 'node:fs';
import { type FileHandle, open, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import type { RotationKind } from '../config.js';
import { lineHash } from './record.js';

/** The period part of a file name for the instant `epochMicros` (UTC). */
export function periodOf(kind: RotationKind, epochMicros: number): string {
  if (kind === 'NEVER') return 'all';
  const iso = new Date(Math.floor(epochMicros / 1000)).toISOString(); // 2026-12-02T00:05:17.123Z
  const day = iso.slice(0, 10);
  if (kind === 'DAILY') return day;
  const hour = `${day}-${iso.slice(11, 13)}`;
  return kind === 'HOURLY' ? hour : `${hour}-${iso.slice(14, 16)}`;
}

/** The length of a period in microseconds (UTC periods are whole multiples of it since the epoch). */
const PERIOD_MICROS: Record<Exclude<RotationKind, 'NEVER'>, number> = {
  MINUTELY: 60e6,
  HOURLY: 3600e6,
  DAILY: 86400e6,
};

/** The first instant (epoch microseconds) after the period of `epochMicros`: periodOf changes there. */
export function periodEnd(kind: RotationKind, epochMicros: number): number {
  if (kind === 'NEVER') return Number.POSITIVE_INFINITY;
  const len = PERIOD_MICROS[kind];
  return (Math.floor(epochMicros / len) + 1) * len;
}

export function fileName(prefix: string, period: string, n: number): string {
  return `${prefix}.${period}.${n}.jsonl`;
}

export interface TrailFile {
  name: string;
  period: string;
  n: number;
  mtimeNs: bigint;
  size: number;
}

const escapeRe = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** The trail's files in `dir`, oldest first (modification time, then period, then n). */
export async function listTrail(dir: string, prefix: string): Promise<TrailFile[]> {
  const re = new RegExp(`^${escapeRe(prefix)}\\.(all|\\d{4}-\\d{2}-\\d{2}(?:-\\d{2}(?:-\\d{2})?)?)\\.(\\d{1,9})\\.jsonl$`);
  const out: TrailFile[] = [];
  for (const name of await readdir(dir)) {
    const m = re.exec(name);
    if (m === null) continue;
    const st = await stat(path.join(dir, name), { bigint: true });
    if (!st.isFile()) continue;
    out.push({ name, period: m[1]!, n: Number(m[2]), mtimeNs: st.mtimeNs, size: Number(st.size) });
  }
  out.sort((a, b) =>
    a.mtimeNs !== b.mtimeNs ? (a.mtimeNs < b.mtimeNs ? -1 : 1) : a.period !== b.period ? (a.period < b.period ? -1 : 1) : a.n - b.n,
  );
  return out;
}

/** The end of a file as the next file's start record describes it. */
export interface FileEnd {
  /** Hash of its last complete line; undefined when it has none. */
  lastHash: string | undefined;
  /** The last complete line is a checkpoint (the file was closed cleanly). */
  clean: boolean;
  /** Bytes after the last "\n" (and before the zeros). */
  tornBytes: number;
  /** Where the file's data ends: after it only zeros (prepared blocks a writer did not cut off). */
  dataBytes: number;
  /** How many zero bytes follow the data. */
  zeros: number;
}

const TAIL_CHUNK = 64 * 1024;

/** The offset after the last byte of `fh` that is not zero (0: the file holds only zeros). */
async function dataEnd(fh: FileHandle, size: number): Promise<number> {
  const chunk = Buffer.alloc(TAIL_CHUNK);
  for (let pos = size; pos > 0; ) {
    const from = Math.max(0, pos - TAIL_CHUNK);
    const { bytesRead } = await fh.read(chunk, 0, pos - from, from);
    for (let i = bytesRead - 1; i >= 0; i--) if (chunk[i] !== 0) return from + i + 1;
    pos = from;
  }
  return 0;
}

/** Reads the end of `file` backwards until its last complete line is found (or the start is reached). */
export async function fileEnd(file: string): Promise<FileEnd> {
  const fh = await open(file, constants.O_RDONLY);
  try {
    const fileSize = (await fh.stat()).size;
    const size = await dataEnd(fh, fileSize);
    const zeros = fileSize - size;
    let pos = size;
    let tail = Buffer.alloc(0);
    let lastNl = -1; // index in `tail` of the last "\n"
    for (;;) {
      const from = Math.max(0, pos - TAIL_CHUNK);
      const chunk = Buffer.alloc(pos - from);
      if (chunk.length > 0) await fh.read(chunk, 0, chunk.length, from);
      tail = Buffer.concat([chunk, tail]);
      pos = from;
      if (lastNl < 0) lastNl = tail.lastIndexOf(0x0a);
      else lastNl += chunk.length;
      if (lastNl >= 0) {
        const before = lastNl === 0 ? -1 : tail.lastIndexOf(0x0a, lastNl - 1);
        if (before >= 0 || pos === 0) {
          const line = tail.subarray(before + 1, lastNl).toString('utf8');
          return { lastHash: lineHash(line), clean: isCheckpoint(line), tornBytes: size - (pos + lastNl + 1), dataBytes: size, zeros };
        }
      } else if (pos === 0) {
        return { lastHash: undefined, clean: false, tornBytes: size, dataBytes: size, zeros };
      }
    }
  } finally {
    await fh.close();
  }
}

function isCheckpoint(line: string): boolean {
  try {
    const o: unknown = JSON.parse(line);
    return typeof o === 'object' && o !== null && (o as { type?: unknown }).type === 'checkpoint';
  } catch {
    return false;
  }
}

/** Where a new file of the chain continues from (undefined: the directory holds no trail yet). */
export interface ChainTail {
  /** Base name of the newest file. */
  file: string;
  /** Hash of the last complete line of the chain (in that file, or before it when it has none). */
  lastHash: string;
  clean: boolean;
  tornBytes: number;
  /** The newest file's data bytes and the zeros after them (see FileEnd). */
  dataBytes: number;
  zeros: number;
  /** Period and n of the newest file: a new file of the same period takes n + 1. */
  period: string;
  n: number;
}

/** Cuts the zeros off the end of `file` (see FileEnd), durably. */
export async function cutZeros(file: string, dataBytes: number): Promise<void> {
  const fh = await open(file, constants.O_WRONLY);
  try {
    await fh.truncate(dataBytes);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function chainTail(dir: string, prefix: string): Promise<ChainTail | undefined> {
  const files = await listTrail(dir, prefix);
  const newest = files.at(-1);
  if (newest === undefined) return undefined;
  const end = await fileEnd(path.join(dir, newest.name));
  let lastHash = end.lastHash;
  // A file with no complete line (created just before a crash): the chain's head is before it.
  for (let i = files.length - 2; lastHash === undefined && i >= 0; i--) lastHash = (await fileEnd(path.join(dir, files[i]!.name))).lastHash;
  return {
    file: newest.name,
    lastHash: lastHash ?? '0'.repeat(64),
    // A checkpoint then nothing: a clean end. Bytes after it (a write cut short) are a torn tail;
    // zeros after it, a writer that was stopped before it could cut them off.
    clean: end.lastHash !== undefined && end.clean && end.tornBytes === 0 && end.zeros === 0,
    tornBytes: end.tornBytes,
    dataBytes: end.dataBytes,
    zeros: end.zeros,
    period: newest.period,
    n: Math.max(...files.filter((f) => f.period === newest.period).map((f) => f.n)),
  };
}
