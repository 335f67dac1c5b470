/**
 * Rotation of the audit trail with the real clock (rotation_kind = "MINUTELY": the test waits for
 * the next minute, at most ~60 s): the closing file ends in a checkpoint, the next one's start
 * record names it and its last hash (reason "rotate"), and a restart continues after both.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { AUDIT_HMAC_LABEL, checkTrail, makeAuditToken } from './helpers/audit.js';
import { audit, type VerifyJson } from './helpers/audit-tamper.js';
import { call, META, startTestProxy, type CallOptions, type SettingsSpec } from './helpers/proxy.js';
import { TEST_KEYS, type TestToken } from './helpers/softhsm.js';

const PREFIX = '/audit/rotation';
const API = `${PREFIX}/kms/xks/v1`;
const CREDS: CallOptions = { accessKeyId: 'AKIDAUDITROTATE000001', secret: 'cm90YXRlLXJvdGF0ZS1yb3RhdGUtcm90YXRlLXJvdGE=' };

let token: TestToken;
let work: string;

beforeAll(async () => {
  token = await makeAuditToken('xks-audit-rot');
  work = mkdtempSync(path.join(tmpdir(), 'xks-audit-rot-'));
});

afterAll(() => {
  token?.cleanup();
  rmSync(work, { recursive: true, force: true });
});

it('rotates at the period boundary and restarts after it, in one chain', async () => {
  const dir = path.join(work, 'trail');
  const s: SettingsSpec = {
    token,
    level: 'INFO',
    // A loaded machine (the suite runs files in parallel) must not turn a slow HSM call into a 503.
    operationTimeoutMs: 10_000,
    stores: [{ prefix: PREFIX, accessKeyId: CREDS.accessKeyId, secret: CREDS.secret, keys: [TEST_KEYS.ordinary] }],
    audit: { directory: dir, hmacKeyId: AUDIT_HMAC_LABEL, rotation: 'MINUTELY', checkpointEvery: 1000 },
  };
  const metadata = (base: string, id: string) =>
    call(base, `${API}/keys/${TEST_KEYS.ordinary}/metadata`, { requestMetadata: { ...META, kmsRequestId: id } }, CREDS);
  let proxy = await startTestProxy(s, 'rot1.toml');
  let i = 0;
  try {
    // One request every 200 ms until the minute turned and one more request went to the new file.
    for (let t = 0; t < 400 && readdirSync(dir).length < 2; t++) {
      expect((await metadata(proxy.base, `r${i++}`)).status).toBe(200);
      await new Promise((r) => setTimeout(r, 200));
    }
    expect((await metadata(proxy.base, `r${i++}`)).status).toBe(200);
  } finally {
    await proxy.stop();
  }
  proxy = await startTestProxy(s, 'rot2.toml');
  expect((await metadata(proxy.base, 'after-restart')).status).toBe(200);
  await proxy.stop();

  const trail = checkTrail(dir);
  expect(trail.files.map((f) => f.records[0]!.reason)).toEqual(['first', 'rotate', 'restart']);
  const [a, b] = trail.files;
  expect(a!.name).toMatch(/^xks-audit\.\d{4}-\d\d-\d\d-\d\d-\d\d\.1\.jsonl$/);
  expect(b!.name).not.toBe(a!.name);
  expect(a!.records.at(-1)!.type).toBe('checkpoint');
  expect(b!.records[0]).toMatchObject({ previousFile: a!.name });
  // Both instances' records, in order, none lost at the boundary.
  expect(trail.uses.map((u) => u.kmsRequestId)).toEqual([...Array.from({ length: i }, (_, k) => `r${k}`), 'after-restart']);
  // `xks-proxy audit verify` (HMACs in the HSM) agrees.
  const v = await audit(['verify', dir, '--config', proxy.settingsPath, '--json'], token.env);
  expect(v.code).toBe(0);
  expect(JSON.parse(v.stdout) as VerifyJson).toMatchObject({
    ok: true,
    break: null,
    warnings: [],
    uses: i + 1,
    hmacsVerified: trail.checkpoints,
  });
}, 90_000);
