/**
 * Random-IV mode's IV buffer (native/iv_buffer.h), through the fault module in front of a
 * real SoftHSM2 token: IVs come from batches of HSM randomness, each used once; steady state
 * makes one C_GenerateRandom per many Encrypts; a re-initialization discards the buffer.
 */
import { describe, expect, it } from 'vitest';
import { isNativeError, type NativeEngine } from '../src/hsm/addon.js';
import { waitFor } from './helpers/faulty.js';
import { useFaultyEngines } from './helpers/fault-engines.js';
import { splitSealed, TEST_KEYS } from './helpers/softhsm.js';

const KEY = TEST_KEYS.ordinary;
const AAD = Buffer.from('iv-buffer-aad');

const fx = useFaultyEngines({
  label: 'xks-iv-buffer',
  defaults: { poolMaxSize: 4, poolTimeoutMs: 5000, threads: 2, operationTimeoutMs: 10_000 },
  keys: [KEY],
  setupOptions: { operationTimeoutMs: 0 },
  keepSetupEngine: true,
});
const { open } = fx;

async function settles(p: Promise<unknown>): Promise<boolean> {
  try {
    await p;
    return true;
  } catch (e) {
    if (!isNativeError(e)) throw e;
    return false;
  }
}

interface Sealed {
  text: string;
  out: Buffer;
}

/** n encrypts on e, at most `inFlight` at once; every plaintext distinct. */
async function encryptMany(e: NativeEngine, n: number, inFlight: number, tag: string): Promise<Sealed[]> {
  const results: Sealed[] = [];
  let next = 0;
  async function lane(): Promise<void> {
    while (next < n) {
      const text = `${tag}-${next++}`;
      results.push({ text, out: await e.encrypt(KEY, Buffer.from(text), AAD) });
    }
  }
  await Promise.all(Array.from({ length: inFlight }, lane));
  return results;
}

async function decryptsAll(e: NativeEngine, sealed: Sealed[]): Promise<boolean> {
  for (let i = 0; i < sealed.length; i += 64) {
    const chunk = sealed.slice(i, i + 64);
    const plain = await Promise.all(
      chunk.map(({ out }) => {
        const { ct, tag, iv } = splitSealed(out);
        return e.decrypt(KEY, ct, tag, iv, AAD);
      }),
    );
    if (!plain.every((p, k) => p.toString() === chunk[k]?.text)) return false;
  }
  return true;
}

function ivOf(out: Buffer): string {
  return splitSealed(out).iv.toString('hex');
}

