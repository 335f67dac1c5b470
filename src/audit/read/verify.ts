/**
 * `audit verify`'s check: the hash chain across the files (in chain order, order.ts) and every
 * checkpoint's HMAC through the HSM. It stops at the first break and names it: file, 1-based line and
 * kind (the format contract's list). A crash's torn tail that the next file acknowledges, records not
 * yet sealed by a checkpoint, and a last line still being written are warnings, not breaks.
 *
 * Files are streamed: what a decision needs is the two lines before, a window of lines after (a moved
 * line is recognised within WINDOW lines; one moved farther shows as deleted there and inserted where
 * it landed) and the end of the previous file.
 */
import { orderTrail, type RangeStart } from './order.js';
import type { AuditRecord, CheckpointRecord, UseRecord } from './record.js';
import { LineReader, type TrailFile, type TrailLine, ZERO_HASH } from './trail-files.js';

export type BreakKind =
  | 'edited'
  | 'inserted'
  | 'deleted'
  | 'reordered'
  | 'truncated'
  | 'missing-file'
  | 'forged-checkpoint'
  | 'key-not-in-hsm';

export interface Finding {
  file: string;
  /** 1-based; for a file's end, the line after its last complete line. */
  line: number;
  message: string;
}

export interface Break extends Finding {
  kind: BreakKind;
}

/**
 * What the HSM says of a checkpoint's HMAC with the key the checkpoint names: `valid`; `invalid`
 * (not made with that key, or that key cannot make HMACs); `absent` (the HSM holds no key with
 * that label, so nothing can be said).
 */
export type MacCheck = 'valid' | 'invalid' | 'absent';

/** Checks checkpoint HMACs in the HSM, each with the key (label) it names. */
export interface CheckpointMac {
  verify(keyLabel: string, message: Buffer, mac: Buffer): Promise<MacCheck>;
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
  /** A range: where it begins (nothing before that file is proven); undefined from the trail's first file. */
  range: RangeStart | undefined;
}

/** Called for every use record the walk passes (in chain order), for the listing and reconcile. */
export type UseSink = (file: string, line: number, record: UseRecord) => void;

/** How far ahead a moved line is looked for. */
export const WINDOW = 256;

/** The message a checkpoint's HMAC covers (the format contract). */
export function checkpointMessage(fileName: string, c: Pick<CheckpointRecord, 'seq' | 'time' | 'head'>): Buffer {
  return Buffer.from(`xks-proxy-audit-v1\n${fileName}\n${c.seq}\n${c.time}\n${c.head}`, 'utf8');
}

const rec = (l: TrailLine | undefined): AuditRecord | undefined => (l === undefined || typeof l.record === 'string' ? undefined : l.record);

class Stop {
  constructor(readonly found: Break) {}
}

function stop(kind: BreakKind, file: string, line: number, message: string): never {
  throw new Stop({ kind, file, line, message });
}

/** A file's lines with a look-ahead window. */
class Cursor {
  private ahead: TrailLine[] = [];
  constructor(private readonly reader: LineReader) {}

  peek(i: number): TrailLine | undefined {
    while (this.ahead.length <= i) {
      const l = this.reader.next();
      if (l === undefined) break;
      this.ahead.push(l);
    }
    return this.ahead[i];
  }

  take(): TrailLine | undefined {
    return this.ahead.length > 0 ? this.ahead.shift() : this.reader.next();
  }

  /** A later line (within the window) whose hash is h. */
  findAhead(h: string): TrailLine | undefined {
    for (let i = 0; i < WINDOW; i++) {
      const l = this.peek(i);
      if (l === undefined) return undefined;
      if (l.hash === h) return l;
    }
    return undefined;
  }
}

/** What the next file's first line is checked against. */
interface FileEnd {
  name: string;
  lines: number;
  last: TrailLine | undefined;
  tornBytes: number;
  /** Hash -> line number of its last WINDOW lines. */
  recent: Map<string, number>;
  /** Lines after its last checkpoint. */
  unsealed: number;
}

