/**
 * `audit verify`'s check: the hash chain across the files (in chain order, order.ts) and every
 * checkpoint's HMAC through the HSM. It stops at the first break and names it: file, 1-based line and
 * kind (the format contract's list). A crash's torn tail that the next file acknowledges, records not
 * yet sealed by a checkpoint, and a last line still being written are warnings, not breaks.
 */
import type { AuditRecord, CheckpointRecord } from './record.js';
import { orderTrail } from './order.js';
import { type TrailFile, type TrailLine, ZERO_HASH } from './trail-files.js';

export type BreakKind = 'edited' | 'inserted' | 'deleted' | 'reordered' | 'truncated' | 'missing-file' | 'forged-checkpoint';

export interface Finding {
  file: string;
  /** 1-based; for a file's end, the line after its last complete line. */
  line: number;
  message: string;
}

export interface Break extends Finding {
  kind: BreakKind;
}

/** Checks checkpoint HMACs (in the HSM); false when the HMAC does not verify with that key. */
export interface CheckpointMac {
  verify(keyLabel: string, message: Buffer, mac: Buffer): Promise<boolean>;
}

export interface Verdict {
  /** The files in chain order (base names). */
  files: string[];
  /** The first break, if any. */
  break: Break | undefined;
  warnings: Finding[];
  /** Lines checked before the break (all of them when there is none). */
  lines: number;
  uses: number;
  checkpoints: number;
  /** Checkpoints whose HMAC the HSM verified (0 when checked without the HSM). */
  hmacsVerified: number;
}

/** The message a checkpoint's HMAC covers (the format contract). */
export function checkpointMessage(fileName: string, c: Pick<CheckpointRecord, 'seq' | 'time' | 'head'>): Buffer {
  return Buffer.from(`xks-proxy-audit-v1\n${fileName}\n${c.seq}\n${c.time}\n${c.head}`, 'utf8');
}

const rec = (l: TrailLine | undefined): AuditRecord | undefined => (l === undefined || typeof l.record === 'string' ? undefined : l.record);

class Stop {
  constructor(readonly found: Break) {}
}

/**
 * Verifies the files (any order). `mac` undefined: the chain only (the listing's check), checkpoints
 * counted but not authenticated.
 */
export async function verifyTrail(input: readonly TrailFile[], mac: CheckpointMac | undefined): Promise<Verdict> {
  const v: Verdict = { files: [], break: undefined, warnings: [], lines: 0, uses: 0, checkpoints: 0, hmacsVerified: 0 };
  const ordering = orderTrail(input);
  if ('break' in ordering) {
    v.break = { kind: 'missing-file', file: ordering.break.file, line: 1, message: ordering.break.problem };
    return v;
  }
  const files = ordering.files;
  v.files = files.map((f) => f.name);
  try {
    for (let fi = 0; fi < files.length; fi++) await checkFile(files, fi, mac, v);
  } catch (e) {
    if (e instanceof Stop) v.break = e.found;
    else throw e;
  }
  if (v.break === undefined) tailWarnings(files[files.length - 1], v);
  return v;
}

function stop(kind: BreakKind, f: TrailFile, line: number, message: string): never {
  throw new Stop({ kind, file: f.name, line, message });
}

/** The hash the line at index k of file fi must chain from. */
function hashBefore(files: readonly TrailFile[], fi: number, k: number): string | undefined {
  if (k > 0) return files[fi]!.lines[k - 1]!.hash;
  for (let p = fi - 1; p >= 0; p--) {
    const lines = files[p]!.lines;
    if (lines.length > 0) return lines[lines.length - 1]!.hash;
  }
  return fi === 0 ? ZERO_HASH : undefined;
}