describe('the IV buffer (random-IV mode)', () => {
  it('20,000 encrypts on 2 engines x 2 threads: no IV repeats, all decrypt, few C_GenerateRandom', async () => {
    fx.faults.clear();
    const a = await open();
    const b = await open();
    const g0 = fx.faults.calls('C_GenerateRandom');
    const [sa, sb] = await Promise.all([encryptMany(a, 10_000, 32, 'a'), encryptMany(b, 10_000, 32, 'b')]);
    const generated = fx.faults.calls('C_GenerateRandom') - g0;
    const all = [...sa, ...sb];
    expect(all.length).toBe(20_000);
    expect(new Set(all.map((s) => ivOf(s.out))).size).toBe(20_000);
    expect(generated / 20_000).toBeLessThanOrEqual(0.05);
    expect(await decryptsAll(a, sa)).toBe(true);
    expect(await decryptsAll(b, sb)).toBe(true);
  });

  it('steady state: <= 0.05 C_GenerateRandom and <= 2.05 PKCS#11 calls per Encrypt', async () => {
    fx.faults.clear();
    const e = await open();
    await encryptMany(e, 50, 1, 'warm');
    const before = fx.faults.status();
    const n = 2000;
    await encryptMany(e, n, 4, 'steady');
    const after = fx.faults.status();
    const gr = (after.calls_by_fn.C_GenerateRandom ?? 0) - (before.calls_by_fn.C_GenerateRandom ?? 0);
    const calls = after.calls - before.calls;
    expect(gr / n).toBeLessThanOrEqual(0.05);
    expect(calls / n).toBeLessThanOrEqual(2.05);
  });

  it('a concurrent burst with 1 ms per call: nothing fails or times out, the counts stay low', async () => {
    fx.faults.clear();
    const e = await open({ threads: 4, operationTimeoutMs: 5000 });
    await encryptMany(e, 10, 1, 'warm');
    fx.faults.set('delay * 1');
    const g0 = fx.faults.calls('C_GenerateRandom');
    const n = 1500;
    const outcomes = await Promise.all(Array.from({ length: n }, (_, i) => settles(e.encrypt(KEY, Buffer.from(`burst-${i}`), AAD))));
    const generated = fx.faults.calls('C_GenerateRandom') - g0;
    fx.faults.clear();
    expect(outcomes.filter((ok) => !ok).length).toBe(0);
    expect(e.stats().timeouts).toBe(0);
    expect(generated / n).toBeLessThanOrEqual(0.05);
  });

  it('a re-initialization discards the buffer: the next Encrypt generates its own IV', async () => {
    fx.faults.clear();
    const e = await open();
    const before = await encryptMany(e, 20, 1, 'before'); // the buffer now holds > 200 IVs
    const reinits = e.stats().reinitializations;
    fx.faults.set('fail * CKR_DEVICE_ERROR');
    for (let i = 0; i < 5; ++i) await settles(e.encrypt(KEY, Buffer.from('x'), AAD));
    expect(e.stats().ready).toBe(false);
    fx.faults.clear();
    // Recover through a call that takes no IV.
    expect(await waitFor(async () => settles(e.tokenInfo()), 3000)).toBe(true);
    expect(e.stats().reinitializations).toBeGreaterThan(reinits);
    const g0 = fx.faults.calls('C_GenerateRandom');
    const first = await e.encrypt(KEY, Buffer.from('first after'), AAD);
    // Its own IV (the buffer is empty), then the refill: a surviving buffer would make 0.
    expect(fx.faults.calls('C_GenerateRandom') - g0).toBe(2);
    const afterward = await encryptMany(e, 20, 1, 'after');
    expect(fx.faults.calls('C_GenerateRandom') - g0).toBe(2);
    const ivs = new Set(before.map((s) => ivOf(s.out)));
    for (const s of [{ text: 'first after', out: first }, ...afterward]) expect(ivs.has(ivOf(s.out))).toBe(false);
    expect(await decryptsAll(e, [...before, { text: 'first after', out: first }, ...afterward])).toBe(true);
  });

  it("another engine's re-initialization of the module discards this engine's buffer too", async () => {
    fx.faults.clear();
    const a = await open();
    const b = await open();
    await encryptMany(a, 5, 1, 'a');
    await encryptMany(b, 5, 1, 'b'); // b's buffer now holds > 200 IVs
    fx.faults.set('fail * CKR_DEVICE_ERROR');
    for (let i = 0; i < 3; ++i) await settles(a.encrypt(KEY, Buffer.from('x'), AAD));
    fx.faults.clear();
    expect(await waitFor(async () => settles(a.tokenInfo()), 3000)).toBe(true);
    expect(a.stats().reinitializations).toBeGreaterThan(0);
    const g0 = fx.faults.calls('C_GenerateRandom');
    const out = await b.encrypt(KEY, Buffer.from('b after'), AAD);
    expect(fx.faults.calls('C_GenerateRandom') - g0).toBe(2);
    expect(await decryptsAll(b, [{ text: 'b after', out }])).toBe(true);
  });

  it('closing an engine with a full buffer leaves nothing behind for the next one', async () => {
    fx.faults.clear();
    const a = await open();
    await encryptMany(a, 5, 1, 'a');
    await a.close();
    const b = await open();
    const g0 = fx.faults.calls('C_GenerateRandom');
    await b.encrypt(KEY, Buffer.from('fresh'), AAD);
    expect(fx.faults.calls('C_GenerateRandom') - g0).toBe(2);
  });
});