/**
 * Verifies the files (any order). `mac` undefined: the chain only (the listing's check), checkpoints
 * counted but not authenticated. `range`: the files may begin mid-chain (order.ts); the first one
 * is then checked from its start record's `prev`.
 */
export async function verifyTrail(
  input: readonly TrailFile[],
  mac: CheckpointMac | undefined,
  onUse?: UseSink,
  range = false,
): Promise<Verdict> {
  const v: Verdict = { files: [], break: undefined, warnings: [], lines: 0, uses: 0, checkpoints: 0, hmacsVerified: 0, range: undefined };
  const ordering = orderTrail(input, range);
  if ('break' in ordering) {
    v.break = { kind: 'missing-file', file: ordering.break.file, line: 1, message: ordering.break.problem };
    return v;
  }
  const files = ordering.files;
  v.files = files.map((f) => f.name);
  v.range = ordering.range;
  const walk = new Walk(files, mac, v, onUse);
  try {
    let end: FileEnd | undefined;
    for (let fi = 0; fi < files.length; fi++) end = await walk.file(fi, end);
    if (end !== undefined) tailWarnings(end, v);
  } catch (e) {
    if (e instanceof Stop) v.break = e.found;
    else throw e;
  }
  return v;
}

class Walk {
  /** The hash the next line must chain from: the last complete line so far. */
  private head: string;

  constructor(
    private readonly files: readonly TrailFile[],
    private readonly mac: CheckpointMac | undefined,
    private readonly v: Verdict,
    private readonly onUse: UseSink | undefined,
  ) {
    this.head = v.range?.previousHash ?? ZERO_HASH;
  }

  async file(fi: number, prevEnd: FileEnd | undefined): Promise<FileEnd> {
    const f = this.files[fi]!;
    const reader = new LineReader(f.path);
    const cur = new Cursor(reader);
    const end: FileEnd = { name: f.name, lines: 0, last: undefined, tornBytes: 0, recent: new Map(), unsealed: 0 };
    const order: string[] = [];
    let before2: TrailLine | undefined;
    let before: TrailLine | undefined;
    try {
      for (let k = 0; ; k++) {
        const l = cur.take();
        if (l === undefined) break;
        const expected = k === 0 ? this.head : before!.hash;
        const r = rec(l);
        if (r === undefined) {
          // Not a record: inserted when the next line chains past it, else a line changed in place.
          if (rec(cur.peek(0))?.prev === expected)
            stop('inserted', f.name, l.line, `line ${l.line} is not a record (${l.record}) and the chain skips it`);
          stop('edited', f.name, l.line, `line ${l.line} is not a valid record: ${l.record}`);
        }
        if (k === 0) await this.firstLine(fi, r, prevEnd);
        else if (r.prev !== expected || r.seq !== k) classify(f.name, k, l, before!, before2, cur);
        else if (r.type === 'start') stop('inserted', f.name, l.line, `a start record at line ${l.line} (only a first line starts a file)`);
        if (r.type === 'use') {
          this.v.uses++;
          this.onUse?.(f.name, l.line, r);
        }
        if (r.type === 'checkpoint') {
          await this.checkpoint(fi, l, r, cur);
          end.unsealed = 0;
        } else end.unsealed++;
        this.v.lines++;
        this.head = l.hash;
        before2 = before;
        before = l;
        end.recent.set(l.hash, l.line);
        order.push(l.hash);
        if (order.length > WINDOW) end.recent.delete(order.shift()!);
      }
      if (before === undefined && fi === 0)
        stop('missing-file', f.name, 1, 'the first file has no complete line: the trail does not begin here');
    } finally {
      reader.close();
    }
    end.lines = before?.line ?? 0;
    end.last = before;
    end.tornBytes = reader.tornBytes;
    if (reader.zeros > 0)
      this.v.warnings.push({
        file: f.name,
        line: end.lines + 1,
        message: `${reader.zeros} zero bytes after the last line: blocks a before-response writer prepared (the file is open, or its writer was killed)`,
      });
    return end;
  }

