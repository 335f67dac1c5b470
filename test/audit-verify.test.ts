/**
 * `xks-proxy audit verify` and `audit list` (the real CLI) on trails made by the format contract with
 * checkpoints HMAC'd in a real SoftHSM2 token: every kind of break is found and named with its file
 * and line, an acknowledged torn tail is a warning, the listing answers an auditor's question.
 */
import { cpSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { useAuditProxy } from './helpers/audit-proxy.js';
import { audit, readLines, rechain, sha256, type VerifyJson, withField, writeLines } from './helpers/audit-tamper.js';
import { TrailBuilder } from './helpers/audit-trail.js';

const HMAC_KEY = 'xks-audit-hmac';
const ALICE = 'arn:aws:iam::111122223333:user/Alice';
const BOB = 'arn:aws:iam::111122223333:role/Bob';

const fx = useAuditProxy({
  label: 'xks-audit-verify',
  prefix: '/xyz',
  creds: { accessKeyId: 'AKIAAUDITTEST', secret: 'x'.repeat(40) },
  keys: ['k1', 'k2'],
});
let clean: string;
let settings: string;
let env: Record<string, string>;
let names: string[];

beforeAll(async () => {
  await fx.withHsm(async (hsm) => {
    await hsm.createHmacKey(HMAC_KEY);
    // Another HMAC key the HSM holds: a checkpoint naming it was not made with it.
    await hsm.createHmacKey('attacker-key');
    clean = path.join(fx.work, 'clean');
    mkdirSync(clean);
    const b = new TrailBuilder(hsm, HMAC_KEY);
    // 1: first file, a checkpoint mid-file and one at rotation.
    b.start('first', '2026-03-01-09');
    b.use({ keyId: 'k1', operation: 'Encrypt', kmsRequestId: 'r1', kmsOperation: 'Encrypt', awsPrincipalArn: ALICE });
    b.use({ keyId: 'k1', operation: 'Decrypt', kmsRequestId: 'r2', kmsOperation: 'Decrypt', awsPrincipalArn: BOB });
    b.use({ keyId: 'k2', operation: 'Encrypt', kmsRequestId: 'r3', kmsOperation: 'GenerateDataKey', awsPrincipalArn: ALICE });
    await b.checkpoint();
    b.use({
      keyId: 'k1',
      operation: 'Decrypt',
      kmsRequestId: 'r4',
      kmsOperation: 'Decrypt',
      awsPrincipalArn: ALICE,
      outcome: 'InvalidCiphertextException',
      status: 400,
    });
    await b.checkpoint();
    // 2: rotated, closed by a clean shutdown.
    b.at('2026-03-01T10:00:01Z').start('rotate', '2026-03-01-10');
    for (let i = 0; i < 4; i++)
      b.use({ keyId: 'k1', operation: 'Encrypt', kmsRequestId: `r2-${i}`, kmsOperation: 'Encrypt', awsPrincipalArn: ALICE });
    await b.checkpoint();
    // 3: a restart, then a crash in the middle of a line.
    b.at('2026-03-31T23:59:40Z').start('restart', '2026-03-31-23');
    b.use({ keyId: 'k1', operation: 'Encrypt', kmsRequestId: 'r3-0', awsPrincipalArn: ALICE });
    await b.checkpoint();
    b.use({ keyId: 'k1', operation: 'Decrypt', kmsRequestId: 'r3-1', awsPrincipalArn: ALICE });
    b.tear();
    // 4: the restart after the crash says "torn"; April.
    b.at('2026-04-01T00:00:05Z').start('torn', '2026-04-01-00');
    b.use({ keyId: 'k1', operation: 'Encrypt', kmsRequestId: 'r4-0', awsPrincipalArn: ALICE });
    b.use({ keyId: 'k2', operation: 'GetKeyMetadata', kmsRequestId: 'r4-1', awsPrincipalArn: BOB });
    await b.checkpoint();
    names = b.write(clean).map((p) => path.basename(p));
  });
  settings = fx.settingsFile('settings.toml', fx.spec(clean, { hmacKeyId: HMAC_KEY }));
  env = { ...fx.token.env, XKS_PROXY_SETTINGS_TOML: settings };
});

let copies = 0;
/** A copy of the clean trail to tamper with. */
function copy(): string {
  const dir = path.join(fx.work, `t${++copies}`);
  cpSync(clean, dir, { recursive: true });
  return dir;
}

async function verify(dir: string, ...more: string[]): Promise<{ code: number | null; v: VerifyJson; stderr: string }> {
  const r = await audit(['verify', dir, '--json', ...more], env);
  expect(r.stdout, r.stderr).not.toBe('');
  return { code: r.code, v: JSON.parse(r.stdout) as VerifyJson, stderr: r.stderr };
}

describe('audit verify: a clean trail', () => {
  it('verifies across rotation, restart and an acknowledged torn tail, with every HMAC in the HSM', async () => {
    const { code, v } = await verify(clean);
    expect(code).toBe(0);
    expect(v.break).toBeNull();
    expect(v.files).toEqual(names);
    expect(v.checkpoints).toBe(5);
    expect(v.hmacsVerified).toBe(5);
    expect(v.uses).toBe(12);
    expect(v.warnings.map((w) => `${w.file}:${w.message}`)).toEqual([
      `${names[2]}:torn tail (crash): 26 bytes of an incomplete line, acknowledged by ${names[3]}`,
    ]);
    // Human output, and the [audit] directory of the settings when no file is named.
    const human = await audit(['verify'], env);
    expect(human.code).toBe(0);
    expect(human.stderr).toMatch(/^warning: .*torn tail \(crash\)/m);
    expect(human.stderr).toMatch(/^verified: 4 files, 21 lines \(12 uses, 5 checkpoints, 5 HMACs verified in the HSM\)$/m);
  });

  it('a crash right after a checkpoint: the file is whole, the next says torn, verify warns', async () => {
    const dir = path.join(fx.work, 'crash-at-checkpoint');
    mkdirSync(dir);
    const files = await fx.withHsm(async (hsm) => {
      const b = new TrailBuilder(hsm, HMAC_KEY).start('first', '2026-06-01-00');
      b.use({ keyId: 'k1', operation: 'Encrypt', kmsRequestId: 'c-0', awsPrincipalArn: ALICE });
      await b.checkpoint();
      b.start('torn', '2026-06-01-00');
      b.use({ keyId: 'k1', operation: 'Encrypt', kmsRequestId: 'c-1', awsPrincipalArn: ALICE });
      await b.checkpoint();
      return b.write(dir).map((f) => path.basename(f));
    });
    const { code, v } = await verify(dir);
    expect(code).toBe(0);
    expect(v).toMatchObject({ break: null, uses: 2, checkpoints: 2, hmacsVerified: 2 });
    expect(v.warnings.map((w) => `${w.file}:${w.line}:${w.message}`)).toEqual([
      `${files[0]}:4:crash right after a checkpoint: nothing is torn, acknowledged by ${files[1]}`,
    ]);
  });

  it('the [audit] directory of the settings: only the files of its file_prefix', async () => {
    const dir = copy();
    writeFileSync(path.join(dir, 'other-proxy.2026-03-01-09.1.jsonl'), '{"not":"ours"}\n');
    const own = path.join(fx.work, 'own-prefix.toml');
    writeFileSync(
      own,
      readFileSync(settings, 'utf8').replace(`directory = ${JSON.stringify(clean)}`, `directory = ${JSON.stringify(dir)}`),
    );
    const viaSettings = await audit(['verify', '--json'], { ...fx.token.env, XKS_PROXY_SETTINGS_TOML: own });
    expect(viaSettings.code, viaSettings.stderr).toBe(0);
    expect((JSON.parse(viaSettings.stdout) as VerifyJson).files).toEqual(names);
    // Named as a directory, every *.jsonl in it is part of the trail.
    expect((await audit(['verify', dir, '--config', own], fx.token.env)).code).toBe(1);
  });

  it('the order is the chain, not the names or the arguments', async () => {
    const dir = copy();
    // Names that sort the other way round do not change the order.
    const { code, v } = await verify(
      path.join(dir, names[3]!),
      path.join(dir, names[1]!),
      path.join(dir, names[0]!),
      path.join(dir, names[2]!),
    );
    expect(code).toBe(0);
    expect(v.files).toEqual(names);
  });
});

describe('audit verify: each tampering is found and named', () => {
  it('edit a field', async () => {
    const dir = copy();
    const f = path.join(dir, names[1]!);
    const lines = readLines(f);
    lines[2] = withField(lines[2]!, 'awsPrincipalArn', BOB);
    writeLines(f, lines);
    const { code, v } = await verify(dir);
    expect(code).toBe(1);
    expect(v.break).toMatchObject({ kind: 'edited', file: names[1], line: 3 });
    const human = await audit(['verify', dir], env);
    expect(human.code).toBe(1);
    expect(human.stderr).toMatch(new RegExp(`^BROKEN: edited at ${names[1]!.replace(/\./g, '\\.')} line 3: `, 'm'));
  });

  it('delete a line', async () => {
    const dir = copy();
    const f = path.join(dir, names[1]!);
    const lines = readLines(f);
    lines.splice(2, 1);
    writeLines(f, lines);
    const { code, v } = await verify(dir);
    expect(code).toBe(1);
    expect(v.break).toMatchObject({ kind: 'deleted', file: names[1], line: 3 });
    expect(v.break!.message).toMatch(/1 record missing before line 3/);
  });

  it('insert a line (chained to the one before it)', async () => {
    const dir = copy();
    const f = path.join(dir, names[1]!);
    const lines = readLines(f);
    let forged = withField(lines[2]!, 'keyId', 'k2');
    forged = withField(forged, 'seq', 3);
    forged = withField(forged, 'prev', sha256(lines[2]!));
    lines.splice(3, 0, forged);
    writeLines(f, lines);
    const { code, v } = await verify(dir);
    expect(code).toBe(1);
    expect(v.break).toMatchObject({ kind: 'inserted', file: names[1], line: 4 });
  });

  it('insert a line that is not a record', async () => {
    const dir = copy();
    const f = path.join(dir, names[0]!);
    const lines = readLines(f);
    lines.splice(1, 0, '{"note":"nothing to see"}');
    writeLines(f, lines);
    const { v } = await verify(dir);
    expect(v.break).toMatchObject({ kind: 'inserted', file: names[0], line: 2 });
  });

  it('swap two lines', async () => {
    const dir = copy();
    const f = path.join(dir, names[1]!);
    const lines = readLines(f);
    [lines[2], lines[3]] = [lines[3]!, lines[2]!];
    writeLines(f, lines);
    const { code, v } = await verify(dir);
    expect(code).toBe(1);
    expect(v.break).toMatchObject({ kind: 'reordered', file: names[1], line: 3 });
  });

  it('truncate a closed file (whole lines, or inside the last line)', async () => {
    const dir = copy();
    const f = path.join(dir, names[0]!);
    writeLines(f, readLines(f).slice(0, -2));
    const { code, v } = await verify(dir);
    expect(code).toBe(1);
    expect(v.break).toMatchObject({ kind: 'truncated', file: names[0], line: 6 });
    const dir2 = copy();
    const g = path.join(dir2, names[1]!);
    truncateSync(g, statSync(g).size - 40);
    const r2 = await verify(dir2);
    expect(r2.code).toBe(1);
    expect(r2.v.break).toMatchObject({ kind: 'truncated', file: names[1] });
  });

  it('remove a middle file', async () => {
    const dir = copy();
    rmSync(path.join(dir, names[1]!));
    const { code, v } = await verify(dir);
    expect(code).toBe(1);
    expect(v.break).toMatchObject({ kind: 'missing-file', file: names[2], line: 1 });
    expect(v.break!.message).toContain(names[1]);
  });

  it('remove the first file, or the torn tail the next file acknowledges', async () => {
    const dir = copy();
    rmSync(path.join(dir, names[0]!));
    expect((await verify(dir)).v.break).toMatchObject({ kind: 'missing-file', file: names[1] });
    const dir2 = copy();
    const f = path.join(dir2, names[2]!);
    writeLines(f, readLines(f).slice(0, -1)); // drops the incomplete tail (the last, unterminated piece)
    expect((await verify(dir2)).v.break).toMatchObject({ kind: 'truncated', file: names[2], line: 5 });
  });

  it('forge a checkpoint without the HSM key (rewrite the rest of the file, HMAC with another key)', async () => {
    const dir = copy();
    const f = path.join(dir, names[3]!);
    const lines = readLines(f);
    lines[1] = withField(lines[1]!, 'awsPrincipalArn', BOB);
    writeLines(f, rechain(f, lines, 2));
    const { code, v } = await verify(dir);
    expect(code).toBe(1);
    expect(v.break).toMatchObject({ kind: 'forged-checkpoint', file: names[3], line: 4 });
  });

  it('a checkpoint naming another HMAC key is not trusted', async () => {
    const dir = copy();
    const f = path.join(dir, names[3]!);
    const lines = readLines(f);
    lines[3] = withField(lines[3]!, 'hmacKeyId', 'attacker-key');
    writeLines(f, lines);
    const { v } = await verify(dir);
    expect(v.break).toMatchObject({ kind: 'forged-checkpoint', file: names[3], line: 4 });
  });
});

describe('audit verify: files larger than a read chunk (1 MiB)', () => {
  it('lines across chunk boundaries hash as written; an edit deep in the file is found at its line', async () => {
    const dir = path.join(fx.work, 'big');
    mkdirSync(dir);
    const file = await fx.withHsm(async (hsm) => {
      const b = new TrailBuilder(hsm, HMAC_KEY).start('first', '2026-05-01-00');
      for (let i = 0; i < 6000; i++) {
        b.use({ keyId: 'k1', operation: 'Encrypt', kmsRequestId: `big-${i}`, kmsOperation: 'Encrypt', awsPrincipalArn: ALICE });
        if (i % 1000 === 999) await b.checkpoint();
      }
      return b.write(dir)[0]!;
    });
    expect(statSync(file).size).toBeGreaterThan(2 * 1024 * 1024);
    const ok = await verify(dir);
    expect(ok.code).toBe(0);
    expect(ok.v).toMatchObject({ lines: 6007, uses: 6000, checkpoints: 6, hmacsVerified: 6 });
    const lines = readLines(file);
    lines[4321] = withField(lines[4321]!, 'outcome', 'AccessDeniedException');
    writeLines(file, lines);
    const bad = await verify(dir);
    expect(bad.v.break).toMatchObject({ kind: 'edited', line: 4322 });
  });
});

describe('audit verify: usage and I/O errors exit 2', () => {
  it('an unreadable path, no settings, a wrong PIN', async () => {
    expect((await audit(['verify', path.join(fx.work, 'nope')], env)).code).toBe(2);
    const none = await audit(['verify', clean], { XKS_PROXY_SETTINGS_TOML: path.join(fx.work, 'missing.toml') });
    expect(none.code).toBe(2);
    const wrongPin = path.join(fx.work, 'wrong-pin.toml');
    writeFileSync(wrongPin, readFileSync(settings, 'utf8').replace(fx.token.pin, '99999999'));
    const pin = await audit(['verify', clean, '--config', wrongPin], fx.token.env);
    expect(pin.code).toBe(2);
    expect(pin.stderr).not.toContain('99999999');
    expect((await audit(['verify', clean, '--since', 'yesterday'], env)).code).toBe(2);
    expect((await audit(['frobnicate'], env)).code).toBe(2);
    // --help anywhere: the usage, exit 0, nothing read.
    const help = await audit(['verify', '/nonexistent', '--help'], {});
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^Usage: xks-proxy audit verify \[FILE\|DIR\.\.\.\]/);
  });
});

