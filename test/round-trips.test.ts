/**
 * PKCS#11 round trips per request, counted by the fault module's network-HSM model
 * (calls that cross the network; length-only queries apart) through real HTTP, in steady
 * state (sessions open, key handles cached, the IV buffer filled). These are today's counts: a
 * change that removes a round trip updates this test deliberately (the table in README.md, "Round trips per request").
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { loadAddon } from '../src/hsm/addon.js';
import { startProxy } from '../src/main.js';
import { useFaultyModule, waitFor, type FaultControl } from './helpers/faulty.js';
import { callDelta } from './helpers/fault-engines.js';
import { call, META, settingsToml, type CallOptions, type SettingsSpec } from './helpers/proxy.js';
import { makeToken, TEST_KEYS, type TestToken } from './helpers/softhsm.js';

const PREFIX = '/trips/test/prefix';
const API = `${PREFIX}/kms/xks/v1`;
const CREDS: CallOptions = { accessKeyId: 'AKIDTRIPSTEST00000001', secret: 'dHJpcHMtc2VjcmV0LXRyaXBzLXNlY3JldC10cmlwcw==' };
const KEY = TEST_KEYS.ordinary;
const HEALTH_KEY = 'xks-trips-probe';
const N = 10;
/** Round trips of one background deep check (see the last test): its IV comes from the buffer too. */
const CHECK_TRIPS = 5;

let base: TestToken;
let token: TestToken;
let faults: FaultControl;

const b64 = (b: Buffer | string): string => Buffer.from(b).toString('base64');

function spec(o: Partial<SettingsSpec> = {}): SettingsSpec {
  return {
    token,
    poolMaxSize: 2,
    workerThreads: 2,
    level: 'WARN',
    stores: [{ prefix: PREFIX, accessKeyId: CREDS.accessKeyId, secret: CREDS.secret, keys: [KEY] }],
    ...o,
  };
}

/**
 * A proxy from the test settings with session_key_check_milli at an hour, so that the periodic
 * re-check of a session key copy (5 round trips per key at most once per period, default 1 s:
 * C_FindObjectsInit, C_FindObjects x2, C_FindObjectsFinal, C_GetAttributeValue) never falls
 * inside a measured window; `hsmIv`: can_generate_iv and is_zero_iv_required (the HSM fills the
 * zeroed IV, CloudHSM's way).
 */
async function start(name: string, o: Partial<SettingsSpec>, hsmIv = false): Promise<{ base: string; stop(): Promise<void> }> {
  const settingsPath = path.join(token.dir, name);
  let text = settingsToml(spec(o)).replace('[pkcs11]\n', '[pkcs11]\nsession_key_check_milli = 3600000\n');
  if (hsmIv)
    text = text.replace('can_generate_iv = false\nis_zero_iv_required = false', 'can_generate_iv = true\nis_zero_iv_required = true');
  expect(text).toContain('session_key_check_milli = 3600000');
  expect(text).toContain(`can_generate_iv = ${hsmIv}`);
  writeFileSync(settingsPath, text);
  Object.assign(process.env, token.env);
  const proxy = await startProxy(loadConfig(settingsPath), { stdout: new PassThrough().resume() });
  return { base: `http://127.0.0.1:${proxy.port}`, stop: () => proxy.stop() };
}

type Op = (base: string) => Promise<{ status: number; json: Record<string, unknown> }>;

const encrypt: Op = (base) =>
  call(base, `${API}/keys/${KEY}/encrypt`, { requestMetadata: META, plaintext: b64('round trips'), encryptionAlgorithm: 'AES_GCM' }, CREDS);
/** Encrypt asking for the ciphertext data integrity value: the ciphertext is decrypted before it is returned. */
const encryptCdiv: Op = (base) =>
  call(
    base,
    `${API}/keys/${KEY}/encrypt`,
    {
      requestMetadata: META,
      plaintext: b64('round trips'),
      encryptionAlgorithm: 'AES_GCM',
      ciphertextDataIntegrityValueAlgorithm: 'SHA_256',
    },
    CREDS,
  );
const metadata: Op = (base) =>
  call(base, `${API}/keys/${KEY}/metadata`, { requestMetadata: { ...META, kmsOperation: 'DescribeKey' } }, CREDS);
const health: Op = (base) =>
  call(base, `${API}/health`, { requestMetadata: { kmsOperation: 'CreateCustomKeyStore', kmsRequestId: META.kmsRequestId } }, CREDS);

async function decryptOf(base: string): Promise<Op> {
  const sealed = await encrypt(base);
  expect(sealed.status).toBe(200);
  return (b) =>
    call(
      b,
      `${API}/keys/${KEY}/decrypt`,
      {
        requestMetadata: { ...META, kmsOperation: 'Decrypt' },
        encryptionAlgorithm: 'AES_GCM',
        ciphertext: sealed.json.ciphertext,
        initializationVector: sealed.json.initializationVector,
        authenticationTag: sealed.json.authenticationTag,
      },
      CREDS,
    );
}

/** Round trips and per-function calls per request, over N sequential requests after two warm-ups. */
async function perRequest(base: string, op: Op): Promise<{ trips: number; calls: Record<string, number> }> {
  for (let i = 0; i < 2; ++i) expect((await op(base)).status).toBe(200);
  const s0 = faults.status();
  for (let i = 0; i < N; ++i) expect((await op(base)).status).toBe(200);
  const s1 = faults.status();
  const calls = Object.fromEntries(Object.entries(callDelta(s0, s1)).map(([fn, n]) => [fn, n / N]));
  return { trips: (s1.round_trips - s0.round_trips) / N, calls };
}

