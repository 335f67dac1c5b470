/**
 * How the engine starts against an HSM that misbehaves (fault module in front of SoftHSM2):
 * a module that refuses OS locking is called one thread at a time (issue 11, B.7); an HSM
 * that is down at start-up does not stop the proxy, which answers 500 / UNAVAILABLE and
 * recovers by itself, while a wrong PIN or a missing module still stops it (B.10).
 *
 * Every test opens and closes its own engines, so that each one starts with C_Initialize.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { Hsm } from '../src/hsm/hsm.js';
import { loadAddon, type EngineOptions, type NativeEngine } from '../src/hsm/addon.js';
import { spawnProxyCli } from './helpers/cli.js';
import { useFaultyModule, waitFor, type FaultControl } from './helpers/faulty.js';
import { call, META, settingsToml, startTestProxy, type CallOptions, type TestProxy } from './helpers/proxy.js';
import { makeToken, rejection, splitSealed, TEST_KEYS, type TestToken } from './helpers/softhsm.js';

const { Engine } = loadAddon();
const KEY = TEST_KEYS.ordinary;
const AAD = Buffer.from('start-aad');
const PREFIX = '/fault/start/prefix';
const API = `${PREFIX}/kms/xks/v1`;
const CREDS: CallOptions = { accessKeyId: 'AKIDFAULTSTART000001', secret: 'c3RhcnQtc3RhcnQtc3RhcnQtc3RhcnQtc3RhcnQtc3Q=' };

let base: TestToken;
let token: TestToken;
let faults: FaultControl;
let open: NativeEngine[] = [];

function options(o: Partial<EngineOptions> = {}): EngineOptions {
  return {
    modulePath: token.modulePath,
    userPin: token.pin,
    poolMaxSize: 4,
    poolTimeoutMs: 2000,
    eagerClose: false,
    threads: 4,
    ivMode: 'random',
    operationTimeoutMs: 0,
    ...o,
  };
}

function engine(o: Partial<EngineOptions> = {}): NativeEngine {
  const e = new Engine(options(o));
  open.push(e);
  return e;
}

async function roundTrip(e: NativeEngine, text: string): Promise<void> {
  const { ct, tag, iv } = splitSealed(await e.encrypt(KEY, Buffer.from(text), AAD));
  expect((await e.decrypt(KEY, ct, tag, iv, AAD)).toString()).toBe(text);
}

beforeAll(async () => {
  base = makeToken('xks-fault-start');
  ({ token, faults } = useFaultyModule(base));
  const e = engine();
  await e.open();
  await e.createKey(KEY, { encrypt: true, decrypt: true });
});

afterEach(async () => {
  faults.clear();
  for (const e of open) await e.close();
  open = [];
  expect(faults.status().initialized).toBe(0); // the next test starts with C_Initialize again
});

afterAll(() => {
  faults?.clear();
  base?.cleanup();
});

describe('C_Initialize without OS locking (B.7)', () => {
  // 40 concurrent encrypts on 4 threads and 4 sessions, each C_Encrypt 10 ms long.
  async function overlapRun(e: NativeEngine): Promise<number> {
    faults.set('delay C_Encrypt 10');
    await Promise.all(Array.from({ length: 40 }, (_, i) => roundTrip(e, `text ${i}`)));
    return faults.status().max_in_flight;
  }

  it('with OS locking, calls overlap (the measurement can see it)', async () => {
    const e = engine();
    const r = await e.open();
    expect(r.serialized).toBe(false);
    expect(await overlapRun(e)).toBeGreaterThan(1);
  });

  it('CKR_CANT_LOCK: initialized with NULL arguments, and no two calls ever overlap', async () => {
    faults.set('fail C_Initialize CKR_CANT_LOCK args=os_locking');
    const before = faults.calls('C_Initialize');
    const e = engine();
    const r = await e.open();
    expect(r).toMatchObject({ ready: true, serialized: true, lockingCode: 'CKR_CANT_LOCK' });
    expect(faults.calls('C_Initialize') - before).toBe(2); // OS locking refused, then NULL args
    expect(await overlapRun(e)).toBe(1);
  });

  it('a device error at the first C_Initialize is not taken for a refusal of OS locking', async () => {
    faults.set('fail C_Initialize CKR_DEVICE_ERROR args=os_locking times=1');
    const before = faults.calls('C_Initialize');
    const e = engine();
    expect(await e.open()).toMatchObject({ ready: false, downCode: 'CKR_DEVICE_ERROR' });
    expect(faults.calls('C_Initialize') - before).toBe(1); // no retry with NULL arguments
    faults.clear();
    // The next call re-initializes with OS locking (after the engine's back-off) and is not serialized.
    expect(
      await waitFor(
        async () =>
          await e.encrypt(KEY, Buffer.from('back'), AAD).then(
            () => true,
            () => false,
          ),
        5000,
      ),
    ).toBe(true);
    expect(e.stats().ready).toBe(true);
    expect(await overlapRun(e)).toBeGreaterThan(1);
  });

  it('two engines on the module (two event loops) are serialized together, and the proxy says so', async () => {
    faults.set('fail C_Initialize CKR_CANT_LOCK args=os_locking');
    const a = engine({ threads: 2, poolMaxSize: 2 });
    const b = engine({ threads: 2, poolMaxSize: 2 });
    await a.open();
    expect((await b.open()).serialized).toBe(true);
    faults.set('delay C_Encrypt 10');
    await Promise.all(Array.from({ length: 20 }, (_, i) => roundTrip(i % 2 ? a : b, `both ${i}`)));
    expect(faults.status().max_in_flight).toBe(1);
    for (const e of [a, b]) await e.close();
    open = [];
    faults.set('fail C_Initialize CKR_CANT_LOCK args=os_locking');
    const hsm = await Hsm.open({ ...options(), canGenerateIv: false, isZeroIvRequired: false });
    try {
      const notes = hsm.startupNotes();
      expect(notes).toContainEqual(['warn', expect.stringMatching(/refused OS locking \(C_Initialize: CKR_CANT_LOCK\).*one at a time/)]);
    } finally {
      await hsm.close();
    }
  });
});

describe('an HSM that is down at start-up (B.10)', () => {
  const DOWN: [rule: string, code: string, fn: string][] = [
    ['fail C_Initialize CKR_DEVICE_ERROR', 'CKR_DEVICE_ERROR', 'C_Initialize'],
    ['fail C_Initialize CKR_GENERAL_ERROR', 'CKR_GENERAL_ERROR', 'C_Initialize'],
    ['fail C_GetSlotList CKR_TOKEN_NOT_PRESENT', 'CKR_TOKEN_NOT_PRESENT', 'C_GetSlotList'],
    ['fail C_OpenSession CKR_DEVICE_REMOVED', 'CKR_DEVICE_REMOVED', 'C_OpenSession'],
    ['fail C_OpenSession CKR_FUNCTION_FAILED', 'CKR_FUNCTION_FAILED', 'C_OpenSession'],
  ];
  for (const [rule, code, fn] of DOWN) {
    it(`${rule}: open() resolves not ready, calls fail fast, service resumes by itself`, async () => {
      faults.set(rule);
      const e = engine();
      expect(await e.open()).toMatchObject({ ready: false, downCode: code, downFn: fn });
      expect(e.stats().ready).toBe(false);
      const t0 = performance.now();
      const err = await rejection(e.encrypt(KEY, Buffer.from('down'), AAD));
      expect(performance.now() - t0).toBeLessThan(500);
      expect(err.code).toBe(code);
      faults.clear();
      // Retried with backoff (25 ms doubling to 1 s) by the next calls.
      expect(
        await waitFor(
          async () =>
            await e.encrypt(KEY, Buffer.from('up'), AAD).then(
              () => true,
              () => false,
            ),
          5000,
        ),
      ).toBe(true);
      expect(e.stats().ready).toBe(true);
      await roundTrip(e, 'back');
    });
  }

  it('a wrong PIN, a code that is not a device error and a missing module still fail open()', async () => {
    const wrongPin = engine({ userPin: 'not-the-pin' });
    expect((await rejection(wrongPin.open())).code).toBe('CKR_PIN_INCORRECT');
    faults.set('fail C_Login CKR_PIN_LOCKED');
    expect((await rejection(engine().open())).code).toBe('CKR_PIN_LOCKED');
    faults.set('fail C_OpenSession CKR_ARGUMENTS_BAD');
    expect((await rejection(engine().open())).code).toBe('CKR_ARGUMENTS_BAD');
    faults.clear();
    const missing = engine({ modulePath: path.join(token.dir, 'no-such-module.so') });
    expect((await rejection(missing.open())).code).toBe('XKS_LOAD_FAILED');
  });

  it('over HTTP: the proxy starts, answers 500 and UNAVAILABLE, then serves once the HSM is back', async () => {
    faults.set('fail C_OpenSession CKR_DEVICE_ERROR');
    let proxy: TestProxy | undefined;
    try {
      proxy = await startTestProxy({
        token,
        operationTimeoutMs: 0,
        stores: [{ prefix: PREFIX, accessKeyId: CREDS.accessKeyId, secret: CREDS.secret, keys: [KEY] }],
      });
      await proxy.log.flush();
      expect(proxy.logText()).toMatch(/WARN.*HSM unavailable at start-up \(C_OpenSession: CKR_DEVICE_ERROR\)/);
      const encrypt = () =>
        call(
          proxy!.base,
          `${API}/keys/${KEY}/encrypt`,
          { requestMetadata: META, plaintext: Buffer.from('x').toString('base64'), encryptionAlgorithm: 'AES_GCM' },
          CREDS,
        );
      const health = () =>
        call(proxy!.base, `${API}/health`, { requestMetadata: { kmsOperation: 'KmsHealthCheck', kmsRequestId: META.kmsRequestId } }, CREDS);
      const down = await encrypt();
      expect([down.status, down.json.errorName]).toEqual([500, 'InternalException']);
      const h = await health();
      expect(h.status).toBe(200);
      expect((h.json.ekmFleetDetails as { healthStatus: string }[])[0]!.healthStatus).toBe('UNAVAILABLE');
      expect((await fetch(`${proxy.base}/ping`)).status).toBe(200);
      faults.clear();
      expect(await waitFor(async () => (await encrypt()).status === 200, 5000)).toBe(true);
      const up = await health();
      expect((up.json.ekmFleetDetails as { healthStatus: string }[])[0]!.healthStatus).toBe('ACTIVE');
    } finally {
      await proxy?.stop();
    }
  });

  it('the real CLI: a wrong PIN stops start-up with one line', async () => {
    const settings = path.join(token.dir, 'wrong-pin.toml');
    writeFileSync(
      settings,
      settingsToml({
        token: { ...token, pin: 'wrong-pin-1234' },
        stores: [{ prefix: PREFIX, accessKeyId: CREDS.accessKeyId, secret: CREDS.secret, keys: [KEY] }],
      }),
    );
    const env = {
      ...token.env,
      XKS_PROXY_SETTINGS_TOML: settings,
      FAULTY_PKCS11_TARGET: base.modulePath,
      FAULTY_PKCS11_CONTROL: faults.controlPath,
      FAULTY_PKCS11_STATUS: faults.statusPath,
    };
    const err = await spawnProxyCli(env).then(
      () => undefined,
      (e: unknown) => (e instanceof Error ? e.message : String(e)),
    );
    expect(err).toMatch(/proxy exited 1/);
    const lines = err!.split('\n').filter((l) => /C_Login: CKR_PIN_INCORRECT/.test(l));
    expect(lines).toHaveLength(1);
    expect(err).not.toMatch(/wrong-pin-1234/);
  });
});
