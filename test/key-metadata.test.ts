import { describe, expect, it } from 'vitest';
import type { NativeEngine } from '../src/hsm/addon.js';
import { callDelta, deleteTokenKey, setTokenKeyUsage, useFaultyEngines } from './helpers/fault-engines.js';
import { rejection } from './helpers/softhsm.js';

const AAD = Buffer.from('metadata-aad');
const HOUR = 3_600_000;
const CHECK_MS = 200;

const fx = useFaultyEngines({
  label: 'xks-key-metadata',
  defaults: { poolMaxSize: 2, poolTimeoutMs: 1000, threads: 2, operationTimeoutMs: 5000, keyCopies: true, keyCheckMs: HOUR },
  keys: ['meta-a', 'meta-b', 'meta-c', 'meta-d', 'meta-e'],
  setupOptions: { keyCopies: false },
});
const { open } = fx;

const deleteKey = (label: string): void => deleteTokenKey(fx.base, label);
const setUsage = (label: string, encrypt: boolean, decrypt: boolean): void => setTokenKeyUsage(fx.base, label, encrypt, decrypt);

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** keyInfo's usage flags and the PKCS#11 calls it made. */
async function usage(
  e: NativeEngine,
  label: string,
): Promise<{ encrypt: boolean; decrypt: boolean; trips: number; calls: Record<string, number> }> {
  const s0 = fx.faults.status();
  const k = await e.keyInfo(label);
  const s1 = fx.faults.status();
  return { encrypt: k.encrypt, decrypt: k.decrypt, trips: s1.round_trips - s0.round_trips, calls: callDelta(s0, s1) };
}

