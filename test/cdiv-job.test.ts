/**
 * Encrypt with `verify` (the CDIV): the encrypt and its verifying decrypt are one engine job
 * (native/engine.cc Core::call, native/op_encrypt.cc verifyEncrypt), through the fault module in
 * front of a real SoftHSM2 token.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isNativeError, loadAddon, type EngineOptions, type NativeEngine } from '../src/hsm/addon.js';
import { useFaultyModule, type FaultControl } from './helpers/faulty.js';
import { makeToken, splitSealed, TEST_KEYS, type TestToken } from './helpers/softhsm.js';

const { Engine } = loadAddon();
const KEY = TEST_KEYS.ordinary;
const AAD = Buffer.from('cdiv-job-aad');

let base: TestToken;
let token: TestToken;
let faults: FaultControl;
const engines: NativeEngine[] = [];

async function open(o: Partial<EngineOptions> = {}): Promise<NativeEngine> {
  const e = new Engine({
    modulePath: token.modulePath,
    userPin: token.pin,
    poolMaxSize: 4,
    poolTimeoutMs: 5000,
    eagerClose: false,
    threads: 2,
    ivMode: 'random',
    operationTimeoutMs: 5000,
    ...o,
  });
  engines.push(e);
  await e.open();
  return e;
}

beforeAll(async () => {
  base = makeToken('xks-cdiv-job');
  ({ token, faults } = useFaultyModule(base));
  const e = await open({ operationTimeoutMs: 0 });
  await e.createKey(KEY, { encrypt: true, decrypt: true });
});

afterAll(async () => {
  faults?.clear();
  for (const e of engines) await e.close();
  base?.cleanup();
});

describe('Encrypt with verify (the CDIV) in one job', () => {
  it('resolves a ciphertext that decrypts; a verifying decrypt that differs rejects without one', async () => {
    faults.clear();
    const e = await open();
    const out = await e.encrypt(KEY, Buffer.from('checked'), AAD, true);
    const { ct, tag, iv } = splitSealed(out);
    expect((await e.decrypt(KEY, ct, tag, iv, AAD)).toString()).toBe('checked');
    const calls0 = faults.status().calls_by_fn;
    faults.set('flip C_Decrypt times=1');
    const err = await e.encrypt(KEY, Buffer.from('checked'), AAD, true).then(
      () => undefined,
      (x: unknown) => x,
    );
    faults.clear();
    expect(isNativeError(err) && [err.code, err.fn, err.verifying]).toEqual(['XKS_CDIV_MISMATCH', 'C_Decrypt', true]);
    const calls1 = faults.status().calls_by_fn;
    for (const fn of ['C_EncryptInit', 'C_Encrypt', 'C_DecryptInit', 'C_Decrypt'])
      expect([fn, (calls1[fn] ?? 0) - (calls0[fn] ?? 0)]).toEqual([fn, 1]);
  });

  it('a failing verifying decrypt is reported as the verification (verifying: true); plain encrypts never', async () => {
    faults.clear();
    const e = await open();
    faults.set('fail C_DecryptInit CKR_KEY_FUNCTION_NOT_PERMITTED times=1');
    const err = await e.encrypt(KEY, Buffer.from('x'), AAD, true).then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(isNativeError(err) && [err.code, err.fn, err.verifying]).toEqual(['CKR_KEY_FUNCTION_NOT_PERMITTED', 'C_DecryptInit', true]);
    faults.set('fail C_EncryptInit CKR_FUNCTION_FAILED times=1');
    const plain = await e.encrypt(KEY, Buffer.from('x'), AAD, true).then(
      () => undefined,
      (x: unknown) => x,
    );
    faults.clear();
    expect(isNativeError(plain) && [plain.code, plain.verifying]).toEqual(['CKR_FUNCTION_FAILED', undefined]);
  });
});

describe('the deadline of an Encrypt with CDIV', () => {
  it("is two calls' time: a slow encrypt and a slow verifying decrypt, each within one, succeed", async () => {
    faults.clear();
    const e = await open({ operationTimeoutMs: 400 });
    await e.encrypt(KEY, Buffer.from('warm'), AAD, true);
    faults.set('delay C_Encrypt 250 times=1', 'delay C_Decrypt 250 times=1');
    const out = await e.encrypt(KEY, Buffer.from('slow'), AAD, true);
    faults.clear();
    const { ct, tag, iv } = splitSealed(out);
    expect((await e.decrypt(KEY, ct, tag, iv, AAD)).toString()).toBe('slow');
  });

  it('a verifying decrypt stuck in the HSM times out as the verification (verifying: true)', async () => {
    faults.clear();
    const e = await open({ operationTimeoutMs: 100 });
    await e.encrypt(KEY, Buffer.from('warm'), AAD, true);
    faults.set('block C_Decrypt');
    const t0 = performance.now();
    const err = await e.encrypt(KEY, Buffer.from('stuck'), AAD, true).then(
      () => undefined,
      (x: unknown) => x,
    );
    const ms = performance.now() - t0;
    faults.clear();
    expect(isNativeError(err) && [err.code, err.verifying]).toEqual(['XKS_TIMEOUT', true]);
    expect(ms).toBeGreaterThanOrEqual(195); // two deadlines, not one
  });
});
