/**
 * The IV buffer's refill runs after the Encrypt that started it was answered (native/engine.cc
 * Core::refillIvs): through the fault module's 1 ms network model in front of a real SoftHSM2 token.
 *
 * The refill test cannot pass by accident: every refill's C_GenerateRandom is held in the HSM
 * (`block`) until the test has seen the Encrypt that started it, and 20 more, answered. A refill
 * made inside an Encrypt's job would hold that Encrypt until its deadline (XKS_TIMEOUT), and an
 * Encrypt that made its own IV would block as well.
 */
import { describe, expect, it } from 'vitest';
import type { NativeEngine } from '../src/hsm/addon.js';
import { waitFor } from './helpers/faulty.js';
import { useFaultyEngines } from './helpers/fault-engines.js';
import { splitSealed, TEST_KEYS } from './helpers/softhsm.js';

const KEY = TEST_KEYS.ordinary;
const AAD = Buffer.from('iv-refill-aad');

const fx = useFaultyEngines({
  label: 'xks-iv-refill',
  defaults: { poolMaxSize: 4, poolTimeoutMs: 5000, threads: 2, operationTimeoutMs: 5000 },
  keys: [KEY],
  setupOptions: { operationTimeoutMs: 0 },
  keepSetupEngine: true,
});
const { open } = fx;

/** Every session of e is back in the pool (none is leased to a job or a refill). */
function allIdle(e: NativeEngine): boolean {
  const s = e.stats();
  return s.sessionsOpen > 0 && s.sessionsIdle === s.sessionsOpen;
}

/** No session of e is leased to a job or a refill (there may be none open). */
function noneLeased(e: NativeEngine): boolean {
  const s = e.stats();
  return s.sessionsIdle === s.sessionsOpen;
}

describe('the IV refill off the request path (random-IV mode, 1 ms per call)', () => {
  it('600+ sequential encrypts: no Encrypt waits for a C_GenerateRandom, IVs unique, all decrypt', async () => {
    fx.faults.set('rtt 1');
    const e = await open();
    const sealed: { text: string; out: Buffer }[] = [];
    const encryptOne = async (): Promise<void> => {
      const text = `refill-${sealed.length}`;
      sealed.push({ text, out: await e.encrypt(KEY, Buffer.from(text), AAD) });
    };
    // The first Encrypt after the start makes its own IV and the first batch.
    await encryptOne();
    expect(await waitFor(() => allIdle(e), 3000)).toBe(true);
    let refills = 0;
    for (let cycle = 0; cycle < 6 && (sealed.length < 600 || refills < 2); ++cycle) {
      fx.faults.set('rtt 1', 'block C_GenerateRandom');
      const g0 = fx.faults.calls('C_GenerateRandom');
      // One at a time until a refill is held in the HSM (due at most kBatch + 1 Encrypts on).
      let held = false;
      for (let i = 0; i < 400 && !held; ++i) {
        await encryptOne();
        held = fx.faults.calls('C_GenerateRandom') > g0;
      }
      expect(held).toBe(true);
      // The Encrypt that started it was answered; so are these, from the IVs still in stock.
      for (let i = 0; i < 20; ++i) await encryptOne();
      expect(fx.faults.calls('C_GenerateRandom')).toBe(g0 + 1);
      expect(allIdle(e)).toBe(false); // the refill still holds its session
      fx.faults.set('rtt 1'); // releases it
      expect(await waitFor(() => allIdle(e), 3000)).toBe(true);
      refills++;
    }
    fx.faults.clear();
    expect(refills).toBeGreaterThanOrEqual(2);
    expect(sealed.length).toBeGreaterThanOrEqual(600);
    expect(e.stats().timeouts).toBe(0);
    expect(new Set(sealed.map((s) => splitSealed(s.out).iv.toString('hex'))).size).toBe(sealed.length);
    for (let i = 0; i < sealed.length; i += 64) {
      const chunk = sealed.slice(i, i + 64);
      const plain = await Promise.all(
        chunk.map(({ out }) => {
          const { ct, tag, iv } = splitSealed(out);
          return e.decrypt(KEY, ct, tag, iv, AAD);
        }),
      );
      expect(plain.map((p) => p.toString())).toEqual(chunk.map((s) => s.text));
    }
  });

  it('a refill that fails after its Encrypt was answered fails no request; the next one refills', async () => {
    fx.faults.set('rtt 1');
    const e = await open();
    await e.encrypt(KEY, Buffer.from('warm'), AAD);
    expect(await waitFor(() => allIdle(e), 3000)).toBe(true);
    fx.faults.set('rtt 1', 'fail C_GenerateRandom CKR_DEVICE_MEMORY times=1');
    const g0 = fx.faults.calls('C_GenerateRandom');
    let n = 0;
    // Each Encrypt's refill, if it started one, ends before the next Encrypt is sent: else that
    // Encrypt could claim the retry before the loop has seen the failed refill. (The failure
    // closes the pool's sessions, so "none leased" rather than allIdle.)
    for (; n < 400 && fx.faults.calls('C_GenerateRandom') === g0; ++n) {
      await e.encrypt(KEY, Buffer.from(`f-${n}`), AAD);
      expect(await waitFor(() => noneLeased(e), 3000)).toBe(true);
    }
    expect(fx.faults.calls('C_GenerateRandom')).toBe(g0 + 1); // the failed refill
    // The Encrypts after it still have IVs in stock, and the next one due claims the refill again.
    for (let i = 0; i < 10; ++i) await e.encrypt(KEY, Buffer.from(`after-${i}`), AAD);
    expect(await waitFor(() => fx.faults.calls('C_GenerateRandom') >= g0 + 2, 3000)).toBe(true);
    fx.faults.clear();
    expect(e.stats().timeouts).toBe(0);
  });
});