describe('audit list and verify filters', () => {
  it('every use of key K by principal P in March', async () => {
    const r = await audit(['list', clean, '--key', 'k1', '--principal', ALICE, '--since', '2026-03', '--until', '2026-04', '--json'], {});
    expect(r.code).toBe(0);
    const uses = r.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(uses.map((u) => u['kmsRequestId'])).toEqual(['r1', 'r4', 'r2-0', 'r2-1', 'r2-2', 'r2-3', 'r3-0', 'r3-1']);
    for (const u of uses) {
      expect(u['keyId']).toBe('k1');
      expect(u['awsPrincipalArn']).toBe(ALICE);
      expect(typeof u['file']).toBe('string');
    }
    const human = await audit(['list', clean, '--operation', 'GetKeyMetadata'], {});
    expect(human.stdout.trim().split('\n')).toHaveLength(1);
    expect(human.stdout).toMatch(
      /^2026-04-01T\S+ GetKeyMetadata ok key=k2 principal=arn:aws:iam::111122223333:role\/Bob kmsRequestId=r4-1 /,
    );
    expect(human.stderr).toMatch(/chain intact: 4 files/);
    // verify with filters: verified, then the matches.
    const v = await audit(['verify', clean, '--json', '--since', '2026-04-01T00:00:00Z'], env);
    expect(v.code).toBe(0);
    const j = JSON.parse(v.stdout) as VerifyJson;
    expect(j.matches!.map((u) => u['kmsRequestId'])).toEqual(['r4-0', 'r4-1']);
  });

  it('list reports a broken chain with exit 1', async () => {
    const dir = copy();
    const f = path.join(dir, names[0]!);
    const lines = readLines(f);
    lines[1] = withField(lines[1]!, 'keyId', 'k9');
    writeLines(f, lines);
    const r = await audit(['list', dir], {});
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/BROKEN: edited at .* line 2/);
    expect(readdirSync(dir)).toHaveLength(4);
  });
});