async function checkFile(files: readonly TrailFile[], fi: number, mac: CheckpointMac | undefined, v: Verdict): Promise<void> {
  const f = files[fi]!;
  const lines = f.lines;
  // No complete line (a crash right after the file was made): the next file must acknowledge it as torn.
  if (lines.length === 0 && fi === 0) stop('missing-file', f, 1, 'the first file has no complete line: the trail does not begin here');
  for (let k = 0; k < lines.length; k++) {
    const l = lines[k]!;
    const r = rec(l);
    const expected = k === 0 ? hashBefore(files, fi, 0)! : lines[k - 1]!.hash;
    if (r === undefined) {
      // Not a record: an inserted line when the next one chains past it, else a line changed in place.
      if (rec(lines[k + 1])?.prev === expected)
        stop('inserted', f, l.line, `line ${l.line} is not a record (${l.record}) and the chain skips it`);
      stop('edited', f, l.line, `line ${l.line} is not a valid record: ${l.record}`);
    }
    if (k === 0) await checkFirstLine(files, fi, r, mac, v);
    else if (r.prev !== expected || r.seq !== k) classify(f, k);
    else if (r.type === 'start') stop('inserted', f, l.line, `a start record at line ${l.line} (only a first line starts a file)`);
    if (r.type === 'use') v.uses++;
    if (r.type === 'checkpoint') await checkCheckpoint(files, fi, k, r, mac, v);
    v.lines++;
  }
}

/**
 * A break inside a file at index k (k >= 1): the line's prev or seq is not what the chain says.
 * Decided from the seq numbers and the hashes around it (the format contract's rules).
 */
function classify(f: TrailFile, k: number): never {
  const lines = f.lines;
  const l = lines[k]!;
  const r = rec(l)!;
  const before = lines[k - 1]!;
  const okPrev = r.prev === before.hash;
  const at = l.line;
  // The line before was inserted: this one chains from the line two before it.
  if (k >= 2 && r.prev === lines[k - 2]!.hash)
    stop('inserted', f, before.line, `line ${before.line} was inserted: line ${at} chains from line ${before.line - 1}`);
  // Moved: this line chains from a line placed after it.
  const from = lines.findIndex((x, j) => j > k && x.hash === r.prev);
  if (from !== -1) stop('reordered', f, at, `line ${at} (seq ${r.seq}) chains from line ${lines[from]!.line}, which comes after it`);
  if (!okPrev && rec(lines[k + 1])?.prev === before.hash)
    stop('inserted', f, at, `line ${at} was inserted: line ${at + 1} chains from line ${at - 1}`);
  if (!okPrev && r.seq > k) {
    const n = r.seq - k;
    stop('deleted', f, at, `${n} record${n === 1 ? '' : 's'} missing before line ${at} (seq jumps from ${k - 1} to ${r.seq})`);
  }
  if (!okPrev && r.seq < k) stop('reordered', f, at, `line ${at} has seq ${r.seq}, expected ${k}`);
  if (okPrev) stop('edited', f, at, `line ${at} has seq ${r.seq}, expected ${k} (changed in place)`);
  // prev wrong, seq right: the line before was changed, unless this line's own prev was (then the next line breaks too).
  const next = rec(lines[k + 1]);
  if (next !== undefined && next.prev !== l.hash)
    stop('edited', f, at, `line ${at} was changed: neither its prev nor its hash match its neighbours`);
  stop('edited', f, before.line, `line ${before.line} was changed: its hash no longer matches line ${at}'s prev`);
}

