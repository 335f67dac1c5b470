/**
 * Tamper tests on trails the real proxy writes: the real CLI serves signed requests with an [audit]
 * section, across restarts, a rotation (MINUTELY: waits for the next minute) and a SIGKILL under load; `xks-proxy audit verify`
 * (the real CLI, HMACs in the real SoftHSM2 token) verifies it, reports the crash's tail as torn, and
 * names every tampering with its file and line.
 */
import { appendFileSync, cpSync, rmSync, statSync, truncateSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { checkTrail } from './helpers/audit.js';
import { useAuditProxy } from './helpers/audit-proxy.js';
import { audit, readLines, rechain, sha256, type VerifyJson, withField, writeLines } from './helpers/audit-tamper.js';
import { spawnProxyCli, type CliProxy } from './helpers/cli.js';
import { META } from './helpers/proxy.js';
import { TEST_KEYS } from './helpers/softhsm.js';

const BOB = 'arn:aws:iam::123456789012:role/Bob';

const fx = useAuditProxy({
  label: 'xks-audit-tamper',
  prefix: '/tamper',
  creds: { accessKeyId: 'AKIDTAMPEREXAMPLE0001', secret: 'dGFtcGVyLXRhbXBlci10YW1wZXItdGFtcGVyLXRhbXA=' },
});
let trail: string;
let env: Record<string, string>;
/** The trail's files in chain order and what each start record says. */
let files: { name: string; reason: string }[];
let sent: string[];

function encrypt(proxy: CliProxy, id: string, principal = META.awsPrincipalArn) {
  return fx.encrypt(`http://127.0.0.1:${proxy.port}`, id, { awsPrincipalArn: principal });
}

async function serve(ids: string[], principal?: string): Promise<CliProxy> {
  const proxy = await spawnProxyCli(env);
  for (const id of ids) {
    expect((await encrypt(proxy, id, principal)).status).toBe(200);
    sent.push(id);
  }
  return proxy;
}

async function stop(proxy: CliProxy, signal: NodeJS.Signals): Promise<void> {
  proxy.child.kill(signal);
  await proxy.exited;
}

beforeAll(async () => {
  trail = path.join(fx.work, 'trail');
  // Checkpoints only at clean stops: the killed file then never ends in one (its tail is torn).
  const settings = fx.settingsFile('settings.toml', fx.spec(trail, { checkpointEvery: 1000, rotation: 'MINUTELY' }));
  env = { ...fx.token.env, XKS_PROXY_SETTINGS_TOML: settings };
  sent = [];
  // 1: ten uses, a clean stop (the file ends in a checkpoint).
  await stop(await serve(Array.from({ length: 10 }, (_, i) => `first-${i}`)), 'SIGTERM');
  // 2: a restart, another principal; the minute turns while it serves: a rotation (MINUTELY).
  const second = await serve(['restart-0', 'restart-1', 'restart-2', 'restart-3', 'restart-4'], BOB);
  await new Promise((r) => setTimeout(r, 60_000 - (Date.now() % 60_000) + 200));
  for (const id of ['rotated-0', 'rotated-1', 'rotated-2']) {
    expect((await encrypt(second, id)).status).toBe(200);
    sent.push(id);
  }
  await stop(second, 'SIGTERM');
  // 3: SIGKILL under load (requests in flight).
  const third = await serve(['killed-0', 'killed-1']);
  const inFlight = Array.from({ length: 40 }, (_, i) => encrypt(third, `load-${i}`).catch(() => undefined));
  await new Promise((r) => setTimeout(r, 30));
  await stop(third, 'SIGKILL');
  const answered = await Promise.all(inFlight);
  answered.forEach((r, i) => {
    if (r?.status === 200) sent.push(`load-${i}`);
  });
  // 4: the start after the crash; a clean stop.
  await stop(await serve(['after-0', 'after-1', 'after-2']), 'SIGTERM');
  const checked = checkTrail(trail);
  files = checked.files.map((f) => ({ name: f.name, reason: String(f.records[0]!.reason) }));
}, 180_000);

let copies = 0;
function copy(): string {
  const dir = path.join(fx.work, `t${++copies}`);
  cpSync(trail, dir, { recursive: true });
  return dir;
}

async function verify(dir: string): Promise<{ code: number | null; v: VerifyJson }> {
  const r = await audit(['verify', dir, '--json'], env);
  expect(r.stdout, r.stderr).not.toBe('');
  return { code: r.code, v: JSON.parse(r.stdout) as VerifyJson };
}

const nameOf = (reason: string, nth = 0): string => files.filter((f) => f.reason === reason)[nth]!.name;

describe('a trail the real proxy wrote', () => {
  it('verifies across the restarts, the rotation and the SIGKILL, whose tail is torn, not tampered', async () => {
    expect(files.map((f) => f.reason)).toEqual(['first', 'restart', 'rotate', 'restart', 'torn']);
    const { code, v } = await verify(trail);
    expect(code).toBe(0);
    expect(v.break).toBeNull();
    expect(v.files).toEqual(files.map((f) => f.name));
    expect(v.hmacsVerified).toBe(v.checkpoints);
    expect(v.checkpoints).toBeGreaterThanOrEqual(4);
    // The killed process's file: its tail is reported as a torn tail, acknowledged by the next file.
    const torn = v.warnings.filter((w) => /torn tail \(crash\)/.test(w.message));
    expect(torn.map((w) => w.file)).toEqual([files[3]!.name]);
    expect(v.warnings.filter((w) => !/torn tail/.test(w.message))).toEqual([]);
  });

  it('every request that got a 200 is listed, with the verifier and the independent check agreeing', async () => {
    const r = await audit(['list', trail, '--json', '--key', TEST_KEYS.ordinary], {});
    expect(r.code).toBe(0);
    const listed = r.stdout
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as { kmsRequestId: string }).kmsRequestId);
    for (const id of sent) expect(listed).toContain(id);
    expect(listed.filter((id) => !id.startsWith('load-'))).toEqual(sent.filter((id) => !id.startsWith('load-')));
    expect(listed).toHaveLength(checkTrail(trail).uses.length);
    const bob = await audit(['list', trail, '--json', '--principal', BOB], {});
    expect(
      bob.stdout
        .trim()
        .split('\n')
        .map((l) => (JSON.parse(l) as { kmsRequestId: string }).kmsRequestId),
    ).toEqual(['restart-0', 'restart-1', 'restart-2', 'restart-3', 'restart-4']);
    // The rotated file holds what was served after the minute turned.
    const rotated = await audit(['list', path.join(trail, nameOf('rotate')), '--json'], {});
    expect(rotated.code).toBe(1); // one file alone is not the whole trail: its predecessor is missing
    expect(rotated.stderr).toMatch(/BROKEN: missing-file/);
  });
});

