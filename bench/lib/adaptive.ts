/**
 * The default HSM thread count (worker_threads unset: the engine adapts, native/workers.cc)
 * against fixed counts, closed loop through the addon (no HTTP), on one HSM: encrypt, random IV,
 * key copies off, the seed's pool of 30. Each setting warms up first, so that the adaptive
 * engine has made its decisions; an untimed setting warms the process up. The settings run in
 * interleaved rounds and each reports its median, so that the load of a shared machine drifting
 * during the run biases no setting. Used by `npm run bench` (full runs) for SoftHSM2 directly
 * and the network model, and by bench/experiments/adaptive-threads.ts.
 */
import { availableParallelism } from 'node:os';
import { loadAddon, type EngineOptions, type NativeEngine } from '../../src/hsm/addon.js';
import { KEY_LABEL } from './token.js';

export const ADAPTIVE_POOL = 30;
export const FIXED_THREADS = [1, 2, 3, 4, 8, 16, 30] as const;
/** The default's target: within this fraction of the best fixed setting. */
export const ADAPTIVE_TOLERANCE = 0.1;

export interface AdaptiveRow {
  label: string;
  /** Fixed worker_threads; undefined: the default (adaptive). */
  threads: number | undefined;
  /** Median over the rounds, requests/s. */
  rps: number;
  /** Every round's figure. */
  rounds: number[];
}

export interface AdaptiveResult {
  /** e.g. "SoftHSM2" or "rtt 1 ms". */
  hsm: string;
  clients: number;
  pool: number;
  cpus: number;
  /** The cores the engine is told it has: what src/workers/split.ts gives one event loop. */
  adaptCores: number;
  seconds: number;
  rows: AdaptiveRow[];
  bestFixed: string;
  /** The default's figure over the best fixed one. */
  defaultOfBest: number;
  met: boolean;
}

export interface AdaptiveOptions {
  hsm: string;
  modulePath: string;
  pin: string;
  seconds: number;
  warmupMs: number;
  clients: number;
  rounds: number;
}

async function closedLoop(engine: NativeEngine, clients: number, ms: number): Promise<number> {
  const end = Date.now() + ms;
  let done = 0;
  const pt = Buffer.alloc(64, 7);
  const aad = Buffer.alloc(0);
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (Date.now() < end) {
        await engine.encrypt(KEY_LABEL, pt, aad);
        done++;
      }
    }),
  );
  return done;
}

const median = (xs: readonly number[]): number => {
  const v = [...xs].sort((a, b) => a - b);
  return v.length % 2 === 1 ? v[(v.length - 1) / 2]! : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2;
};

/** The default and every fixed count on one HSM (SOFTHSM2_CONF and, for the fault module, FAULTY_PKCS11_* set). */
export async function adaptiveVsFixed(o: AdaptiveOptions): Promise<AdaptiveResult> {
  const { Engine } = loadAddon();
  const cpus = availableParallelism();
  const adaptCores = Math.max(1, cpus - 1);
  const settings: { label: string; threads: number | undefined; warmOnly?: boolean }[] = [
    { label: 'warm-up', threads: 2, warmOnly: true },
    { label: 'default', threads: undefined },
    ...FIXED_THREADS.map((t) => ({ label: `fixed ${t}`, threads: t })),
  ];
  const runs = new Map<string, number[]>();
  for (let round = 0; round < o.rounds; round++) {
    for (const s of settings) {
      if (s.warmOnly && round > 0) continue;
      const options: EngineOptions = {
        modulePath: o.modulePath,
        userPin: o.pin,
        poolMaxSize: ADAPTIVE_POOL,
        poolTimeoutMs: 5000,
        eagerClose: false,
        // The default: as many threads as sessions at most, the engine adapts within them.
        threads: s.threads ?? ADAPTIVE_POOL,
        ivMode: 'random',
        keyCopies: false,
        ...(s.threads === undefined ? { adaptCores } : {}),
      };
      const engine = new Engine(options);
      await engine.open();
      try {
        await closedLoop(engine, o.clients, o.warmupMs);
        const done = await closedLoop(engine, o.clients, o.seconds * 1000);
        if (!s.warmOnly) runs.set(s.label, [...(runs.get(s.label) ?? []), done / o.seconds]);
      } finally {
        await engine.close();
      }
    }
  }
  const rows: AdaptiveRow[] = settings
    .filter((s) => !s.warmOnly)
    .map((s) => ({ label: s.label, threads: s.threads, rps: median(runs.get(s.label)!), rounds: runs.get(s.label)! }));
  const best = rows.filter((r) => r.threads !== undefined).reduce((a, b) => (b.rps > a.rps ? b : a));
  const def = rows.find((r) => r.threads === undefined)!;
  const defaultOfBest = def.rps / best.rps;
  return {
    hsm: o.hsm,
    clients: o.clients,
    pool: ADAPTIVE_POOL,
    cpus,
    adaptCores,
    seconds: o.seconds,
    rows,
    bestFixed: best.label,
    defaultOfBest,
    met: defaultOfBest >= 1 - ADAPTIVE_TOLERANCE,
  };
}