/** A file's first line: a start record chaining from the previous file's last complete line. */
async function checkFirstLine(
  files: readonly TrailFile[],
  fi: number,
  r: AuditRecord,
  mac: CheckpointMac | undefined,
  v: Verdict,
): Promise<void> {
  const f = files[fi]!;
  const expected = hashBefore(files, fi, 0);
  if (r.type !== 'start') {
    if (r.seq > 0 && r.prev !== expected)
      stop('deleted', f, 1, `the file's first ${r.seq} line${r.seq === 1 ? '' : 's'} (its start record) are missing`);
    stop('edited', f, 1, 'the first line is not a start record');
  }
  if (r.seq !== 0) stop('edited', f, 1, `the start record has seq ${r.seq}, expected 0`);
  if (fi === 0) {
    if (r.reason !== 'first' || r.prev !== ZERO_HASH)
      stop('missing-file', f, 1, `the first file given does not begin the trail (its start record says "${r.reason}")`);
    return;
  }
  const p = files[fi - 1]!;
  if (r.reason === 'first') stop('edited', f, 1, 'a start record saying "first" after another file');
  if (r.previousFile !== p.name) stop('edited', f, 1, `its start record names ${r.previousFile ?? 'no file'} as previous, not ${p.name}`);
  if (r.previousHash !== r.prev) stop('edited', f, 1, 'its start record: previousHash and prev differ');
  const last = p.lines[p.lines.length - 1];
  const end = p.lines.length + 1;
  if (r.prev !== expected) {
    const m = p.lines.findIndex((x) => x.hash === r.prev);
    if (m !== -1)
      stop('inserted', p, m + 2, `lines ${m + 2}..${p.lines.length} were added after ${f.name} began (it chains from line ${m + 1})`);
    const lr = rec(last);
    if (last !== undefined && lr?.type === 'checkpoint' && mac !== undefined && !(await macOk(p, lr, mac)))
      stop('edited', p, last.line, `line ${last.line} (the checkpoint) was changed: ${f.name} does not chain from it and its HMAC fails`);
    stop('truncated', p, end, `the file's tail is gone: ${f.name} chains from a line that is no longer at its end`);
  }
  // The previous file's end: a checkpoint, or (a crash, a write failure) a tail the next file calls torn.
  const clean = rec(last)?.type === 'checkpoint' && p.tornBytes === 0;
  if (clean) {
    if (r.reason === 'torn' && (r.tornBytes ?? 0) > 0)
      stop('truncated', p, end, `${f.name} says it ended in ${r.tornBytes} bytes of an incomplete line, which are gone`);
    return;
  }
  if (r.reason !== 'torn' || r.tornBytes !== p.tornBytes) {
    const what = p.tornBytes > 0 ? `an incomplete line (${p.tornBytes} bytes)` : 'lines after its last checkpoint';
    stop('truncated', p, end, `it ends in ${what} that ${f.name} does not acknowledge as a torn tail`);
  }
  v.warnings.push({
    file: p.name,
    line: end,
    message:
      p.tornBytes > 0
        ? `torn tail (crash): ${p.tornBytes} bytes of an incomplete line, acknowledged by ${f.name}`
        : `torn tail (crash): ends without a checkpoint, acknowledged by ${f.name}`,
  });
}

async function macOk(f: TrailFile, c: CheckpointRecord, mac: CheckpointMac): Promise<boolean> {
  return mac.verify(c.hmacKeyId, checkpointMessage(f.name, c), Buffer.from(c.hmac, 'hex'));
}

async function checkCheckpoint(
  files: readonly TrailFile[],
  fi: number,
  k: number,
  c: CheckpointRecord,
  mac: CheckpointMac | undefined,
  v: Verdict,
): Promise<void> {
  const f = files[fi]!;
  const at = f.lines[k]!.line;
  if (c.head !== c.prev) stop('edited', f, at, `checkpoint at line ${at}: head differs from prev`);
  if (c.records !== c.seq)
    stop('edited', f, at, `checkpoint at line ${at}: records is ${c.records}, the file has ${c.seq} lines before it`);
  v.checkpoints++;
  if (mac === undefined) return;
  if (!(await macOk(f, c, mac))) {
    // Changed in place if the next line no longer chains from it; else a checkpoint made without the key.
    const hash = f.lines[k]!.hash;
    const next = rec(f.lines[k + 1]) ?? (f.lines[k + 1] === undefined ? rec(files[fi + 1]?.lines[0]) : undefined);
    if (next !== undefined && next.prev !== hash) stop('edited', f, at, `checkpoint at line ${at} was changed (its HMAC fails)`);
    stop('forged-checkpoint', f, at, `checkpoint at line ${at}: the HSM rejects its HMAC (key ${c.hmacKeyId})`);
  }
  v.hmacsVerified++;
}

/** The newest file's end: still being written, or a crash not yet followed by a restart. */
function tailWarnings(f: TrailFile | undefined, v: Verdict): void {
  if (f === undefined) return;
  const end = f.lines.length + 1;
  if (f.tornBytes > 0)
    v.warnings.push({ file: f.name, line: end, message: `incomplete last line (${f.tornBytes} bytes): being written, or a crash` });
  let unsealed = 0;
  for (let k = f.lines.length - 1; k >= 0 && rec(f.lines[k])?.type !== 'checkpoint'; k--) unsealed++;
  if (unsealed > 0)
    v.warnings.push({
      file: f.name,
      line: end - unsealed,
      message: `${unsealed} line${unsealed === 1 ? '' : 's'} after the last checkpoint, not yet sealed by an HMAC (the open file)`,
    });
}
