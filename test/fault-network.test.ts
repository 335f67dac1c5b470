/**
 * The fault module's network-HSM model (native-test/faulty/faulty_pkcs11.c: `rtt`, `sessions`)
 * in front of a real SoftHSM2 token, driven through the real engine: every call that crosses
 * the network pays the latency and blocks its thread, jitter stays within its bounds, length
 * queries are free and counted apart, and a session cap answers CKR_SESSION_COUNT while the
 * engine keeps serving within it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isNativeError, loadAddon, type EngineOptions, type NativeEngine, type NativeError } from '../src/hsm/addon.js';
import { useFaultyModule, type FaultControl } from './helpers/faulty.js';
import { makeToken, splitSealed, TEST_KEYS, type TestToken } from './helpers/softhsm.js';

const { Engine } = loadAddon();
const KEY = TEST_KEYS.ordinary;
const AAD = Buffer.from('network-aad');

let base: TestToken;
let token: TestToken;
let faults: FaultControl;

function options(o: Partial<EngineOptions> = {}): EngineOptions {
  return {
    modulePath: token.modulePath,
    userPin: token.pin,
    poolMaxSize: 2,
    poolTimeoutMs: 2000,
    eagerClose: false,
    threads: 2,
    ivMode: 'random',
    ...o,
  };
}

/** Runs `fn` with an open engine, closed afterwards (so no session outlives the test). */
async function withEngine<T>(o: Partial<EngineOptions>, fn: (e: NativeEngine) => Promise<T>): Promise<T> {
  const e = new Engine(options(o));
  await e.open();
  try {
    return await fn(e);
  } finally {
    await e.close();
  }
}

async function settle<T>(p: Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error: NativeError }> {
  try {
    return { ok: true, value: await p };
  } catch (e) {
    if (!isNativeError(e)) throw e;
    return { ok: false, error: e };
  }
}

beforeAll(async () => {
  base = makeToken('xks-fault-network');
  ({ token, faults } = useFaultyModule(base));
  await withEngine({}, (e) => e.createKey(KEY, { encrypt: true, decrypt: true }));
});

afterAll(() => {
  faults?.clear();
  base?.cleanup();
});

describe('rtt', () => {
  it('every call that crosses the network pays the latency, and the thread sleeps through it', async () => {
    await withEngine({}, async (e) => {
      await e.encrypt(KEY, Buffer.from('warm'), AAD); // session and key handle in place
      const RTT = 25;
      faults.set(`rtt ${RTT}`);
      const before = faults.status().round_trips;
      const cpu0 = process.cpuUsage();
      const t0 = performance.now();
      const n = 4;
      for (let i = 0; i < n; ++i) await e.encrypt(KEY, Buffer.from(`pt-${i}`), AAD);
      const wall = performance.now() - t0;
      const cpu = process.cpuUsage(cpu0);
      const trips = faults.status().round_trips - before;
      expect(trips).toBeGreaterThanOrEqual(2 * n); // at least C_EncryptInit + C_Encrypt each
      expect(wall).toBeGreaterThanOrEqual(trips * RTT);
      // slept, not spun: the process used far less CPU than the time the calls took
      expect((cpu.user + cpu.system) / 1000).toBeLessThan(wall / 2);
    });
  });

  it('the latency is paid outside the module lock: concurrent calls overlap as on real sockets', async () => {
    await withEngine({ poolMaxSize: 4, threads: 4 }, async (e) => {
      await Promise.all(Array.from({ length: 4 }, () => e.random(16))); // four sessions open
      const RTT = 100;
      faults.set(`rtt ${RTT}`);
      const t0 = performance.now();
      await Promise.all(Array.from({ length: 4 }, () => e.random(16)));
      const wall = performance.now() - t0;
      expect(wall).toBeGreaterThanOrEqual(RTT);
      expect(wall).toBeLessThan(4 * RTT); // serialized calls would take 4 x RTT
      expect(faults.status().max_in_flight).toBeGreaterThanOrEqual(2);
    });
  });

  it('fractional latency and jitter: each call takes rtt .. rtt + jitter (plus scheduling)', async () => {
    await withEngine({}, async (e) => {
      await e.random(16);
      faults.set('rtt 0.5');
      const f0 = performance.now();
      const before = faults.status().round_trips;
      for (let i = 0; i < 20; ++i) await e.random(16);
      expect(faults.status().round_trips - before).toBe(20); // one C_GenerateRandom each
      expect(performance.now() - f0).toBeGreaterThanOrEqual(20 * 0.5);

      const RTT = 5;
      const JITTER = 10;
      faults.set(`rtt ${RTT} jitter=${JITTER}`);
      const took: number[] = [];
      for (let i = 0; i < 30; ++i) {
        const t0 = performance.now();
        await e.random(16);
        took.push(performance.now() - t0);
      }
      took.sort((a, b) => a - b);
      expect(took[0]).toBeGreaterThanOrEqual(RTT);
      // uniform over [0, 10] ms: 30 draws all within 3 ms of each other would be a missing jitter
      expect(took[took.length - 1]! - took[0]!).toBeGreaterThan(3);
      // the median draw is ~5 ms of jitter; scheduling on a loaded VM adds a few ms at most
      expect(took[15]!).toBeLessThan(RTT + JITTER + 15);
    });
  });

  it('a malformed rtt line is ignored (no latency), like any malformed rule', async () => {
    await withEngine({}, async (e) => {
      await e.random(16);
      faults.set('rtt abc', 'rtt 50 jitter=', 'rtt 50 jitter=5 extra');
      const t0 = performance.now();
      for (let i = 0; i < 5; ++i) await e.random(16);
      expect(performance.now() - t0).toBeLessThan(5 * 50);
    });
  });
});

