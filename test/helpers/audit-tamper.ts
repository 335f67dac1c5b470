/**
 * What an attacker with root on the proxy host but no HSM access can do to a trail file, and the
 * shell of the real `xks-proxy audit` command that must notice.
 */
import { execFile } from 'node:child_process';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { BIN } from './cli.js';

export function readLines(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  return lines;
}

export function writeLines(file: string, lines: readonly string[]): void {
  writeFileSync(file, lines.map((l) => `${l}\n`).join(''));
}

/** Re-serializes a line with one field changed (key order kept). */
export function withField(line: string, key: string, value: unknown): string {
  const o = JSON.parse(line) as Record<string, unknown>;
  o[key] = value;
  return JSON.stringify(o);
}

export const sha256 = (s: string): string => createHash('sha256').update(s, 'utf8').digest('hex');

/**
 * Rewrites line `from` (0-based) and every later line of the file so the chain holds again, the way
 * someone who can hash but has no HSM key would: checkpoints get an HMAC made with a key of their own.
 */
export function rechain(file: string, lines: string[], from: number): string[] {
  const name = path.basename(file);
  const attackerKey = randomBytes(32);
  const out = [...lines];
  for (let k = from; k < out.length; k++) {
    let o = JSON.parse(out[k]!) as Record<string, unknown>;
    if (k > 0) o = { ...o, prev: sha256(out[k - 1]!) };
    if (o['type'] === 'checkpoint') {
      o['head'] = o['prev'];
      const msg = `xks-proxy-audit-v1\n${name}\n${String(o['seq'])}\n${String(o['time'])}\n${String(o['head'])}`;
      o['hmac'] = createHmac('sha256', attackerKey).update(msg).digest('hex');
      const { prev, ...rest } = o;
      o = { ...rest, prev };
    }
    out[k] = JSON.stringify(o);
  }
  return out;
}

export interface AuditRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The real CLI: `xks-proxy audit ARGS` with the environment added. */
export function audit(args: readonly string[], env: Record<string, string>): Promise<AuditRun> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, 'audit', ...args], { env: { ...process.env, ...env }, timeout: 60_000 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : null;
      resolve({ code, stdout, stderr });
    });
  });
}

export interface VerifyJson {
  ok: boolean;
  break: { kind: string; file: string; line: number; message: string } | null;
  warnings: { file: string; line: number; message: string }[];
  files: string[];
  lines: number;
  uses: number;
  checkpoints: number;
  hmacsVerified: number;
  /** --range: where the files given begin (null: at the trail's first file). */
  range: { file: string; previousFile: string; previousHash: string; message: string } | null;
  matches?: Record<string, unknown>[];
}
