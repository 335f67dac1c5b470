/**
 * HSM failures over real HTTP (fault module in front of SoftHSM2): deadlines answer 503
 * DependencyTimeoutException on time while /ping and other requests keep working, device
 * errors answer fast, the deep health check reports ACTIVE / DEGRADED / UNAVAILABLE from
 * its cache, and every ciphertext returned during a fault run decrypts afterwards.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadAddon } from '../src/hsm/addon.js';
import { useFaultyModule, waitFor, type FaultControl } from './helpers/faulty.js';
import { call, META, startTestProxy, type CallOptions, type TestProxy } from './helpers/proxy.js';
import { makeToken, TEST_KEYS, type TestToken } from './helpers/softhsm.js';

const PREFIX = '/fault/test/prefix';
const API = `${PREFIX}/kms/xks/v1`;
const CREDS: CallOptions = { accessKeyId: 'AKIDFAULTTEST00000001', secret: 'c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==' };
const KEY = TEST_KEYS.ordinary;
const HEALTH_KEY = 'xks-health-probe';
const TIMEOUT = 100;

let base: TestToken;
let faults: FaultControl;
let proxy: TestProxy;

const b64 = (b: Buffer | string): string => Buffer.from(b).toString('base64');

function encryptBody(plaintext: Buffer): Record<string, unknown> {
  return { requestMetadata: META, plaintext: b64(plaintext), encryptionAlgorithm: 'AES_GCM' };
}

async function timed<T>(p: Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const v = await p;
  return [v, performance.now() - t0];
}

const encrypt = (text: string) => call(proxy.base, `${API}/keys/${KEY}/encrypt`, encryptBody(Buffer.from(text)), CREDS);
const metadata = () =>
  call(proxy.base, `${API}/keys/${KEY}/metadata`, { requestMetadata: { ...META, kmsOperation: 'DescribeKey' } }, CREDS);
const health = () =>
  call(proxy.base, `${API}/health`, { requestMetadata: { kmsOperation: 'CreateCustomKeyStore', kmsRequestId: META.kmsRequestId } }, CREDS);
const ping = () => fetch(`${proxy.base}/ping`).then((r) => r.status);

function healthState(r: { json: Record<string, unknown> }): string {
  const details = r.json.ekmFleetDetails as { healthStatus: string }[];
  return details[0]!.healthStatus;
}

async function decryptAll(sealed: { text: string; json: Record<string, unknown> }[]): Promise<void> {
  for (const s of sealed) {
    const r = await call(
      proxy.base,
      `${API}/keys/${KEY}/decrypt`,
      {
        requestMetadata: { ...META, kmsOperation: 'Decrypt' },
        encryptionAlgorithm: 'AES_GCM',
        ciphertext: s.json.ciphertext,
        initializationVector: s.json.initializationVector,
        authenticationTag: s.json.authenticationTag,
      },
      CREDS,
    );
    expect(r.status).toBe(200);
    expect(Buffer.from(r.json.plaintext as string, 'base64').toString()).toBe(s.text);
  }
}

beforeAll(async () => {
  base = makeToken('xks-fault-http');
  let token: TestToken;
  ({ token, faults } = useFaultyModule(base));
  const { Engine } = loadAddon();
  const e = new Engine({
    modulePath: token.modulePath,
    userPin: token.pin,
    poolMaxSize: 1,
    poolTimeoutMs: 1000,
    eagerClose: false,
    threads: 1,
    ivMode: 'random',
  });
  await e.open();
  await e.createKey(KEY, { encrypt: true, decrypt: true });
  await e.createKey(HEALTH_KEY, { encrypt: true, decrypt: true });
  await e.close();
  proxy = await startTestProxy(
    {
      token,
      poolMaxSize: 2,
      workerThreads: 2,
      level: 'WARN',
      stores: [{ prefix: PREFIX, accessKeyId: CREDS.accessKeyId, secret: CREDS.secret, keys: [KEY] }],
      operationTimeoutMs: TIMEOUT,
      healthCheck: { keyId: HEALTH_KEY, intervalSecs: 1, degradedLatencyMs: 40 },
    },
    'settings-faulty.toml',
  );
});

afterAll(async () => {
  faults?.clear();
  await proxy?.stop();
  base?.cleanup();
});

describe('deadlines over HTTP', () => {
  it('a stuck HSM call answers 503 DependencyTimeoutException on time; /ping and other requests keep answering', async () => {
    faults.clear();
    expect((await encrypt('warm')).status).toBe(200);
    faults.set('block C_Encrypt');
    const stuck = timed(encrypt('stuck'));
    // while it hangs in the HSM
    expect(await ping()).toBe(200);
    const [meta, metaMs] = await timed(metadata());
    expect(meta.status).toBe(200);
    expect(metaMs).toBeLessThan(TIMEOUT);
    const [r, ms] = await stuck;
    expect(r.status).toBe(503);
    expect(r.json.errorName).toBe('DependencyTimeoutException');
    expect(ms).toBeLessThan(TIMEOUT + 80);
    faults.clear();
    expect(await waitFor(async () => (await encrypt('again')).status === 200)).toBe(true);
  });
});

describe('device failures over HTTP', () => {
  it('an HSM that is down answers 500 fast, never hangs, and service resumes by itself', async () => {
    faults.set('fail * CKR_DEVICE_ERROR');
    for (let i = 0; i < 5; ++i) {
      const [r, ms] = await timed(encrypt('down'));
      expect(r.status).toBe(500);
      expect(r.json.errorName).toBe('InternalException');
      expect(ms).toBeLessThan(TIMEOUT);
    }
    expect(await ping()).toBe(200);
    faults.clear();
    expect(await waitFor(async () => (await encrypt('up')).status === 200, 3000)).toBe(true);
  });
});

describe('deep health check', () => {
  it('reports ACTIVE, DEGRADED when slow, UNAVAILABLE when failing, from its cache, and recovers', async () => {
    faults.clear();
    expect(await waitFor(async () => healthState(await health()) === 'ACTIVE', 4000)).toBe(true);
    const ok = await health();
    expect(ok.json.ekmVendor).toMatch(/^SoftHSM project \(serial number: /);

    faults.set('delay C_Encrypt 60');
    expect(await waitFor(async () => healthState(await health()) === 'DEGRADED', 4000)).toBe(true);

    faults.set('fail * CKR_DEVICE_ERROR');
    expect(await waitFor(async () => healthState(await health()) === 'UNAVAILABLE', 4000)).toBe(true);
    // answered from the cache at once, even with the HSM blocked
    faults.set('block *');
    const [h, ms] = await timed(health());
    expect(h.status).toBe(200);
    expect(ms).toBeLessThan(50);
    expect(healthState(h)).toBe('UNAVAILABLE');

    faults.clear();
    expect(await waitFor(async () => healthState(await health()) !== 'UNAVAILABLE', 5000)).toBe(true);
    expect(await waitFor(async () => healthState(await health()) === 'ACTIVE', 5000)).toBe(true);
  });
});

describe('fault run', () => {
  it('every ciphertext returned while faults come and go decrypts afterwards', async () => {
    faults.clear();
    const sealed: { text: string; json: Record<string, unknown> }[] = [];
    const statuses = new Map<number, number>();
    const scenarios = [
      ['fail C_Encrypt CKR_DEVICE_ERROR times=2'],
      ['delay C_Encrypt 30'],
      ['fail C_GenerateRandom CKR_SESSION_HANDLE_INVALID times=3'],
      ['block C_Encrypt times=1'],
      ['fail C_Encrypt CKR_GENERAL_ERROR times=2', 'fail C_EncryptInit CKR_SESSION_CLOSED times=1'],
      [],
    ];
    let n = 0;
    for (const rules of scenarios) {
      faults.set(...rules);
      const batch = await Promise.all(
        Array.from({ length: 25 }, async () => {
          const text = `pt-${n++}`;
          const r = await encrypt(text);
          return { text, r };
        }),
      );
      for (const { text, r } of batch) {
        statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
        if (r.status === 200) sealed.push({ text, json: r.json });
        else expect([500, 503]).toContain(r.status);
      }
    }
    faults.clear();
    expect(statuses.get(200) ?? 0).toBeGreaterThan(50);
    expect((statuses.get(500) ?? 0) + (statuses.get(503) ?? 0)).toBeGreaterThan(0);
    await decryptAll(sealed);
  });
});