describe('length-only queries', () => {
  it('stay local: no latency, counted as calls.<FN>.len and not as round trips', async () => {
    await withEngine({}, async (e) => {
      const sealed = splitSealed(await e.encrypt(KEY, Buffer.from('len'), AAD));
      const s0 = faults.status();
      // C_GetSlotList(NULL) is a length query: the engine's open() makes one (module_link.cc)
      faults.set('rtt 30');
      await withEngine({}, async () => undefined);
      const s1 = faults.status();
      const slotLen = (s1.calls_by_fn['C_GetSlotList.len'] ?? 0) - (s0.calls_by_fn['C_GetSlotList.len'] ?? 0);
      const slotFull = (s1.calls_by_fn.C_GetSlotList ?? 0) - (s0.calls_by_fn.C_GetSlotList ?? 0);
      expect(slotLen).toBeGreaterThanOrEqual(1);
      expect(slotFull).toBeGreaterThanOrEqual(1);
      // the totals: every call counted once, round trips leave the length queries out
      const lenCalls = (st: typeof s0): number =>
        Object.entries(st.calls_by_fn)
          .filter(([k]) => k.endsWith('.len'))
          .reduce((n, [, v]) => n + v, 0);
      expect(s1.calls - s0.calls - (s1.round_trips - s0.round_trips)).toBe(lenCalls(s1) - lenCalls(s0));
      faults.clear();
      expect((await e.decrypt(KEY, sealed.ct, sealed.tag, sealed.iv, AAD)).toString()).toBe('len');
    });
  });
});

describe('sessions max=N', () => {
  it('answers CKR_SESSION_COUNT beyond N open sessions; the engine serves within the cap', async () => {
    const CAP = 2;
    faults.set(`sessions max=${CAP}`, 'rtt 5'); // calls overlap: six threads want six sessions
    await withEngine({ poolMaxSize: 6, threads: 6 }, async (e) => {
      const results = await Promise.all(
        Array.from({ length: 24 }, async (_, i) => ({ i, r: await settle(e.encrypt(KEY, Buffer.from(`cap-${i}`), AAD)) })),
      );
      const st = faults.status();
      expect(st.open_sessions).toBeLessThanOrEqual(CAP);
      // today a refused open fails its request (typed, fast) rather than waiting for a pooled session
      for (const { r } of results) {
        if (!r.ok) expect(r.error.message).toContain('CKR_SESSION_COUNT');
      }
      expect(results.filter((x) => x.r.ok).length).toBeGreaterThan(0);
      // afterwards, within the cap, every request is served
      for (let i = 0; i < 10; ++i) {
        const { ct, tag, iv } = splitSealed(await e.encrypt(KEY, Buffer.from(`after-${i}`), AAD));
        expect((await e.decrypt(KEY, ct, tag, iv, AAD)).toString()).toBe(`after-${i}`);
      }
      expect(faults.status().open_sessions).toBeLessThanOrEqual(CAP);
    });
    expect(faults.status().session_count_refused).toBeGreaterThan(0);
    faults.clear();
  });

  it('a pool that fits the cap serves a whole burst: no open is refused', async () => {
    const CAP = 2;
    faults.set(`sessions max=${CAP}`, 'rtt 5');
    const refused = faults.status().session_count_refused;
    await withEngine({ poolMaxSize: CAP, threads: 6 }, async (e) => {
      const sealed = await Promise.all(Array.from({ length: 24 }, (_, i) => e.encrypt(KEY, Buffer.from(`fit-${i}`), AAD)));
      expect(sealed).toHaveLength(24);
      expect(faults.status().open_sessions).toBeLessThanOrEqual(CAP);
    });
    expect(faults.status().session_count_refused).toBe(refused);
    faults.clear();
  });
});
