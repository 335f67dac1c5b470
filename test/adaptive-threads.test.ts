/**
 * The default HSM thread count adapts to what the calls cost (native/workers.cc, adapt()): with
 * calls that block (the fault module's `delay * 1`, a 1 ms sleep before every call, as on a
 * network HSM) the engine lets more threads serve than CPUs; with plain SoftHSM2 (CPU-bound on
 * the same cores) it stays near adaptCores. An explicit thread count is never adapted. Real
 * SoftHSM2 behind the real fault module; the figures come from the module's status file.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadAddon, type EngineOptions, type NativeEngine } from '../src/hsm/addon.js';
import { parseConfig } from '../src/config.js';
import { planWorkers } from '../src/workers/split.js';
import { engineOptions } from '../src/workers/serving.js';
import { type FaultControl, useFaultyModule, waitFor } from './helpers/faulty.js';
import { createTestKeys, makeToken, splitSealed, TEST_KEYS, type TestToken } from './helpers/softhsm.js';

const { Engine } = loadAddon();

let token: TestToken;
let faulty: { token: TestToken; faults: FaultControl };

beforeAll(async () => {
  token = makeToken('xks-adapt');
  process.env.SOFTHSM2_CONF = token.confPath;
  const e = new Engine({
    modulePath: token.modulePath,
    userPin: token.pin,
    poolMaxSize: 2,
    poolTimeoutMs: 5000,
    eagerClose: false,
    threads: 1,
    ivMode: 'random',
  });
  await e.open();
  await createTestKeys(e);
  await e.close();
  faulty = useFaultyModule(token);
});

afterAll(() => {
  faulty?.faults.clear();
  token?.cleanup();
});

function options(overrides: Partial<EngineOptions>): EngineOptions {
  return {
    modulePath: faulty.token.modulePath,
    userPin: token.pin,
    poolMaxSize: 16,
    poolTimeoutMs: 10_000,
    eagerClose: false,
    threads: 16,
    ivMode: 'random',
    keyCopies: false,
    ...overrides,
  };
}

/** `clients` closed-loop encrypt callers for `ms` milliseconds; returns the requests done. */
async function closedLoop(engine: NativeEngine, clients: number, ms: number): Promise<number> {
  const end = Date.now() + ms;
  let done = 0;
  const pt = Buffer.alloc(64, 7);
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (Date.now() < end) {
        await engine.encrypt(TEST_KEYS.ordinary, pt, Buffer.alloc(0));
        done++;
      }
    }),
  );
  return done;
}

async function maxInFlight(overrides: Partial<EngineOptions>, rule: string | undefined, ms: number): Promise<number> {
  const engine = new Engine(options(overrides));
  await engine.open();
  try {
    await engine.encrypt(TEST_KEYS.ordinary, Buffer.alloc(1), Buffer.alloc(0)); // key looked up
    if (rule !== undefined) faulty.faults.set(rule);
    else faulty.faults.clear();
    const done = await closedLoop(engine, 32, ms);
    expect(done).toBeGreaterThan(0);
    return faulty.faults.status().max_in_flight;
  } finally {
    faulty.faults.clear();
    await engine.close();
  }
}

describe('adaptive HSM threads', () => {
  it('blocking calls (delay * 1): more than 2 calls in flight with adaptCores 2', async () => {
    // Starts with 2 serving threads; the first decision (100 ms, 16 samples) sees ~1 ms blocked
    // per call against tens of µs of CPU and lets all 16 serve.
    const inFlight = await maxInFlight({ threads: 16, adaptCores: 2 }, 'delay * 1', 1500);
    expect(inFlight).toBeGreaterThan(2);
  }, 20_000);

  it('a slow network HSM (delay * 5): a burst gets every thread within the first decisions', async () => {
    // 5 ms per call, 10 ms per encrypt: 16 samples on 2 threads would take ~320 ms and three
    // doublings more; jobs that block this long are decided on after 4 samples and grow at once.
    const inFlight = await maxInFlight({ threads: 16, adaptCores: 2 }, 'delay * 5', 300);
    expect(inFlight).toBeGreaterThan(8);
  }, 20_000);

  it('CPU-bound calls (plain SoftHSM2): stays near adaptCores', async () => {
    const inFlight = await maxInFlight({ threads: 16, adaptCores: 2 }, undefined, 1500);
    expect(inFlight).toBeGreaterThanOrEqual(1);
    // Well below the 16 that blocking calls reach; above 2 only while the machine's other load
    // makes SoftHSM2's own locks sleep now and then.
    expect(inFlight).toBeLessThanOrEqual(6);
  }, 20_000);

  it('an explicit thread count is honoured, blocking calls or not', async () => {
    // No adaptCores: exactly `threads` serve (3 of them reach the module at once, never more).
    expect(await maxInFlight({ threads: 3 }, 'delay * 1', 800)).toBe(3);
  }, 20_000);
});

