/**
 * Audit trail test tooling: a keyed token that also holds an HMAC key of known bytes, and an
 * independent check of a trail directory (format v1: the chain of every line, the files linked by
 * their start records, every checkpoint's HMAC recomputed with node:crypto and the known key).
 */
import { createHash, createHmac } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { makeKeyedToken } from './keyed-token.js';
import type { TestToken } from './softhsm.js';

export const AUDIT_HMAC_LABEL = 'xks-audit-test-hmac';
export const AUDIT_HMAC_KEY: Buffer = Buffer.from(Array.from({ length: 32 }, (_, i) => 0x5a ^ (i * 7)));

/** The standard test keys plus the audit HMAC key (AUDIT_HMAC_KEY's bytes). */
export function makeAuditToken(label: string): Promise<TestToken> {
  return makeKeyedToken(label, async (engine) => {
    await engine.createKey(AUDIT_HMAC_LABEL, { value: AUDIT_HMAC_KEY, encrypt: false, decrypt: false, hmac: true });
  });
}

export type Rec = Record<string, unknown> & { type: string; seq: number; prev: string };

export interface TrailFileView {
  name: string;
  records: Rec[];
  /** Bytes after the last "\n" (before the zeros). */
  tornBytes: number;
  /** Zero bytes at the end: blocks a before-response writer prepared and did not cut off. */
  zeros: number;
}

export interface CheckedTrail {
  /** In chain order. */
  files: TrailFileView[];
  uses: Rec[];
  checkpoints: number;
}

const sha = (s: string): string => createHash('sha256').update(s, 'utf8').digest('hex');

function readView(dir: string, name: string): TrailFileView & { lines: string[] } {
  const raw = readFileSync(path.join(dir, name), 'utf8');
  const text = raw.replace(/\0+$/, '');
  const end = text.lastIndexOf('\n');
  const lines = end < 0 ? [] : text.slice(0, end).split('\n');
  return {
    name,
    lines,
    records: lines.map((l) => JSON.parse(l) as Rec),
    tornBytes: text.length - (end + 1),
    zeros: raw.length - text.length,
  };
}

/** Checks every file of the trail in `dir`; throws naming the file, line and problem. */
export function checkTrail(dir: string, prefix = 'xks-audit'): CheckedTrail {
  const names = readdirSync(dir).filter((n) => n.startsWith(`${prefix}.`) && n.endsWith('.jsonl'));
  const views = names.map((n) => readView(dir, n));
  const byName = new Map(views.map((v) => [v.name, v]));
  // Chain order: the first file says "first"; each next one names its predecessor.
  const next = new Map<string, string>();
  let first: string | undefined;
  for (const v of views) {
    const s = v.records[0];
    if (s === undefined) throw new Error(`${v.name}: no complete line`);
    if (s.type !== 'start') throw new Error(`${v.name}:1: first line is not a start record`);
    if (s.reason === 'first') {
      if (first !== undefined) throw new Error(`two first files: ${first}, ${v.name}`);
      first = v.name;
    } else {
      const p = s.previousFile as string;
      if (!byName.has(p)) throw new Error(`${v.name}: previousFile ${p} is missing`);
      if (next.has(p)) throw new Error(`${p} has two successors`);
      next.set(p, v.name);
    }
  }
  if (first === undefined) throw new Error('no first file');
  const order: TrailFileView[] = [];
  for (let n: string | undefined = first; n !== undefined; n = next.get(n)) order.push(byName.get(n)!);
  if (order.length !== views.length) throw new Error(`files not in one chain: ${order.length} of ${views.length}`);
  const uses: Rec[] = [];
  let checkpoints = 0;
  let prevHash = '0'.repeat(64);
  let prevView: (typeof views)[number] | undefined;
  for (const f of order) {
    const v = byName.get(f.name)!;
    const start = v.records[0]!;
    if (prevView !== undefined) {
      if (start.previousHash !== prevHash) throw new Error(`${v.name}:1: previousHash does not match ${prevView.name}'s last line`);
      const last = prevView.records.at(-1)!;
      const clean = last.type === 'checkpoint' && prevView.tornBytes === 0 && prevView.zeros === 0;
      const reason = start.reason as string;
      if (reason === 'torn') {
        if (start.tornBytes !== prevView.tornBytes)
          throw new Error(`${v.name}:1: tornBytes ${String(start.tornBytes)} != ${prevView.tornBytes}`);
      } else if (!clean) {
        throw new Error(`${v.name}:1: reason ${reason} after ${prevView.name}, which did not end in a checkpoint`);
      }
    }
    v.lines.forEach((line, i) => {
      const r = v.records[i]!;
      const where = `${v.name}:${i + 1}`;
      if (r.v !== 1) throw new Error(`${where}: v is not 1`);
      if (r.seq !== i) throw new Error(`${where}: seq ${r.seq}, expected ${i}`);
      if (r.prev !== prevHash) throw new Error(`${where}: prev does not chain`);
      if (Object.keys(r).at(-1) !== 'prev') throw new Error(`${where}: prev is not the last field`);
      if (!/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/.test(r.time as string)) throw new Error(`${where}: time ${String(r.time)}`);
      if (i > 0 && r.type === 'start') throw new Error(`${where}: start record not first`);
      if (r.type === 'use') uses.push(r);
      if (r.type === 'checkpoint') {
        if (r.head !== r.prev || r.records !== i) throw new Error(`${where}: checkpoint head/records`);
        const msg = `xks-proxy-audit-v1\n${v.name}\n${r.seq}\n${String(r.time)}\n${String(r.head)}`;
        const mac = createHmac('sha256', AUDIT_HMAC_KEY).update(msg, 'utf8').digest('hex');
        if (r.hmac !== mac) throw new Error(`${where}: checkpoint HMAC does not verify`);
        checkpoints++;
      }
      prevHash = sha(line);
    });
    prevView = v;
  }
  return { files: order, uses, checkpoints };
}

/** Mode bits of a path (permissions only). */
export function modeOf(p: string): number {
  return statSync(p).mode & 0o777;
}
