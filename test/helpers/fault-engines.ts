/**
 * A test file's engines behind the fault module: `useFaultyEngines` registers the file's beforeAll
 * (a fresh SoftHSM2 token, the fault module in front of it, the file's keys made by a set-up
 * engine) and afterAll (faults cleared, every engine opened through it closed, the token removed).
 * Also what tests do to the token from another process, as an HSM administrator would.
 */
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll } from 'vitest';
import { loadAddon, type EngineOptions, type NativeEngine } from '../../src/hsm/addon.js';
import { useFaultyModule, type FaultControl, type FaultStatus } from './faulty.js';
import { makeToken, type TestToken } from './softhsm.js';

const P11ATTR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../build/Release/p11attr');

export interface FaultyEngines {
  /** The real SoftHSM2 token (for other processes: pkcs11-tool, p11attr). */
  readonly base: TestToken;
  /** The same token as the engines see it: modulePath is the fault module. */
  readonly token: TestToken;
  readonly faults: FaultControl;
  /** The file's engine options with `o` over them. */
  options(o?: Partial<EngineOptions>): EngineOptions;
  /** Opens an engine with options(o); closed after the file. */
  open(o?: Partial<EngineOptions>): Promise<NativeEngine>;
  /** Every engine closed after the file: those open() made; push one made otherwise. */
  readonly engines: NativeEngine[];
}

export interface FaultyEnginesSetup {
  /** Token label of the fresh token. */
  label: string;
  /** The file's engine options (modulePath, userPin, eagerClose false and ivMode random are given). */
  defaults: Partial<EngineOptions>;
  /** AES-256 keys (encrypt and decrypt) made before the tests. */
  keys: string[];
  /** Options of the engine that makes the keys, over `defaults`. */
  setupOptions?: Partial<EngineOptions>;
  /** Keep the set-up engine open for the whole file (default: closed once the keys exist). */
  keepSetupEngine?: boolean;
}

export function useFaultyEngines(s: FaultyEnginesSetup): FaultyEngines {
  const { Engine } = loadAddon();
  let base: TestToken | undefined;
  let token: TestToken | undefined;
  let faults: FaultControl | undefined;
  const engines: NativeEngine[] = [];
  const ready = <T>(v: T | undefined): T => {
    if (v === undefined) throw new Error('useFaultyEngines: used before its beforeAll ran');
    return v;
  };
  const fx: FaultyEngines = {
    get base() {
      return ready(base);
    },
    get token() {
      return ready(token);
    },
    get faults() {
      return ready(faults);
    },
    options(o = {}) {
      const t = ready(token);
      return { modulePath: t.modulePath, userPin: t.pin, eagerClose: false, ivMode: 'random', ...s.defaults, ...o } as EngineOptions;
    },
    async open(o = {}) {
      const e = new Engine(fx.options(o));
      engines.push(e);
      await e.open();
      return e;
    },
    engines,
  };
  beforeAll(async () => {
    base = makeToken(s.label);
    ({ token, faults } = useFaultyModule(base));
    const e = await fx.open(s.setupOptions);
    for (const k of s.keys) await e.createKey(k, { encrypt: true, decrypt: true });
    if (!s.keepSetupEngine) await e.close();
  });
  afterAll(async () => {
    faults?.clear();
    for (const e of engines) await e.close();
    base?.cleanup();
  });
  return fx;
}

/** Deletes the token key `label` from another process (pkcs11-tool on the real module). */
export function deleteTokenKey(base: TestToken, label: string): void {
  execFileSync(
    'pkcs11-tool',
    [
      '--module',
      base.modulePath,
      '--token-label',
      base.label,
      '--login',
      '--pin',
      base.pin,
      '--delete-object',
      '--type',
      'secrkey',
      '--label',
      label,
    ],
    { env: { ...process.env, ...base.env }, stdio: 'pipe' },
  );
}

/** Sets CKA_ENCRYPT / CKA_DECRYPT of the token key `label` from another process (native-test/p11attr). */
export function setTokenKeyUsage(base: TestToken, label: string, encrypt: boolean, decrypt: boolean): void {
  execFileSync(P11ATTR, [base.modulePath, base.pin, label, encrypt ? '1' : '0', decrypt ? '1' : '0'], {
    env: { ...process.env, ...base.env },
    stdio: 'pipe',
  });
}

/** The PKCS#11 calls made between two status reads, by function (those that changed). */
export function callDelta(a: FaultStatus, b: FaultStatus): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [fn, n] of Object.entries(b.calls_by_fn)) {
    const d = n - (a.calls_by_fn[fn] ?? 0);
    if (d !== 0) out[fn] = d;
  }
  return out;
}
