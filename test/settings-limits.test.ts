/**
 * One set of bounds for [pkcs11]: what check-config accepts, the engine takes. The bounds live in
 * native/limits.h; the addon checks its options against them and exports them (`limits`), and
 * src/config.ts reads that export. Each engine-bound key at its smallest and largest accepted value
 * (and above the largest, where the file's value is lowered with a warning) opens a real engine on a
 * real SoftHSM2 token; one past the bound is refused by both the settings reader and the addon.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, MAX_OPERATION_TIMEOUT_MILLI, parseConfig, type LoadedConfig } from '../src/config.js';
import { settingsToml, type SettingsSpec } from '../src/dev/settings-toml.js';
import { loadAddon, type EngineOptions } from '../src/hsm/addon.js';
import { Hsm } from '../src/hsm/hsm.js';
import { engineOptions } from '../src/workers/serving.js';
import { planWorkers } from '../src/workers/split.js';
import { makeToken, type TestToken } from './helpers/softhsm.js';

const { Engine, limits } = loadAddon();
let token: TestToken;

beforeAll(() => {
  token = makeToken('xks-limits');
  process.env.SOFTHSM2_CONF = token.confPath;
});
afterAll(() => token?.cleanup());

type Pkcs11Spec = SettingsSpec['pkcs11'];

function load(p: Partial<Pkcs11Spec>, workers?: number): LoadedConfig {
  const spec: SettingsSpec = {
    port: 0,
    workers,
    region: 'us-east-1',
    service: 'kms-xks-proxy',
    tracing: { stdout: false, level: 'INFO', directory: 'logs', rotation: 'NEVER' },
    stores: [
      { prefix: '', accessKeyId: 'AKIA4GBY3I6JCE5M2HPM', secretAccessKey: '1234567890123456789012345678901234567890123=', keys: ['k1'] },
    ],
    pkcs11: { pin: token.pin, modulePath: token.modulePath, poolMaxSize: 2, poolTimeoutMs: 100, ...p },
  };
  return parseConfig(settingsToml(spec), 'settings.toml', {});
}

function refusal(p: Partial<Pkcs11Spec>): string {
  try {
    load(p);
  } catch (e) {
    if (e instanceof ConfigError) return e.message;
    throw e;
  }
  throw new Error('expected a ConfigError');
}

/** Opens (logs in) and closes every event loop's engine of the config, as start-up would. */
async function openAll(loaded: LoadedConfig): Promise<EngineOptions[]> {
  const plan = planWorkers(loaded.config, 1);
  const used: EngineOptions[] = [];
  for (const share of plan.shares) {
    const options = engineOptions(loaded.config, share);
    const hsm = await Hsm.open(options);
    await hsm.close();
    used.push(options);
  }
  return used;
}