beforeAll(async () => {
  base = makeToken('xks-round-trips');
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
});

afterAll(() => {
  faults?.clear();
  base?.cleanup();
});

describe('round trips per request, steady state, the seed settings (random IV, no [health_check])', () => {
  let proxy: { base: string; stop(): Promise<void> };
  beforeAll(async () => {
    faults.clear();
    proxy = await start('settings-trips.toml', {});
  });
  afterAll(async () => {
    await proxy?.stop();
  });

  it('Encrypt: C_EncryptInit, C_Encrypt (the IV comes from the buffer of HSM randomness)', async () => {
    // One C_GenerateRandom fills the buffer with 256 IVs at the first encrypt (a warm-up here); the
    // next refill comes when fewer than 64 are left, far beyond these requests (test/iv-buffer.test.ts).
    expect(await perRequest(proxy.base, encrypt)).toEqual({
      trips: 2,
      calls: { C_EncryptInit: 1, C_Encrypt: 1 },
    });
  });

  it('Encrypt with CDIV: C_EncryptInit, C_Encrypt, C_DecryptInit, C_Decrypt', async () => {
    const r = await encryptCdiv(proxy.base);
    expect(r.json.ciphertextDataIntegrityValue).toEqual(expect.any(String));
    expect(await perRequest(proxy.base, encryptCdiv)).toEqual({
      trips: 4,
      calls: { C_EncryptInit: 1, C_Encrypt: 1, C_DecryptInit: 1, C_Decrypt: 1 },
    });
  });

  it('Decrypt: C_DecryptInit, C_Decrypt', async () => {
    expect(await perRequest(proxy.base, await decryptOf(proxy.base))).toEqual({
      trips: 2,
      calls: { C_DecryptInit: 1, C_Decrypt: 1 },
    });
  });

  it('GetKeyMetadata: none (the attributes were read with the handle and are cached with it)', async () => {
    expect(await perRequest(proxy.base, metadata)).toEqual({ trips: 0, calls: {} });
  });

  it('GetHealthStatus without the deep check: C_GetTokenInfo', async () => {
    expect(await perRequest(proxy.base, health)).toEqual({ trips: 1, calls: { C_GetTokenInfo: 1 } });
  });
});

describe('round trips per request, the HSM makes the IV (can_generate_iv, is_zero_iv_required)', () => {
  let proxy: { base: string; stop(): Promise<void> };
  beforeAll(async () => {
    faults.set('iv C_EncryptInit random');
    proxy = await start('settings-trips-hsm-iv.toml', {}, true);
  });
  afterAll(async () => {
    await proxy?.stop();
    faults.clear();
  });

  it("Encrypt with the HSM's IV: C_EncryptInit, C_Encrypt", async () => {
    expect(await perRequest(proxy.base, encrypt)).toEqual({
      trips: 2,
      calls: { C_EncryptInit: 1, C_Encrypt: 1 },
    });
  });
});

describe('round trips with [health_check]', () => {
  let proxy: { base: string; stop(): Promise<void> };
  beforeAll(async () => {
    faults.clear();
    proxy = await start('settings-trips-health.toml', { healthCheck: { keyId: HEALTH_KEY, intervalSecs: 1 } });
  });
  afterAll(async () => {
    await proxy?.stop();
  });

  it('GetHealthStatus with the deep check: none per request (the verdict is cached)', async () => {
    expect(
      await waitFor(
        async () => ((await health(proxy.base)).json.ekmFleetDetails as { healthStatus: string }[])[0]!.healthStatus === 'ACTIVE',
        5000,
      ),
    ).toBe(true);
    // between two background checks
    const at = faults.status().round_trips;
    expect(await waitFor(() => faults.status().round_trips !== at, 3000)).toBe(true);
    await new Promise((r) => setTimeout(r, 100));
    const s0 = faults.status();
    for (let i = 0; i < N; ++i) expect((await health(proxy.base)).status).toBe(200);
    const s1 = faults.status();
    // a background check may have run meanwhile: then exactly one check's calls, never per request
    const d = callDelta(s0, s1);
    expect([0, CHECK_TRIPS]).toContain(s1.round_trips - s0.round_trips);
    for (const n of Object.values(d)) expect(n).toBeLessThanOrEqual(2);
  });

  it('one background check: the token info, an encrypt and a decrypt', async () => {
    const at = faults.status().round_trips;
    expect(await waitFor(() => faults.status().round_trips !== at, 3000)).toBe(true);
    await new Promise((r) => setTimeout(r, 300));
    const s0 = faults.status();
    expect(await waitFor(() => faults.status().round_trips !== s0.round_trips, 3000)).toBe(true);
    await new Promise((r) => setTimeout(r, 300));
    const s1 = faults.status();
    expect({ trips: s1.round_trips - s0.round_trips, calls: callDelta(s0, s1) }).toEqual({
      trips: CHECK_TRIPS,
      calls: {
        C_EncryptInit: 1,
        C_Encrypt: 1,
        C_DecryptInit: 1,
        C_Decrypt: 1,
        C_GetTokenInfo: 1,
      },
    });
  });
});
