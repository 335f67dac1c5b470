/**
 * The HSM HMAC the audit trail's checkpoints use: CKM_SHA256_HMAC sign and verify with a
 * CKK_GENERIC_SECRET key, against a real SoftHSM2 token, through the Hsm facade.
 */
import crypto from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { XksError } from '../src/errors.js';
import { Hsm } from '../src/hsm/hsm.js';
import { makeToken, type TestToken } from './helpers/softhsm.js';

let token: TestToken;
let hsm: Hsm;
const KNOWN = Buffer.from(Array.from({ length: 32 }, (_, i) => 0xa0 ^ i));

beforeAll(async () => {
  token = makeToken('xks-audit-hmac');
  process.env.SOFTHSM2_CONF = token.confPath;
  hsm = await Hsm.open({
    modulePath: token.modulePath,
    userPin: token.pin,
    poolMaxSize: 4,
    poolTimeoutMs: 10_000,
    eagerClose: false,
    threads: 2,
    ivMode: 'random',
  });
  await hsm.createHmacKey('hmac-known', KNOWN);
  await hsm.createHmacKey('hmac-generated');
  await hsm.createKey('aes-key', { encrypt: true, decrypt: true });
});

afterAll(async () => {
  await hsm?.close();
  token?.cleanup();
});

describe('HSM HMAC-SHA256', () => {
  it('computes the RFC 2104 HMAC-SHA256 of the data with the imported key', async () => {
    for (const data of [Buffer.alloc(0), Buffer.from('xks-proxy-audit-v1\nf.jsonl\n7\n2026\nabc'), crypto.randomBytes(5000)]) {
      const mac = await hsm.hmacSign('hmac-known', data);
      expect(mac.length).toBe(32);
      expect(mac.toString('hex')).toBe(crypto.createHmac('sha256', KNOWN).update(data).digest('hex'));
    }
  });

  it('verifies its own MACs and rejects changed data or MACs', async () => {
    const data = Buffer.from('chain head 0123');
    const mac = await hsm.hmacSign('hmac-generated', data);
    expect(await hsm.hmacVerify('hmac-generated', data, mac)).toBe(true);
    expect(await hsm.hmacVerify('hmac-generated', Buffer.from('chain head 0124'), mac)).toBe(false);
    const bad = Buffer.from(mac);
    bad[31] = (bad[31] ?? 0) ^ 1;
    expect(await hsm.hmacVerify('hmac-generated', data, bad)).toBe(false);
    expect(await hsm.hmacVerify('hmac-generated', data, mac.subarray(0, 16))).toBe(false);
    // A MAC made with another key (the attacker's) is rejected.
    const forged = crypto.createHmac('sha256', crypto.randomBytes(32)).update(data).digest();
    expect(await hsm.hmacVerify('hmac-generated', data, forged)).toBe(false);
  });

  it('the generated key differs from the imported one and never leaves the HSM', async () => {
    const data = Buffer.from('x');
    const a = await hsm.hmacSign('hmac-generated', data);
    const b = await hsm.hmacSign('hmac-known', data);
    expect(a.equals(b)).toBe(false);
    expect(await hsm.hmacVerify('hmac-known', data, a)).toBe(false);
  });

  it('refuses an AES key and an unknown label with typed errors', async () => {
    const aes = await hsm.hmacSign('aes-key', Buffer.from('x')).catch((e: unknown) => e);
    expect(aes).toBeInstanceOf(XksError);
    expect((aes as XksError).errorName).toBe('InternalException');
    expect((aes as XksError).detail).toBe('XKS_HMAC_KEY_SPEC');
    const verify = await hsm.hmacVerify('aes-key', Buffer.from('x'), Buffer.alloc(32)).catch((e: unknown) => e);
    expect((verify as XksError).detail).toBe('XKS_HMAC_KEY_SPEC');
    const missing = await hsm.hmacSign('no-such-key', Buffer.from('x')).catch((e: unknown) => e);
    expect((missing as XksError).errorName).toBe('KeyNotFoundException');
  });

  it('an HMAC key cannot encrypt (it is no AES-256 key)', async () => {
    const e = await hsm.encrypt('hmac-known', Buffer.from('p'), Buffer.alloc(0)).catch((err: unknown) => err);
    expect((e as XksError).errorName).toBe('InvalidKeyUsageException');
  });

  it('runs many HMACs concurrently on the engine threads', async () => {
    const datas = Array.from({ length: 50 }, (_, i) => Buffer.from(`m${i}`));
    const macs = await Promise.all(datas.map((d) => hsm.hmacSign('hmac-known', d)));
    for (const [i, m] of macs.entries()) {
      expect(m.toString('hex')).toBe(crypto.createHmac('sha256', KNOWN).update(datas[i]!).digest('hex'));
    }
  });
});
