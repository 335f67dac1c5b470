/**
 * Session copies of the keys ([pkcs11] session_key_copies): encrypt and decrypt use a
 * session-object copy made inside the HSM by C_CopyObject, against a real SoftHSM2 token
 * behind the fault module. Keys are deleted (OpenSC's pkcs11-tool) and disabled
 * (native-test/p11attr) by another process, as an HSM administrator would.
 */
import { describe, expect, it } from 'vitest';
import type { NativeEngine } from '../src/hsm/addon.js';
import { deleteTokenKey, setTokenKeyUsage, useFaultyEngines } from './helpers/fault-engines.js';
import { rejection, splitSealed } from './helpers/softhsm.js';

const AAD = Buffer.from('copy-aad');
const CHECK_MS = 150;

const fx = useFaultyEngines({
  label: 'xks-key-copies',
  defaults: { poolMaxSize: 2, poolTimeoutMs: 1000, threads: 2, operationTimeoutMs: 1000, keyCopies: true, keyCheckMs: CHECK_MS },
  keys: ['copy-a', 'copy-b', 'copy-c', 'copy-d', 'copy-e', 'copy-f'],
  setupOptions: { keyCopies: false },
});
const { open } = fx;

interface Sealed {
  ct: Buffer;
  tag: Buffer;
  iv: Buffer;
}

async function seal(e: NativeEngine, key: string, text: string): Promise<Sealed> {
  return splitSealed(await e.encrypt(key, Buffer.from(text), AAD));
}

async function open_(e: NativeEngine, key: string, s: Sealed): Promise<string> {
  return (await e.decrypt(key, s.ct, s.tag, s.iv, AAD)).toString();
}