  /** A file's first line: a start record chaining from the previous file's last complete line. */
  private async firstLine(fi: number, r: AuditRecord, p: FileEnd | undefined): Promise<void> {
    const name = this.files[fi]!.name;
    const expected = this.head;
    if (r.type !== 'start') {
      if (r.seq > 0 && r.prev !== expected)
        stop('deleted', name, 1, `the file's first ${r.seq} line${r.seq === 1 ? '' : 's'} (its start record) are missing`);
      stop('edited', name, 1, 'the first line is not a start record');
    }
    if (r.seq !== 0) stop('edited', name, 1, `the start record has seq ${r.seq}, expected 0`);
    if (p === undefined) {
      // A range's first file: its predecessor was not given; its start record is checked in itself.
      if (this.v.range !== undefined) {
        if (r.previousHash !== r.prev) stop('edited', name, 1, 'its start record: previousHash and prev differ');
        return;
      }
      if (r.reason !== 'first' || r.prev !== ZERO_HASH)
        stop('missing-file', name, 1, `the first file given does not begin the trail (its start record says "${r.reason}")`);
      return;
    }
    if (r.reason === 'first') stop('edited', name, 1, 'a start record saying "first" after another file');
    if (r.previousFile !== p.name)
      stop('edited', name, 1, `its start record names ${r.previousFile ?? 'no file'} as previous, not ${p.name}`);
    if (r.previousHash !== r.prev) stop('edited', name, 1, 'its start record: previousHash and prev differ');
    const end = p.lines + 1;
    if (r.prev !== expected) {
      const m = p.recent.get(r.prev);
      if (m !== undefined)
        stop('inserted', p.name, m + 1, `lines ${m + 1}..${p.lines} were added after ${name} began (it chains from line ${m})`);
      const lr = rec(p.last);
      if (p.last !== undefined && lr?.type === 'checkpoint' && this.mac !== undefined && (await this.macCheck(p.name, lr)) !== 'valid')
        stop(
          'edited',
          p.name,
          p.last.line,
          `line ${p.last.line} (the checkpoint) was changed: ${name} does not chain from it and its HMAC fails`,
        );
      stop('truncated', p.name, end, `the file's tail is gone: ${name} chains from a line that is no longer at its end`);
    }
    // The previous file's end: a checkpoint, or (a crash, a write failure) a tail the next file calls torn.
    if (rec(p.last)?.type === 'checkpoint' && p.tornBytes === 0) {
      if (r.reason === 'torn' && (r.tornBytes ?? 0) > 0)
        stop('truncated', p.name, end, `${name} says it ended in ${r.tornBytes} bytes of an incomplete line, which are gone`);
      // A kill right after a checkpoint: the file is whole, but its writer did not stop cleanly.
      if (r.reason === 'torn')
        this.v.warnings.push({
          file: p.name,
          line: end,
          message: `crash right after a checkpoint: nothing is torn, acknowledged by ${name}`,
        });
      return;
    }
    if (r.reason !== 'torn' || r.tornBytes !== p.tornBytes) {
      const what = p.tornBytes > 0 ? `an incomplete line (${p.tornBytes} bytes)` : 'lines after its last checkpoint';
      stop('truncated', p.name, end, `it ends in ${what} that ${name} does not acknowledge as a torn tail`);
    }
    this.v.warnings.push({
      file: p.name,
      line: end,
      message:
        p.tornBytes > 0
          ? `torn tail (crash): ${p.tornBytes} bytes of an incomplete line, acknowledged by ${name}`
          : `torn tail (crash): ends without a checkpoint, acknowledged by ${name}`,
    });
  }

  private macCheck(fileName: string, c: CheckpointRecord): Promise<MacCheck> {
    return this.mac!.verify(c.hmacKeyId, checkpointMessage(fileName, c), Buffer.from(c.hmac, 'hex'));
  }

