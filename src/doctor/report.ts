/**
 * What `xks-proxy doctor` finds: one Finding per check, ok / warn / fail, with the error AWS KMS
 * would report because of it and the fix; printed as a table for people or as JSON for scripts.
 * Exit code: 0 all ok, 1 a warning, 2 a failure.
 */
export type Status = 'ok' | 'warn' | 'fail';

export interface Finding {
  /** The check group, e.g. "hsm", "key foo", "tls". */
  group: string;
  /** What was checked, e.g. "login". */
  check: string;
  status: Status;
  /** What was found (never a secret). */
  detail: string;
  /** The KMS error (ConnectionErrorCode or exception) this causes; absent when ok. */
  kms?: string;
  /** How to fix it; absent when ok. */
  fix?: string;
}

export const ok = (group: string, check: string, detail: string): Finding => ({ group, check, status: 'ok', detail });

export function problem(status: 'warn' | 'fail', group: string, check: string, detail: string, kms: string, fix: string): Finding {
  return { group, check, status, detail, kms, fix };
}

const RANK: Record<Status, number> = { ok: 0, warn: 1, fail: 2 };

/** 0 when every finding is ok, 1 with a warning, 2 with a failure. */
export function exitCode(findings: readonly Finding[]): 0 | 1 | 2 {
  return findings.reduce<0 | 1 | 2>((worst, f) => Math.max(worst, RANK[f.status]) as 0 | 1 | 2, 0);
}

export function toJson(findings: readonly Finding[]): string {
  const count = (s: Status): number => findings.filter((f) => f.status === s).length;
  return `${JSON.stringify({ result: (['ok', 'warn', 'fail'] as const)[exitCode(findings)], ok: count('ok'), warn: count('warn'), fail: count('fail'), findings }, null, 2)}\n`;
}

/** A table: STATUS, GROUP, CHECK, DETAIL; under a warn or fail its KMS error and fix; then a summary line. */
export function toTable(findings: readonly Finding[]): string {
  const w = (k: 'group' | 'check'): number => Math.max(k.length, ...findings.map((f) => f[k].length));
  const gw = w('group');
  const cw = w('check');
  const pad = (s: string, n: number): string => s + ' '.repeat(Math.max(0, n - s.length));
  const indent = ' '.repeat(7 + gw + 2 + cw + 2);
  let out = `${pad('STATUS', 7)}${pad('GROUP', gw + 2)}${pad('CHECK', cw + 2)}DETAIL\n`;
  for (const f of findings) {
    out += `${pad(f.status.toUpperCase(), 7)}${pad(f.group, gw + 2)}${pad(f.check, cw + 2)}${f.detail}\n`;
    if (f.kms !== undefined) out += `${indent}KMS: ${f.kms}\n`;
    if (f.fix !== undefined) out += `${indent}fix: ${f.fix}\n`;
  }
  const n = (s: Status): number => findings.filter((f) => f.status === s).length;
  out += `\n${n('ok')} ok, ${n('warn')} warn, ${n('fail')} fail\n`;
  return out;
}
