/**
 * Checkpoints under an earlier [audit] hmac_key_id: the real CLI serves with key A, is restarted
 * with key B, and `xks-proxy audit verify` (the real CLI, HMACs in the real SoftHSM2 token) checks
 * each checkpoint with the key it names. A checkpoint made with another key than it
 * names is forged; once key A is deleted from the token, its checkpoints are "key not in the HSM".
 */
import { cpSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { AUDIT_HMAC_LABEL } from './helpers/audit.js';
import { useAuditProxy } from './helpers/audit-proxy.js';
import { audit, readLines, type VerifyJson, withField, writeLines } from './helpers/audit-tamper.js';
import { deleteTokenKey } from './helpers/fault-engines.js';
import { spawnProxyCli } from './helpers/cli.js';
import { TEST_KEYS } from './helpers/softhsm.js';

const fx = useAuditProxy({
  label: 'xks-audit-keys',
  prefix: '/audit/keys',
  creds: { accessKeyId: 'AKIDAUDITKEYS00000001', secret: 'a2V5cy1rZXlzLWtleXMta2V5cy1rZXlzLWtleXMta2U=' },
});
const KEY_A = AUDIT_HMAC_LABEL;
const KEY_B = 'xks-audit-hmac-b';
const TWICE = 'xks-audit-hmac-twice';

let trail: string;
let settingsB: string;
/** Per file (chain order): its name, the key its start record names, its checkpoints' 1-based lines. */
let files: { name: string; key: string; checkpoints: number[] }[];

/** `xks-proxy` with [audit] hmac_key_id = `hmacKeyId` serves `ids`, then a clean stop; its settings file. */
async function serve(hmacKeyId: string, ids: string[]): Promise<string> {
  const settings = fx.settingsFile(`${hmacKeyId}.toml`, fx.spec(trail, { hmacKeyId, checkpointEvery: 2 }));
  const proxy = await spawnProxyCli({ ...fx.token.env, XKS_PROXY_SETTINGS_TOML: settings });
  try {
    for (const id of ids) expect((await fx.metadata(`http://127.0.0.1:${proxy.port}`, id)).status).toBe(200);
  } finally {
    proxy.child.kill('SIGTERM');
  }
  expect(await proxy.exited).toBe(0);
  return settings;
}

beforeAll(async () => {
  await fx.withHsm(async (hsm) => {
    await hsm.createHmacKey(KEY_B);
    await hsm.createHmacKey(TWICE);
    await hsm.createHmacKey(TWICE);
  });
  trail = path.join(fx.work, 'trail');
  await serve(KEY_A, ['a-0', 'a-1', 'a-2']);
  // The operator switches [audit] hmac_key_id to key B and restarts.
  settingsB = await serve(KEY_B, ['b-0', 'b-1', 'b-2']);
  const names = readdirSync(trail).sort();
  files = names.map((name) => {
    const records = readLines(path.join(trail, name)).map((l) => JSON.parse(l) as { type: string; hmacKeyId?: string });
    return {
      name,
      key: String(records[0]!.hmacKeyId),
      checkpoints: records.flatMap((r, i) => (r.type === 'checkpoint' ? [i + 1] : [])),
    };
  });
});

let copies = 0;
function copy(): string {
  const dir = path.join(fx.work, `t${++copies}`);
  cpSync(trail, dir, { recursive: true });
  return dir;
}

async function verify(dir: string): Promise<{ code: number | null; v: VerifyJson; stderr: string }> {
  const r = await audit(['verify', dir, '--config', settingsB, '--json'], fx.token.env);
  expect(r.stdout, r.stderr).not.toBe('');
  return { code: r.code, v: JSON.parse(r.stdout) as VerifyJson, stderr: r.stderr };
}

/** Re-labels the newest file's last checkpoint (its last line: nothing chains from it). */
function relabelLastCheckpoint(dir: string, label: string): { file: string; line: number } {
  const last = files[files.length - 1]!;
  const f = path.join(dir, last.name);
  const lines = readLines(f);
  expect(JSON.parse(lines.at(-1)!)).toMatchObject({ type: 'checkpoint', hmacKeyId: KEY_B });
  lines[lines.length - 1] = withField(lines.at(-1)!, 'hmacKeyId', label);
  writeLines(f, lines);
  return { file: last.name, line: lines.length };
}

describe('checkpoints under an earlier hmac_key_id', () => {
  it('a trail written with key A, then (restarted) with key B, verifies: each checkpoint with the key it names', async () => {
    expect(files.map((f) => f.key)).toEqual([KEY_A, KEY_B]);
    for (const f of files) expect(f.checkpoints.length).toBeGreaterThanOrEqual(2);
    const { code, v } = await verify(trail);
    expect(code).toBe(0);
    expect(v.break).toBeNull();
    expect(v.files).toEqual(files.map((f) => f.name));
    const total = files.reduce((n, f) => n + f.checkpoints.length, 0);
    expect(v).toMatchObject({ checkpoints: total, hmacsVerified: total, uses: 6 });
  });

  it("a checkpoint made with another key than it names is forged (key B's HMAC, labelled A)", async () => {
    const dir = copy();
    const at = relabelLastCheckpoint(dir, KEY_A);
    const { code, v } = await verify(dir);
    expect(code).toBe(1);
    expect(v.break).toMatchObject({ kind: 'forged-checkpoint', ...at });
  });

  it('a checkpoint naming a key that is no HMAC key (an AES key) is forged', async () => {
    const dir = copy();
    const at = relabelLastCheckpoint(dir, TEST_KEYS.ordinary);
    const { code, v } = await verify(dir);
    expect(code).toBe(1);
    expect(v.break).toMatchObject({ kind: 'forged-checkpoint', ...at });
  });

  it('a checkpoint naming a label the HSM holds twice: exit 2, naming the label', async () => {
    const dir = copy();
    relabelLastCheckpoint(dir, TWICE);
    const r = await audit(['verify', dir, '--config', settingsB], fx.token.env);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`more than one key labelled ${TWICE}`);
  });

  it('a checkpoint naming a key the HSM does not hold is its own finding, not "forged"', async () => {
    const dir = copy();
    const at = relabelLastCheckpoint(dir, 'no-such-hmac-key');
    const { code, v } = await verify(dir);
    expect(code).toBe(1);
    expect(v.break).toMatchObject({ kind: 'key-not-in-hsm', ...at });
    expect(v.break!.message).toContain('no-such-hmac-key');
  });

  it('key A deleted from the token: its first checkpoint is "key not in the HSM", naming the label', async () => {
    deleteTokenKey(fx.token, KEY_A);
    const { code, v } = await verify(trail);
    expect(code).toBe(1);
    expect(v.break).toMatchObject({ kind: 'key-not-in-hsm', file: files[0]!.name, line: files[0]!.checkpoints[0] });
    expect(v.break!.message).toContain(KEY_A);
    expect(v.hmacsVerified).toBe(0);
    const human = await audit(['verify', trail, '--config', settingsB], fx.token.env);
    expect(human.code).toBe(1);
    expect(human.stderr).toMatch(
      new RegExp(`^BROKEN: key-not-in-hsm at ${files[0]!.name.replace(/\./g, '\\.')} line \\d+: .*${KEY_A}`, 'm'),
    );
  });
});