  private async checkpoint(fi: number, l: TrailLine, c: CheckpointRecord, cur: Cursor): Promise<void> {
    const name = this.files[fi]!.name;
    const at = l.line;
    if (c.head !== c.prev) stop('edited', name, at, `checkpoint at line ${at}: head differs from prev`);
    if (c.records !== c.seq)
      stop('edited', name, at, `checkpoint at line ${at}: records is ${c.records}, the file has ${c.seq} lines before it`);
    this.v.checkpoints++;
    if (this.mac === undefined) return;
    const check = await this.macCheck(name, c);
    if (check !== 'valid') {
      // Changed in place if the next line no longer chains from it; else a checkpoint made without the key.
      const next = cur.peek(0) === undefined ? this.nextFileFirst(fi) : rec(cur.peek(0));
      if (next !== undefined && next.prev !== l.hash) stop('edited', name, at, `checkpoint at line ${at} was changed (its HMAC fails)`);
      if (check === 'absent')
        stop(
          'key-not-in-hsm',
          name,
          at,
          `checkpoint at line ${at} names the HMAC key labelled ${c.hmacKeyId}, which the HSM does not hold: ` +
            'its HMAC cannot be checked, so nothing before it is proven (restore that key to the HSM)',
        );
      stop('forged-checkpoint', name, at, `checkpoint at line ${at}: the HSM rejects its HMAC (key ${c.hmacKeyId})`);
    }
    this.v.hmacsVerified++;
  }

  private nextFileFirst(fi: number): AuditRecord | undefined {
    return rec(this.files[fi + 1]?.first);
  }
}

/**
 * A break inside a file at index k (k >= 1): the line's prev or seq is not what the chain says.
 * Decided from the seq numbers and the hashes around it (the format contract's rules).
 */
function classify(file: string, k: number, l: TrailLine, before: TrailLine, before2: TrailLine | undefined, cur: Cursor): never {
  const r = rec(l)!;
  const okPrev = r.prev === before.hash;
  const at = l.line;
  // The line before was inserted: this one chains from the line two before it.
  if (before2 !== undefined && r.prev === before2.hash)
    stop('inserted', file, before.line, `line ${before.line} was inserted: line ${at} chains from line ${before2.line}`);
  // Moved: this line chains from a line placed after it.
  const from = cur.findAhead(r.prev);
  if (from !== undefined) stop('reordered', file, at, `line ${at} (seq ${r.seq}) chains from line ${from.line}, which comes after it`);
  const next = rec(cur.peek(0));
  if (!okPrev && next?.prev === before.hash)
    stop('inserted', file, at, `line ${at} was inserted: line ${at + 1} chains from line ${at - 1}`);
  if (!okPrev && r.seq > k) {
    const n = r.seq - k;
    stop('deleted', file, at, `${n} record${n === 1 ? '' : 's'} missing before line ${at} (seq jumps from ${k - 1} to ${r.seq})`);
  }
  if (!okPrev && r.seq < k) stop('reordered', file, at, `line ${at} has seq ${r.seq}, expected ${k}`);
  if (okPrev) stop('edited', file, at, `line ${at} has seq ${r.seq}, expected ${k} (changed in place)`);
  // prev wrong, seq right: the line before was changed, unless this line's own prev was (then the next line breaks too).
  if (next !== undefined && next.prev !== l.hash)
    stop('edited', file, at, `line ${at} was changed: neither its prev nor its hash match its neighbours`);
  stop('edited', file, before.line, `line ${before.line} was changed: its hash no longer matches line ${at}'s prev`);
}

/** The newest file's end: still being written, or a crash not yet followed by a restart. */
function tailWarnings(end: FileEnd, v: Verdict): void {
  const after = end.lines + 1;
  if (end.tornBytes > 0)
    v.warnings.push({ file: end.name, line: after, message: `incomplete last line (${end.tornBytes} bytes): being written, or a crash` });
  if (end.unsealed > 0)
    v.warnings.push({
      file: end.name,
      line: after - end.unsealed,
      message: `${end.unsealed} line${end.unsealed === 1 ? '' : 's'} after the last checkpoint, not yet sealed by an HMAC (the open file)`,
    });
}