describe('adaptive HSM threads and the deadline', () => {
  it('a stuck serving thread hands its permit to a parked one; deadline and quarantine hold', async () => {
    // One permit (adaptCores 1) among 4 threads: if the stuck thread kept it, the decrypt below
    // would wait in the queue and time out too.
    const e = new Engine(options({ threads: 4, adaptCores: 1, operationTimeoutMs: 150 }));
    await e.open();
    try {
      const { ct, tag, iv } = splitSealed(await e.encrypt(TEST_KEYS.ordinary, Buffer.from('before'), Buffer.alloc(0)));
      faulty.faults.set('block C_Encrypt');
      const t0 = Date.now();
      const err = await e.encrypt(TEST_KEYS.ordinary, Buffer.from('x'), Buffer.alloc(0)).then(
        () => undefined,
        (x: unknown) => x as { code?: string },
      );
      expect(err?.code).toBe('XKS_TIMEOUT');
      expect(Date.now() - t0).toBeLessThan(150 + 100);
      expect(e.stats().workersStuck).toBe(1);
      expect(e.stats().sessionsQuarantined).toBe(1);
      expect((await e.decrypt(TEST_KEYS.ordinary, ct, tag, iv, Buffer.alloc(0))).toString()).toBe('before');
      faulty.faults.clear();
      expect(await waitFor(() => e.stats().workersStuck === 0)).toBe(true);
      expect((await e.encrypt(TEST_KEYS.ordinary, Buffer.from('after'), Buffer.alloc(0))).length).toBe(5 + 28);
    } finally {
      faulty.faults.clear();
      await e.close();
    }
  }, 20_000);
});

describe('worker_threads in settings.toml', () => {
  // The seed's pool of 30 on the repo's minimal settings file; `extra` goes into [pkcs11].
  const minimal = readFileSync(new URL('./fixtures/config/minimal.toml', import.meta.url), 'utf8');
  const toml = (extra: string): string => {
    const out = minimal.replace('session_pool_max_size = 4', `session_pool_max_size = 30\n${extra}`);
    if (out === minimal) throw new Error('fixture edit did not apply');
    return out;
  };

  it('absent: a ceiling of min(pool, 32) per loop share, adapted from each loop share of the CPUs', () => {
    const { config } = parseConfig(toml(''), 'a.toml', {});
    expect(config.pkcs11.worker_threads).toBe(30);
    expect(config.pkcs11.worker_threads_adaptive).toBe(true);
    const plan = planWorkers({ ...config, server: { ...config.server, workers: 2 } }, 4);
    expect(plan.shares.map((s) => [s.threads, s.adaptCores])).toEqual([
      [15, 1],
      [15, 1],
    ]);
    expect(engineOptions(config, plan.shares[0]!)).toMatchObject({ threads: 15, adaptCores: 1 });
    // One loop on 4 CPUs: 3 left to the HSM threads.
    expect(planWorkers({ ...config, server: { ...config.server, workers: 1 } }, 4).shares[0]).toEqual({
      poolMaxSize: 30,
      threads: 30,
      adaptCores: 3,
    });
  });

  it('set: exactly that many threads, never adapted', () => {
    const { config } = parseConfig(toml('worker_threads = 6'), 'b.toml', {});
    expect(config.pkcs11.worker_threads).toBe(6);
    expect(config.pkcs11.worker_threads_adaptive).toBe(false);
    const plan = planWorkers({ ...config, server: { ...config.server, workers: 2 } }, 4);
    expect(plan.shares.map((s) => [s.threads, s.adaptCores])).toEqual([
      [3, undefined],
      [3, undefined],
    ]);
    expect(engineOptions(config, plan.shares[1]!)).toMatchObject({ threads: 3, adaptCores: undefined });
  });
});