describe('[pkcs11] bounds are the engine bounds', () => {
  it('the addon exports its bounds, frozen', () => {
    expect(Object.keys(limits).sort()).toEqual(['keyCheckMs', 'operationTimeoutMs', 'poolMaxSize', 'poolTimeoutMs', 'threads']);
    expect(Object.isFrozen(limits)).toBe(true);
    for (const r of Object.values(limits)) {
      expect(Object.isFrozen(r)).toBe(true);
      expect(Number.isInteger(r.min) && Number.isInteger(r.max) && r.min <= r.max).toBe(true);
    }
  });

  it('smallest accepted values open an engine', async () => {
    const loaded = load({
      poolMaxSize: limits.poolMaxSize.min,
      poolTimeoutMs: limits.poolTimeoutMs.min,
      workerThreads: limits.threads.min,
      operationTimeoutMs: limits.operationTimeoutMs.min,
      keyCheckMs: limits.keyCheckMs.min,
      keyCopies: true,
    });
    const [o] = await openAll(loaded);
    expect(o).toMatchObject({ poolMaxSize: 1, poolTimeoutMs: 0, threads: 1, operationTimeoutMs: 0, keyCheckMs: 1 });
  });

  it('largest accepted values open an engine', async () => {
    const loaded = load({
      poolMaxSize: limits.poolMaxSize.max,
      poolTimeoutMs: limits.poolTimeoutMs.max,
      workerThreads: limits.threads.max,
      operationTimeoutMs: MAX_OPERATION_TIMEOUT_MILLI,
      keyCheckMs: limits.keyCheckMs.max,
      keyCopies: true,
    });
    expect(loaded.warnings.filter((w) => /above/.test(w))).toEqual([]);
    const [o] = await openAll(loaded);
    expect(o).toMatchObject({
      poolMaxSize: limits.poolMaxSize.max,
      poolTimeoutMs: limits.poolTimeoutMs.max,
      threads: limits.threads.max,
      operationTimeoutMs: MAX_OPERATION_TIMEOUT_MILLI,
      keyCheckMs: limits.keyCheckMs.max,
    });
  });

  it('a pool size or pool wait above the engine bound is lowered to it with a warning, and opens', async () => {
    const loaded = load({ poolMaxSize: limits.poolMaxSize.max + 1, poolTimeoutMs: 2 ** 40, workerThreads: 4 });
    expect(loaded.warnings.filter((w) => w.includes('pkcs11.'))).toEqual([
      `settings.toml: pkcs11.session_pool_max_size: ${limits.poolMaxSize.max + 1} is above ${limits.poolMaxSize.max}, the most this proxy supports: ${limits.poolMaxSize.max} is used`,
      `settings.toml: pkcs11.session_pool_timeout_milli: ${2 ** 40} is above ${limits.poolTimeoutMs.max}, the most this proxy supports: ${limits.poolTimeoutMs.max} is used`,
    ]);
    const [o] = await openAll(loaded);
    expect(o).toMatchObject({ poolMaxSize: limits.poolMaxSize.max, poolTimeoutMs: limits.poolTimeoutMs.max });
  });

  it('several event loops: every share of the largest pool and thread counts opens', async () => {
    const loaded = load({ poolMaxSize: limits.poolMaxSize.max, workerThreads: limits.threads.max }, 3);
    const plan = planWorkers(loaded.config, 1);
    expect(plan.shares.reduce((n, s) => n + s.threads, 0)).toBe(limits.threads.max);
    expect(plan.shares.reduce((n, s) => n + s.poolMaxSize, 0)).toBe(limits.poolMaxSize.max);
    expect(await openAll(loaded)).toHaveLength(3);
  });

  it('one past a bound: refused by the settings reader, and by the addon too', () => {
    const engine = (o: Partial<EngineOptions>): unknown =>
      new Engine({
        modulePath: token.modulePath,
        userPin: token.pin,
        poolMaxSize: 1,
        poolTimeoutMs: 0,
        eagerClose: false,
        threads: 1,
        ivMode: 'random',
        ...o,
      });
    expect(refusal({ workerThreads: limits.threads.max + 1 })).toBe(
      `settings.toml: pkcs11.worker_threads: expected an integer in ${limits.threads.min}..${limits.threads.max}, got ${limits.threads.max + 1}`,
    );
    expect(refusal({ workerThreads: limits.threads.min - 1 })).toMatch(/pkcs11\.worker_threads: expected an integer in 1\.\.256, got 0$/);
    expect(() => engine({ threads: limits.threads.max + 1 })).toThrow(TypeError);
    expect(refusal({ keyCheckMs: limits.keyCheckMs.max + 1 })).toBe(
      `settings.toml: pkcs11.session_key_check_milli: expected an integer in ${limits.keyCheckMs.min}..${limits.keyCheckMs.max}, got ${limits.keyCheckMs.max + 1}`,
    );
    expect(refusal({ keyCheckMs: 0 })).toMatch(/pkcs11\.session_key_check_milli: expected an integer in 1\.\.3600000, got 0$/);
    expect(() => engine({ keyCheckMs: limits.keyCheckMs.max + 1 })).toThrow(TypeError);
    expect(() => engine({ keyCheckMs: limits.keyCheckMs.min - 1 })).toThrow(TypeError);
    expect(refusal({ poolMaxSize: 0 })).toBe('settings.toml: pkcs11.session_pool_max_size: expected a positive integer, got 0');
    expect(() => engine({ poolMaxSize: limits.poolMaxSize.max + 1 })).toThrow(TypeError);
    expect(() => engine({ poolTimeoutMs: limits.poolTimeoutMs.max + 1 })).toThrow(TypeError);
    // operation_timeout_milli: the file allows at most 60 s (KMS waits 250 ms), within the engine's bound.
    expect(refusal({ operationTimeoutMs: MAX_OPERATION_TIMEOUT_MILLI + 1 })).toBe(
      'settings.toml: pkcs11.operation_timeout_milli: expected an integer in 0..60000 (0 = no deadline), got 60001',
    );
    expect(MAX_OPERATION_TIMEOUT_MILLI).toBeLessThanOrEqual(limits.operationTimeoutMs.max);
  });
});