describe('tampering with the real trail', () => {
  it('edit a field', async () => {
    const dir = copy();
    const f = path.join(dir, nameOf('first'));
    const lines = readLines(f);
    lines[3] = withField(lines[3]!, 'awsPrincipalArn', BOB);
    writeLines(f, lines);
    const { code, v } = await verify(dir);
    expect(code).toBe(1);
    expect(v.break).toMatchObject({ kind: 'edited', file: nameOf('first'), line: 4 });
  });

  it('delete a line', async () => {
    const dir = copy();
    const f = path.join(dir, nameOf('first'));
    const lines = readLines(f);
    lines.splice(3, 1);
    writeLines(f, lines);
    const { code, v } = await verify(dir);
    expect(code).toBe(1);
    expect(v.break).toMatchObject({ kind: 'deleted', file: nameOf('first'), line: 4 });
  });

  it('insert a line', async () => {
    const dir = copy();
    const f = path.join(dir, nameOf('first'));
    const lines = readLines(f);
    const forged = withField(withField(withField(lines[2]!, 'kmsRequestId', 'forged-1'), 'seq', 3), 'prev', sha256(lines[2]!));
    lines.splice(3, 0, forged);
    writeLines(f, lines);
    const { code, v } = await verify(dir);
    expect(code).toBe(1);
    expect(v.break).toMatchObject({ kind: 'inserted', file: nameOf('first'), line: 4 });
  });

  it('swap two lines', async () => {
    const dir = copy();
    const f = path.join(dir, nameOf('first'));
    const lines = readLines(f);
    [lines[2], lines[3]] = [lines[3]!, lines[2]!];
    writeLines(f, lines);
    const { code, v } = await verify(dir);
    expect(code).toBe(1);
    expect(v.break).toMatchObject({ kind: 'reordered', file: nameOf('first'), line: 3 });
  });

  it('truncate a closed file', async () => {
    const dir = copy();
    const f = path.join(dir, nameOf('first'));
    const lines = readLines(f);
    writeLines(f, lines.slice(0, -3));
    const { code, v } = await verify(dir);
    expect(code).toBe(1);
    expect(v.break).toMatchObject({ kind: 'truncated', file: nameOf('first'), line: lines.length - 2 });
    const dir2 = copy();
    const g = path.join(dir2, files[1]!.name);
    truncateSync(g, statSync(g).size - 25);
    expect((await verify(dir2)).v.break).toMatchObject({ kind: 'truncated', file: files[1]!.name });
  });

  it('zeros a killed before-response writer left: skipped with a warning, not a break', async () => {
    const dir = copy();
    // The killed file (its torn tail) and the newest one (being written) each end in prepared blocks.
    for (const f of [files[3]!.name, files.at(-1)!.name]) appendFileSync(path.join(dir, f), Buffer.alloc(8192));
    const { code, v } = await verify(dir);
    expect(code).toBe(0);
    expect(v).toMatchObject({ ok: true, break: null });
    const zeros = v.warnings.filter((w) => /8192 zero bytes after the last line/.test(w.message));
    expect(zeros.map((w) => w.file)).toEqual([files[3]!.name, files.at(-1)!.name]);
    expect(v.warnings.filter((w) => /torn tail \(crash\)/.test(w.message)).map((w) => w.file)).toEqual([files[3]!.name]);
  });

  it('remove a middle file', async () => {
    const dir = copy();
    rmSync(path.join(dir, nameOf('rotate')));
    const { code, v } = await verify(dir);
    expect(code).toBe(1);
    expect(v.break).toMatchObject({ kind: 'missing-file', file: files[3]!.name, line: 1 });
    expect(v.break!.message).toContain(nameOf('rotate'));
  });

  it('forge a checkpoint without the HSM key', async () => {
    const dir = copy();
    const last = files[files.length - 1]!.name;
    const f = path.join(dir, last);
    const lines = readLines(f);
    lines[1] = withField(lines[1]!, 'kmsRequestId', 'rewritten');
    const forged = rechain(f, lines, 2);
    writeLines(f, forged);
    const firstCheckpoint = forged.findIndex((l) => (JSON.parse(l) as { type: string }).type === 'checkpoint');
    const { code, v } = await verify(dir);
    expect(code).toBe(1);
    expect(v.break).toMatchObject({ kind: 'forged-checkpoint', file: last, line: firstCheckpoint + 1 });
  });
});