describe('GetKeyMetadata from the key cache', () => {
  it('the attributes come with the lookup: later keyInfo calls make no PKCS#11 call and need no session', async () => {
    fx.faults.clear();
    const e = await open({ poolMaxSize: 1 });
    const first = await usage(e, 'meta-a');
    expect(first).toMatchObject({ encrypt: true, decrypt: true });
    // the lookup and its one C_GetAttributeValue (the attributes metadata reports are in it)
    expect(first.calls).toMatchObject({ C_FindObjectsInit: 1, C_FindObjectsFinal: 1, C_GetAttributeValue: 1 });
    const s0 = fx.faults.status();
    for (let i = 0; i < 20; ++i)
      expect(await e.keyInfo('meta-a')).toMatchObject({ keyType: 'AES', bits: 256, encrypt: true, decrypt: true });
    expect(fx.faults.status().round_trips - s0.round_trips).toBe(0);
    // A key an Encrypt looked up: its metadata is there already.
    await e.encrypt('meta-e', Buffer.from('x'), AAD);
    expect(await usage(e, 'meta-e')).toEqual({ encrypt: true, decrypt: true, trips: 0, calls: {} });
    // The pool's only session held by an Encrypt blocked in the HSM: keyInfo still answers.
    fx.faults.set('block C_Encrypt');
    const held = e.encrypt('meta-a', Buffer.from('held'), AAD);
    expect(
      await new Promise<boolean>((r) => {
        const t = setTimeout(() => r(false), 3000);
        void e.keyInfo('meta-a').then(
          (k) => {
            clearTimeout(t);
            r(k.decrypt);
          },
          () => r(false),
        );
      }),
    ).toBe(true);
    expect(e.stats().sessionsIdle).toBe(0);
    fx.faults.clear();
    expect((await held).length).toBe(4 + 16 + 12);
  });

  it('a key disabled in the HSM: the cache answers until keyCheckMs has passed, then the next keyInfo re-checks and sees it', async () => {
    fx.faults.clear();
    const slow = await open({ keyCheckMs: HOUR });
    const quick = await open({ keyCheckMs: CHECK_MS });
    expect(await usage(slow, 'meta-b')).toMatchObject({ encrypt: true, decrypt: true });
    expect(await usage(quick, 'meta-b')).toMatchObject({ encrypt: true, decrypt: true });
    setUsage('meta-b', true, false);
    // Inside the window: the cached attributes, no call.
    expect(await usage(slow, 'meta-b')).toEqual({ encrypt: true, decrypt: true, trips: 0, calls: {} });
    await sleep(CHECK_MS + 50);
    // Past it: the label is looked up again and its attributes read; they differ, so the entry
    // (and its session copy) is replaced by a fresh lookup.
    const seen = await usage(quick, 'meta-b');
    expect(seen).toMatchObject({ encrypt: true, decrypt: false });
    expect(seen.calls.C_FindObjectsInit).toBe(2);
    expect(seen.calls.C_GetAttributeValue).toBe(2);
    // Confirmed now: from the cache again.
    expect(await usage(quick, 'meta-b')).toEqual({ encrypt: true, decrypt: false, trips: 0, calls: {} });
    // The other engine's window is an hour.
    expect(await usage(slow, 'meta-b')).toMatchObject({ decrypt: true, trips: 0 });
    // An unchanged key passes its re-check with one lookup and one attribute read.
    await sleep(CHECK_MS + 50);
    const again = await usage(quick, 'meta-b');
    expect(again).toEqual({
      encrypt: true,
      decrypt: false,
      trips: 5,
      calls: { C_FindObjectsInit: 1, C_FindObjects: 2, C_FindObjectsFinal: 1, C_GetAttributeValue: 1 },
    });
    setUsage('meta-b', true, true);
  });

  it('a key re-created under its label: seen at once when its old handle turns out invalid', async () => {
    fx.faults.clear();
    const e = await open({ keyCopies: false, keyCheckMs: HOUR });
    const maker = await open({ keyCopies: false });
    expect(await usage(e, 'meta-c')).toMatchObject({ encrypt: true, decrypt: true });
    deleteKey('meta-c');
    await maker.createKey('meta-c', { encrypt: true, decrypt: false });
    // The cache still holds the deleted key's attributes (the window)...
    expect(await usage(e, 'meta-c')).toMatchObject({ decrypt: true, trips: 0 });
    // ...until a call on the old handle fails: the label is found again, with the new key's.
    // (That call's session is closed as suspect; with no session left the user may have been
    // logged out, so every cached handle goes and the next keyInfo looks the label up again.)
    await e.encrypt('meta-c', Buffer.from('new key'), AAD);
    expect(await usage(e, 'meta-c')).toMatchObject({ encrypt: true, decrypt: false });
    expect(await usage(e, 'meta-c')).toEqual({ encrypt: true, decrypt: false, trips: 0, calls: {} });
  });

  it('a key deleted in the HSM: GetKeyMetadata answers not found after keyCheckMs', async () => {
    fx.faults.clear();
    const e = await open({ keyCheckMs: CHECK_MS });
    expect(await usage(e, 'meta-d')).toMatchObject({ encrypt: true, decrypt: true });
    deleteKey('meta-d');
    await sleep(CHECK_MS + 50);
    expect((await rejection(e.keyInfo('meta-d'))).code).toBe('XKS_KEY_NOT_FOUND');
  });

  it('a re-initialization of the module forgets the cached attributes: the next keyInfo reads them afresh', async () => {
    fx.faults.clear();
    const e = await open({ poolMaxSize: 2, keyCheckMs: HOUR });
    expect(await usage(e, 'meta-a')).toMatchObject({ decrypt: true });
    setUsage('meta-a', true, false);
    expect(await usage(e, 'meta-a')).toMatchObject({ decrypt: true, trips: 0 });
    const reinits = e.stats().reinitializations;
    // A device error whose idle sessions fail their probe too: the module is re-initialized.
    fx.faults.set('fail C_Encrypt CKR_DEVICE_ERROR times=1', 'fail C_GetSessionInfo CKR_DEVICE_ERROR');
    expect((await rejection(e.encrypt('meta-a', Buffer.from('x'), AAD))).code).toBe('CKR_DEVICE_ERROR');
    fx.faults.clear();
    expect(e.stats().reinitializations).toBeGreaterThan(reinits);
    const after = await usage(e, 'meta-a');
    expect(after).toMatchObject({ encrypt: true, decrypt: false });
    expect(after.calls.C_GetAttributeValue).toBe(1);
    setUsage('meta-a', true, true);
  });
});