const deleteKey = (label: string): void => deleteTokenKey(fx.base, label);
const setUsage = (label: string, encrypt: boolean, decrypt: boolean): void => setTokenKeyUsage(fx.base, label, encrypt, decrypt);

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('session key copies', () => {
  it('encrypt and decrypt run on a copy in one extra session; ciphertexts are the same key’s either way', async () => {
    fx.faults.clear();
    const copies = await open();
    const plain = await open({ keyCopies: false });
    const a = await seal(copies, 'copy-a', 'made with the copy');
    const b = await seal(plain, 'copy-a', 'made with the token key');
    expect(await open_(plain, 'copy-a', a)).toBe('made with the copy');
    expect(await open_(copies, 'copy-a', b)).toBe('made with the token key');
    const s = copies.stats();
    expect(s.keyCopies).toBe(1);
    expect(s.keySessionOpen).toBe(true);
    expect(plain.stats().keyCopies).toBe(0);
    expect(plain.stats().keySessionOpen).toBe(false);
    // The module sees the pool sessions of both engines plus the one holding the copy.
    expect(fx.faults.status().open_sessions).toBe(copies.stats().sessionsOpen + plain.stats().sessionsOpen + 1);
    // Key metadata comes from the token object itself.
    expect(await copies.keyInfo('copy-a')).toMatchObject({ keyType: 'AES', bits: 256, encrypt: true, decrypt: true });
    await copies.close();
    await plain.close();
    expect(fx.faults.status().open_sessions).toBe(0);
  });

  it('a key deleted in the HSM stops working within keyCheckMs (at once without copies)', async () => {
    fx.faults.clear();
    const copies = await open();
    const plain = await open({ keyCopies: false });
    const sealed = await seal(copies, 'copy-b', 'before');
    expect(await open_(plain, 'copy-b', sealed)).toBe('before');
    expect(copies.stats().keyCopies).toBe(1);
    deleteKey('copy-b');
    // Without a copy the next call notices: the token object is gone.
    expect((await rejection(plain.encrypt('copy-b', Buffer.from('x'), AAD))).code).toBe('XKS_KEY_NOT_FOUND');
    await sleep(CHECK_MS + 50);
    expect((await rejection(copies.encrypt('copy-b', Buffer.from('x'), AAD))).code).toBe('XKS_KEY_NOT_FOUND');
    expect((await rejection(copies.decrypt('copy-b', sealed.ct, sealed.tag, sealed.iv, AAD))).code).toBe('XKS_KEY_NOT_FOUND');
    expect(copies.stats().keyCopies).toBe(0);
    // A new key under the same label is a different key: it is copied afresh, and the old
    // ciphertext does not open with it.
    await copies.createKey('copy-b', { encrypt: true, decrypt: true });
    const fresh = await seal(copies, 'copy-b', 'after');
    expect(await open_(plain, 'copy-b', fresh)).toBe('after');
    const wrongKey = await rejection(copies.decrypt('copy-b', sealed.ct, sealed.tag, sealed.iv, AAD));
    expect(wrongKey.code).toMatch(/^CKR_/);
    expect(wrongKey.fn).toBe('C_Decrypt');
    expect(copies.stats().keyCopies).toBe(1);
    await copies.close();
    await plain.close();
  });

  it('a key deleted and re-created under its label between checks is replaced at the next check', async () => {
    fx.faults.clear();
    const copies = await open();
    const plain = await open({ keyCopies: false });
    await seal(copies, 'copy-c', 'warm');
    deleteKey('copy-c');
    await plain.createKey('copy-c', { encrypt: true, decrypt: true });
    await sleep(CHECK_MS + 50);
    // The check finds another object under the label: the old copy goes, the new key serves.
    const s = await seal(copies, 'copy-c', 'new key');
    expect(await open_(plain, 'copy-c', s)).toBe('new key');
    await copies.close();
    await plain.close();
  });

  it('a key disabled in the HSM (CKA_ENCRYPT / CKA_DECRYPT false) stops working within keyCheckMs, and works again once re-enabled', async () => {
    fx.faults.clear();
    const copies = await open();
    const plain = await open({ keyCopies: false });
    const sealed = await seal(copies, 'copy-f', 'before');
    expect(copies.stats().keyCopies).toBe(1);
    setUsage('copy-f', false, false);
    expect((await rejection(plain.encrypt('copy-f', Buffer.from('x'), AAD))).code).toBe('CKR_KEY_FUNCTION_NOT_PERMITTED');
    await sleep(CHECK_MS + 50);
    expect((await rejection(copies.encrypt('copy-f', Buffer.from('x'), AAD))).code).toBe('CKR_KEY_FUNCTION_NOT_PERMITTED');
    expect((await rejection(copies.decrypt('copy-f', sealed.ct, sealed.tag, sealed.iv, AAD))).code).toBe('CKR_KEY_FUNCTION_NOT_PERMITTED');
    setUsage('copy-f', true, true);
    await sleep(CHECK_MS + 50);
    expect(await open_(copies, 'copy-f', sealed)).toBe('before');
    expect(await open_(plain, 'copy-f', await seal(copies, 'copy-f', 'after'))).toBe('after');
    await copies.close();
    await plain.close();
  });

  it("when the copies' session cannot be opened (CKR_SESSION_COUNT) the token key serves, and the copy comes at a later check", async () => {
    fx.faults.clear();
    const e = await open({ poolMaxSize: 2, threads: 1 });
    // The engine's first session is open already: the only C_OpenSession left is the copies' session.
    fx.faults.set('fail C_OpenSession CKR_SESSION_COUNT times=1');
    const s = await seal(e, 'copy-a', 'token key');
    expect(e.stats().keyCopies).toBe(0);
    expect(e.stats().keySessionOpen).toBe(false);
    await sleep(CHECK_MS + 50);
    expect(await open_(e, 'copy-a', s)).toBe('token key');
    expect(e.stats().keyCopies).toBe(1);
    expect(e.stats().keySessionOpen).toBe(true);
    fx.faults.clear();
    await e.close();
  });

  it('a module that refuses C_CopyObject is used through the token key', async () => {
    fx.faults.set('fail C_CopyObject CKR_ACTION_PROHIBITED');
    const e = await open();
    const s = await seal(e, 'copy-d', 'no copy');
    expect(await open_(e, 'copy-d', s)).toBe('no copy');
    expect(e.stats().keyCopies).toBe(0);
    // No session is kept open for copies that were refused.
    expect(e.stats().keySessionOpen).toBe(false);
    expect(fx.faults.status().open_sessions).toBe(e.stats().sessionsOpen);
    fx.faults.clear();
    await e.close();
  });

  it('a copy that turns invalid is made again and the call retried', async () => {
    fx.faults.clear();
    const e = await open();
    const s = await seal(e, 'copy-e', 'first');
    fx.faults.set('fail C_DecryptInit CKR_KEY_HANDLE_INVALID times=1');
    expect(await open_(e, 'copy-e', s)).toBe('first');
    // The copy's session itself fails: a new one is opened for the next copy.
    fx.faults.set('fail C_EncryptInit CKR_KEY_HANDLE_INVALID times=1', 'fail C_CopyObject CKR_SESSION_HANDLE_INVALID times=1');
    const t = await seal(e, 'copy-e', 'second');
    expect(await open_(e, 'copy-e', t)).toBe('second');
    expect(e.stats().keyCopies).toBe(1);
    fx.faults.clear();
    await e.close();
    expect(fx.faults.status().open_sessions).toBe(0);
  });

  it('re-checks racing with calls on 4 threads never fail a call', async () => {
    fx.faults.clear();
    const e = await open({ threads: 4, poolMaxSize: 4, keyCheckMs: 1 });
    for (let round = 0; round < 5; round++) {
      const sealed = await Promise.all(Array.from({ length: 200 }, (_, i) => seal(e, 'copy-a', `r${round}-${i}`)));
      const opened = await Promise.all(sealed.map((s) => open_(e, 'copy-a', s)));
      expect(opened).toEqual(Array.from({ length: 200 }, (_, i) => `r${round}-${i}`));
    }
    expect(e.stats().keyCopies).toBe(1);
    await e.close();
  });

  it('many concurrent calls on copies: every ciphertext decrypts with the token key', async () => {
    fx.faults.clear();
    const copies = await open({ threads: 4, poolMaxSize: 4 });
    const plain = await open({ keyCopies: false });
    const texts = Array.from({ length: 400 }, (_, i) => `m${i}`);
    const sealed = await Promise.all(texts.map((t) => seal(copies, 'copy-a', t)));
    for (const [i, s] of sealed.entries()) expect(await open_(plain, 'copy-a', s)).toBe(texts[i]);
    expect(copies.stats().keyCopies).toBe(1);
    await copies.close();
    await plain.close();
  });
});
