/**
 * The audit trail written by a real proxy (in this process, real sockets, a real SoftHSM2 token):
 * one record per request with the issue's fields and never the request's data, the chain and the
 * checkpoints (recomputed independently with node:crypto), the files' modes, a restart continuing
 * the chain, stdout shipping, and the start-up checks.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { startProxy } from '../src/main.js';
import { AUDIT_HMAC_LABEL, checkTrail, modeOf } from './helpers/audit.js';
import { useAuditProxy } from './helpers/audit-proxy.js';
import { META, settingsToml, startTestProxy, type CallOptions, type SettingsSpec } from './helpers/proxy.js';
import { TEST_KEYS } from './helpers/softhsm.js';

const PREFIX = '/audit/prefix';
const CREDS: CallOptions = { accessKeyId: 'AKIDAUDITEXAMPLE00001', secret: 'YXVkaXQtYXVkaXQtYXVkaXQtYXVkaXQtYXVkaXQtYXU=' };

const fx = useAuditProxy({ label: 'xks-audit', prefix: PREFIX, creds: CREDS, keys: [TEST_KEYS.ordinary, 'not-in-the-hsm'] });
const spec = fx.spec;

const b64 = (s: string): string => Buffer.from(s).toString('base64');

describe('records, chain, checkpoints', () => {
  it('records every request with its fields and never its data; a clean stop ends in a checkpoint', async () => {
    const dir = path.join(fx.work, 'basic');
    const proxy = await startTestProxy(spec(dir, { checkpointEvery: 3 }), 'basic.toml');
    const secrets: string[] = [];
    let ciphertext = '';
    let iv = '';
    let tag = '';
    const plaintext = 'the secret plaintext 0123456789';
    const aad = 'the additional authenticated data';
    secrets.push(b64(plaintext), b64(aad), plaintext, aad);
    const meta = { ...META, kmsViaService: 'ebs', awsSourceVpc: 'vpc-0123', awsSourceVpce: 'vpce-0456' };
    for (let i = 0; i < 4; i++) {
      const r = await fx.post(proxy.base, `/keys/${TEST_KEYS.ordinary}/encrypt`, {
        requestMetadata: { ...meta, kmsRequestId: `req-enc-${i}` },
        plaintext: b64(plaintext),
        additionalAuthenticatedData: b64(aad),
        encryptionAlgorithm: 'AES_GCM',
      });
      expect(r.status).toBe(200);
      ciphertext = r.json.ciphertext as string;
      iv = r.json.initializationVector as string;
      tag = r.json.authenticationTag as string;
      secrets.push(ciphertext, iv, tag);
    }
    const dec = await fx.post(proxy.base, `/keys/${TEST_KEYS.ordinary}/decrypt`, {
      requestMetadata: { ...META, kmsOperation: 'Decrypt', kmsRequestId: 'req-dec' },
      ciphertext,
      initializationVector: iv,
      authenticationTag: tag,
      additionalAuthenticatedData: b64(aad),
      encryptionAlgorithm: 'AES_GCM',
    });
    expect(dec.status).toBe(200);
    expect(dec.json.plaintext).toBe(b64(plaintext));
    const md = await fx.post(proxy.base, `/keys/${TEST_KEYS.ordinary}/metadata`, {
      requestMetadata: { ...META, kmsOperation: 'DescribeKey', kmsRequestId: 'req-md' },
    });
    expect(md.status).toBe(200);
    const missing = await fx.post(proxy.base, `/keys/not-in-the-hsm/metadata`, {
      requestMetadata: { ...META, kmsRequestId: 'req-missing' },
    });
    expect(missing.status).toBe(404);
    const health = await fx.post(proxy.base, `/health`, {
      requestMetadata: { kmsRequestId: 'req-health', kmsOperation: 'CreateCustomKeyStore' },
    });
    expect(health.status).toBe(200);
    const unsigned = await fx.post(
      proxy.base,
      `/keys/${TEST_KEYS.ordinary}/metadata`,
      { requestMetadata: META },
      { ...CREDS, secret: 'd3Jvbmctd3Jvbmctd3Jvbmctd3Jvbmctd3Jvbmctd3I=' },
    );
    expect(unsigned.status).toBe(401);
    await proxy.stop();

    const trail = checkTrail(dir);
    expect(trail.files).toHaveLength(1);
    const file = trail.files[0]!;
    expect(file.name).toMatch(/^xks-audit\.\d{4}-\d\d-\d\d-\d\d\.1\.jsonl$/);
    expect(file.tornBytes).toBe(0);
    expect(file.records[0]).toMatchObject({ type: 'start', reason: 'first', hmacKeyId: AUDIT_HMAC_LABEL, prev: '0'.repeat(64) });
    expect(file.records.at(-1)!.type).toBe('checkpoint');
    // 9 uses, a checkpoint after every 3 (the last one is also the stop's).
    expect(trail.uses).toHaveLength(9);
    expect(trail.checkpoints).toBe(3);
    const instance = file.records[0]!.instance;
    expect(instance).toMatch(/^[0-9a-f-]{36}$/);
    for (const r of file.records) expect(r.instance).toBe(instance);
    const enc = trail.uses[0]!;
    expect(Object.keys(enc)).toEqual([
      'v',
      'type',
      'seq',
      'time',
      'instance',
      'kmsRequestId',
      'kmsOperation',
      'awsPrincipalArn',
      'kmsKeyArn',
      'kmsViaService',
      'awsSourceVpc',
      'awsSourceVpce',
      'prefix',
      'keyId',
      'operation',
      'outcome',
      'status',
      'micros',
      'accessKeyId',
      'client',
      'prev',
    ]);
    expect(enc).toMatchObject({
      kmsRequestId: 'req-enc-0',
      kmsOperation: 'Encrypt',
      awsPrincipalArn: META.awsPrincipalArn,
      kmsKeyArn: META.kmsKeyArn,
      kmsViaService: 'ebs',
      awsSourceVpc: 'vpc-0123',
      awsSourceVpce: 'vpce-0456',
      prefix: PREFIX,
      keyId: TEST_KEYS.ordinary,
      operation: 'Encrypt',
      outcome: 'ok',
      status: 200,
      accessKeyId: CREDS.accessKeyId,
      client: '127.0.0.1',
    });
    expect(enc.micros).toEqual(expect.any(Number));
    const byId = new Map(trail.uses.map((u) => [u.kmsRequestId, u]));
    expect(byId.get('req-dec')).toMatchObject({ operation: 'Decrypt', outcome: 'ok', status: 200 });
    expect(byId.get('req-md')).toMatchObject({ operation: 'GetKeyMetadata', outcome: 'ok', status: 200 });
    expect(byId.get('req-missing')).toMatchObject({
      operation: 'GetKeyMetadata',
      outcome: 'KeyNotFoundException',
      status: 404,
      keyId: 'not-in-the-hsm',
    });
    expect(byId.get('req-health')).toMatchObject({ operation: 'GetHealthStatus', keyId: '', outcome: 'ok', status: 200 });
    // The 401 was answered before the body was read: no requestMetadata fields, no access key id.
    const refused = trail.uses.find((u) => u.status === 401)!;
    expect(refused).toMatchObject({ outcome: 'AuthenticationFailedException', operation: 'GetKeyMetadata' });
    expect(refused.kmsRequestId).toBeUndefined();

    // Never the data: plaintext, AAD, ciphertext, IV, tag (raw or Base64), the secret.
    const bytes = readFileSync(path.join(dir, file.name), 'utf8');
    for (const s of [...secrets, CREDS.secret]) expect(bytes.includes(s)).toBe(false);
    expect(modeOf(dir)).toBe(0o750);
    expect(modeOf(path.join(dir, file.name))).toBe(0o640);
  });

  it('a restart continues the chain in a new file (reason "restart")', async () => {
    const dir = path.join(fx.work, 'restart');
    for (let run = 0; run < 3; run++) {
      const proxy = await startTestProxy(spec(dir), `restart${run}.toml`);
      const r = await fx.metadata(proxy.base, `run-${run}`);
      expect(r.status).toBe(200);
      await proxy.stop();
    }
    const trail = checkTrail(dir);
    expect(trail.files.map((f) => f.records[0]!.reason)).toEqual(['first', 'restart', 'restart']);
    expect(trail.files[1]!.records[0]!.previousFile).toBe(trail.files[0]!.name);
    expect(trail.uses.map((u) => u.kmsRequestId)).toEqual(['run-0', 'run-1', 'run-2']);
    expect(new Set(trail.files.map((f) => f.records[0]!.instance)).size).toBe(3);
  });

  it('records of every event loop reach the one writer, in both durability modes', async () => {
    for (const durability of ['before-response', 'batched']) {
      const dir = path.join(fx.work, `loops-${durability}`);
      const proxy = await startTestProxy(
        { ...spec(dir, { durability, checkpointEvery: 7 }), workers: 2, metrics: { enabled: true } },
        `loops-${durability}.toml`,
      );
      expect(proxy.workers).toBe(2);
      // Fresh connections: the kernel spreads them over both loops (SO_REUSEPORT).
      const results = await Promise.all(Array.from({ length: 60 }, (_, i) => fx.encrypt(proxy.base, `loop-${i}`)));
      for (const r of results) expect(r.status).toBe(200);
      const metrics = await (await fetch(`${proxy.metricsBase}/metrics`)).text();
      const perLoop = [0, 1].map((w) => Number(new RegExp(`xks_worker_requests_total\\{worker="${w}"\\} (\\d+)`).exec(metrics)?.[1]));
      expect(perLoop[0]! + perLoop[1]!).toBe(60);
      // Both loops served (60 connections spread by SO_REUSEPORT: all on one loop is a 2^-59 chance).
      expect(perLoop[1]).toBeGreaterThan(0);
      await proxy.stop();
      const trail = checkTrail(dir);
      expect(trail.files).toHaveLength(1);
      expect(trail.uses.map((u) => u.kmsRequestId).sort()).toEqual(Array.from({ length: 60 }, (_, i) => `loop-${i}`).sort());
      expect(trail.checkpoints).toBeGreaterThanOrEqual(8);
    }
  });

  it('stdout = true also prints every record as one JSON line', async () => {
    const dir = path.join(fx.work, 'stdout');
    const proxy = await startTestProxy(spec(dir, { stdout: true }), 'stdout.toml');
    await fx.metadata(proxy.base, 'shipped');
    await proxy.stop();
    const fileLines = readFileSync(path.join(dir, readdirSync(dir)[0]!), 'utf8')
      .trim()
      .split('\n');
    const printed = proxy.logText().split('\n');
    for (const l of fileLines) expect(printed).toContain(l);
    expect(fileLines.some((l) => l.includes('"kmsRequestId":"shipped"'))).toBe(true);
  });
});

describe('start-up checks', () => {
  async function startFailure(s: SettingsSpec, name: string): Promise<string> {
    const file = path.join(fx.token.dir, name);
    writeFileSync(file, settingsToml(s));
    try {
      const p = await startProxy(loadConfig(file), { stdout: new (await import('node:stream')).PassThrough() });
      await p.stop();
    } catch (e) {
      return e instanceof Error ? e.message : String(e);
    }
    throw new Error('expected a start-up failure');
  }

  it('refuses a missing HMAC key, an AES key and a directory that cannot be written', async () => {
    expect(
      await startFailure(
        { ...spec(path.join(fx.work, 'x1')), audit: { directory: path.join(fx.work, 'x1'), hmacKeyId: 'no-such-hmac-key' } },
        'f1.toml',
      ),
    ).toMatch(/audit\.hmac_key_id: the HSM cannot compute an HMAC-SHA256 with the key "no-such-hmac-key": Key not found/);
    expect(
      await startFailure(
        { ...spec(path.join(fx.work, 'x2')), audit: { directory: path.join(fx.work, 'x2'), hmacKeyId: TEST_KEYS.known } },
        'f2.toml',
      ),
    ).toMatch(/audit\.hmac_key_id: .* not a generic secret key/);
    const plainFile = path.join(fx.work, 'a-file');
    writeFileSync(plainFile, 'x');
    expect(await startFailure(spec(path.join(plainFile, 'trail')), 'f3.toml')).toMatch(
      /audit\.directory: cannot write the audit trail in .*: (ENOTDIR|EEXIST)/,
    );
  });
});
