/**
 * Rotation of the audit trail with the real clock (rotation_kind = "MINUTELY": the test waits for
 * the next minute, at most ~60 s): the closing file ends in a checkpoint, the next one's start
 * record names it and its last hash (reason "rotate"), and a restart continues after both.
 */
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { expect, it } from 'vitest';
import { checkTrail } from './helpers/audit.js';
import { useAuditProxy } from './helpers/audit-proxy.js';
import { audit, type VerifyJson } from './helpers/audit-tamper.js';
import { startTestProxy } from './helpers/proxy.js';

const fx = useAuditProxy({
  label: 'xks-audit-rot',
  prefix: '/audit/rotation',
  creds: { accessKeyId: 'AKIDAUDITROTATE000001', secret: 'cm90YXRlLXJvdGF0ZS1yb3RhdGUtcm90YXRlLXJvdGE=' },
});

it('rotates at the period boundary and restarts after it, in one chain', async () => {
  const dir = path.join(fx.work, 'trail');
  const s = fx.spec(dir, { rotation: 'MINUTELY', checkpointEvery: 1000 });
  let proxy = await startTestProxy(s, 'rot1.toml');
  let i = 0;
  try {
    // One request every 200 ms until the minute turned and one more request went to the new file.
    for (let t = 0; t < 400 && readdirSync(dir).length < 2; t++) {
      expect((await fx.metadata(proxy.base, `r${i++}`)).status).toBe(200);
      await new Promise((r) => setTimeout(r, 200));
    }
    expect((await fx.metadata(proxy.base, `r${i++}`)).status).toBe(200);
  } finally {
    await proxy.stop();
  }
  proxy = await startTestProxy(s, 'rot2.toml');
  expect((await fx.metadata(proxy.base, 'after-restart')).status).toBe(200);
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
  const v = await audit(['verify', dir, '--config', proxy.settingsPath, '--json'], fx.token.env);
  expect(v.code).toBe(0);
  expect(JSON.parse(v.stdout) as VerifyJson).toMatchObject({
    ok: true,
    break: null,
    warnings: [],
    uses: i + 1,
    hmacsVerified: trail.checkpoints,
  });
}, 90_000);
