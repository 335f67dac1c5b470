/**
 * Encrypt with `verify` (the CDIV): the encrypt and its verifying decrypt are one engine job
 * (native/engine.cc Core::call, native/op_encrypt.cc verifyEncrypt), through the fault module in
 * front of a real SoftHSM2 token.
 */
import { describe, expect, it } from 'vitest';
import { isNativeError } from '../src/hsm/addon.js';
import { useFaultyEngines } from './helpers/fault-engines.js';
import { splitSealed, TEST_KEYS } from './helpers/softhsm.js';

const KEY = TEST_KEYS.ordinary;
const AAD = Buffer.from('cdiv-job-aad');

const fx = useFaultyEngines({
  label: 'xks-cdiv-job',
  defaults: { poolMaxSize: 4, poolTimeoutMs: 5000, threads: 2, operationTimeoutMs: 5000 },
  keys: [KEY],
  setupOptions: { operationTimeoutMs: 0 },
  keepSetupEngine: true,
});
const { open } = fx;

describe('Encrypt with verify (the CDIV) in one job', () => {
  it('resolves a ciphertext that decrypts; a verifying decrypt that differs rejects without one', async () => {
    fx.faults.clear();
    const e = await open();
    const out = await e.encrypt(KEY, Buffer.from('checked'), AAD, true);
    const { ct, tag, iv } = splitSealed(out);
    expect((await e.decrypt(KEY, ct, tag, iv, AAD)).toString()).toBe('checked');
    const calls0 = fx.faults.status().calls_by_fn;
    fx.faults.set('flip C_Decrypt times=1');
    const err = await e.encrypt(KEY, Buffer.from('checked'), AAD, true).then(
      () => undefined,
      (x: unknown) => x,
    );
    fx.faults.clear();
    expect(isNativeError(err) && [err.code, err.fn, err.verifying]).toEqual(['XKS_CDIV_MISMATCH', 'C_Decrypt', true]);
    const calls1 = fx.faults.status().calls_by_fn;
    for (const fn of ['C_EncryptInit', 'C_Encrypt', 'C_DecryptInit', 'C_Decrypt'])
      expect([fn, (calls1[fn] ?? 0) - (calls0[fn] ?? 0)]).toEqual([fn, 1]);
  });

  it('a failing verifying decrypt is reported as the verification (verifying: true); plain encrypts never', async () => {
    fx.faults.clear();
    const e = await open();
    fx.faults.set('fail C_DecryptInit CKR_KEY_FUNCTION_NOT_PERMITTED times=1');
    const err = await e.encrypt(KEY, Buffer.from('x'), AAD, true).then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(isNativeError(err) && [err.code, err.fn, err.verifying]).toEqual(['CKR_KEY_FUNCTION_NOT_PERMITTED', 'C_DecryptInit', true]);
    fx.faults.set('fail C_EncryptInit CKR_FUNCTION_FAILED times=1');
    const plain = await e.encrypt(KEY, Buffer.from('x'), AAD, true).then(
      () => undefined,
      (x: unknown) => x,
    );
    fx.faults.clear();
    expect(isNativeError(plain) && [plain.code, plain.verifying]).toEqual(['CKR_FUNCTION_FAILED', undefined]);
  });
});

describe('the deadline of an Encrypt with CDIV', () => {
  it("is two calls' time: a slow encrypt and a slow verifying decrypt, each within one, succeed", async () => {
    fx.faults.clear();
    const e = await open({ operationTimeoutMs: 400 });
    await e.encrypt(KEY, Buffer.from('warm'), AAD, true);
    fx.faults.set('delay C_Encrypt 250 times=1', 'delay C_Decrypt 250 times=1');
    const out = await e.encrypt(KEY, Buffer.from('slow'), AAD, true);
    fx.faults.clear();
    const { ct, tag, iv } = splitSealed(out);
    expect((await e.decrypt(KEY, ct, tag, iv, AAD)).toString()).toBe('slow');
  });

  it('a verifying decrypt stuck in the HSM times out as the verification (verifying: true)', async () => {
    fx.faults.clear();
    const e = await open({ operationTimeoutMs: 100 });
    await e.encrypt(KEY, Buffer.from('warm'), AAD, true);
    fx.faults.set('block C_Decrypt');
    const t0 = performance.now();
    const err = await e.encrypt(KEY, Buffer.from('stuck'), AAD, true).then(
      () => undefined,
      (x: unknown) => x,
    );
    const ms = performance.now() - t0;
    fx.faults.clear();
    expect(isNativeError(err) && [err.code, err.verifying]).toEqual(['XKS_TIMEOUT', true]);
    expect(ms).toBeGreaterThanOrEqual(195); // two deadlines, not one
  });
});