describe('a range of the real trail (--range): the files given begin mid-chain', () => {
  /** A copy of the files from the nth on (chain order), as an auditor is given them. */
  function range(from: number): string {
    const dir = copy();
    for (const f of files.slice(0, from)) rmSync(path.join(dir, f.name));
    return dir;
  }

  it('verifies fully from the first file given and says the range starts there', async () => {
    const dir = range(1);
    const first = files[1]!.name;
    const prevHash = sha256(readLines(path.join(trail, files[0]!.name)).at(-1)!);
    const r = await audit(['verify', dir, '--range', '--json'], env);
    expect(r.code, r.stderr).toBe(0);
    const v = JSON.parse(r.stdout) as VerifyJson;
    expect(v.break).toBeNull();
    expect(v.files).toEqual(files.slice(1).map((f) => f.name));
    expect(v.hmacsVerified).toBe(v.checkpoints);
    expect(v.checkpoints).toBeGreaterThanOrEqual(3);
    expect(v.range).toEqual({
      file: first,
      previousFile: files[0]!.name,
      previousHash: prevHash,
      message: `the range starts at ${first}, whose predecessor ${files[0]!.name} was not given: nothing before ${first} is proven`,
    });
    // The crash's torn tail inside the range is still checked and reported.
    expect(v.warnings.filter((w) => /torn tail \(crash\)/.test(w.message)).map((w) => w.file)).toEqual([files[3]!.name]);
    const human = await audit(['verify', dir, '--range'], env);
    expect(human.code).toBe(0);
    expect(human.stderr).toContain(`note: the range starts at ${first}, whose predecessor ${files[0]!.name} was not given`);
    expect(human.stderr).toMatch(/^verified: 4 files, /m);
    // A range from the rotated file on, named file by file; and list takes --range too.
    const later = range(2);
    const named = files.slice(2).map((f) => path.join(later, f.name));
    const fromRotated = await audit(['verify', ...named, '--range', '--json'], env);
    expect(fromRotated.code).toBe(0);
    expect((JSON.parse(fromRotated.stdout) as VerifyJson).range).toMatchObject({ file: nameOf('rotate'), previousFile: files[1]!.name });
    const listed = await audit(['list', path.join(trail, nameOf('rotate')), '--range', '--json'], {});
    expect(listed.code).toBe(0);
    expect(
      listed.stdout
        .trim()
        .split('\n')
        .map((l) => (JSON.parse(l) as { kmsRequestId: string }).kmsRequestId),
    ).toEqual(['rotated-0', 'rotated-1', 'rotated-2']);
  });

  it('without --range the same files are a break: the trail does not begin there', async () => {
    const { code, v } = await verify(range(1));
    expect(code).toBe(1);
    expect(v.break).toMatchObject({ kind: 'missing-file', file: files[1]!.name, line: 1 });
    expect(v.break!.message).toContain('--range');
  });

  it('a deletion inside the range is still found', async () => {
    const dir = range(1);
    const f = path.join(dir, files[1]!.name);
    const lines = readLines(f);
    lines.splice(2, 1);
    writeLines(f, lines);
    const r = await audit(['verify', dir, '--range', '--json'], env);
    expect(r.code).toBe(1);
    expect((JSON.parse(r.stdout) as VerifyJson).break).toMatchObject({ kind: 'deleted', file: files[1]!.name, line: 3 });
  });

  it("removing the range's middle file is still a missing file", async () => {
    const dir = range(1);
    rmSync(path.join(dir, nameOf('rotate')));
    const r = await audit(['verify', dir, '--range', '--json'], env);
    expect(r.code).toBe(1);
    const v = JSON.parse(r.stdout) as VerifyJson;
    expect(v.break).toMatchObject({ kind: 'missing-file', file: files[3]!.name, line: 1 });
    expect(v.break!.message).toContain(nameOf('rotate'));
  });

  it("a range whose first file's start record was changed is caught by that file's own chain", async () => {
    const dir = range(1);
    const f = path.join(dir, files[1]!.name);
    const lines = readLines(f);
    const original = lines[0]!;
    // Another predecessor's hash in previousHash alone, then in previousHash and prev both.
    lines[0] = withField(original, 'previousHash', sha256('another trail'));
    writeLines(f, lines);
    const r = await audit(['verify', dir, '--range', '--json'], env);
    expect(r.code).toBe(1);
    expect((JSON.parse(r.stdout) as VerifyJson).break).toMatchObject({ kind: 'edited', file: files[1]!.name, line: 1 });
    lines[0] = withField(withField(original, 'previousHash', sha256('another trail')), 'prev', sha256('another trail'));
    writeLines(f, lines);
    const both = await audit(['verify', dir, '--range', '--json'], env);
    expect(both.code).toBe(1);
    expect((JSON.parse(both.stdout) as VerifyJson).break).toMatchObject({ kind: 'edited', file: files[1]!.name, line: 1 });
  });
});
