/**
 * Experiment (not a regression figure): the default HSM thread count (worker_threads unset: the
 * engine adapts, native/workers.cc) against fixed counts, closed loop through the addon (no HTTP),
 * for two HSMs in the same run: SoftHSM2 directly (CPU-bound on the same cores) and SoftHSM2
 * behind the fault module with `delay * 1` (a 1 ms sleep before every call: a blocking network
 * HSM). Encrypt, random IV, key copies off, pool 30 (the seed's). Each setting warms up first, so
 * the adaptive engine has made its decisions; an untimed run warms the process up per HSM. The
 * settings run in `--rounds` interleaved rounds and each reports its median, so that the load of
 * a shared machine drifting during the run biases no setting.
 *
 *   npm run build && node dist/bench/experiments/adaptive-threads.js [--seconds 2] [--clients 64]
 */
import { existsSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadAddon, type EngineOptions, type NativeEngine } from '../../src/hsm/addon.js';
import { parseArgs } from '../lib/args.js';
import { KEY_LABEL, makeToken } from '../lib/token.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const FAULTY = path.join(ROOT, 'build/Release/faulty_pkcs11.node');
const POOL = 30;
const FIXED = [1, 2, 3, 4, 8, 16, 30];

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

async function main(): Promise<void> {
  const args = parseArgs('node dist/bench/experiments/adaptive-threads.js [options]', {
    seconds: { type: 'number', help: 'measured seconds per setting', default: 2 },
    warmup: { type: 'number', help: 'warm-up seconds per setting', default: 0.6 },
    clients: { type: 'number', help: 'closed-loop callers', default: 64 },
    rounds: { type: 'number', help: 'interleaved rounds (median reported)', default: 3 },
  });
  const { seconds, clients } = args;
  const warmupMs = args.warmup * 1000;
  if (!existsSync(FAULTY)) throw new Error(`${FAULTY} is missing: run npm run build:native`);
  const token = await makeToken();
  const control = path.join(token.dir, 'faults.control');
  writeFileSync(control, 'delay * 1\n');
  process.env.FAULTY_PKCS11_TARGET = token.modulePath;
  process.env.FAULTY_PKCS11_CONTROL = control;
  process.env.FAULTY_PKCS11_STATUS = path.join(token.dir, 'faults.status');
  const { Engine } = loadAddon();
  const cpus = availableParallelism();
  const cores = Math.max(1, cpus - 1); // what src/workers/split.ts gives one event loop
  const kinds = [
    { name: 'softhsm2', modulePath: token.modulePath },
    { name: 'delay*1ms', modulePath: FAULTY },
  ];
  const settings: { label: string; threads: number; adaptCores?: number }[] = [
    { label: 'warm-up', threads: 2 },
    { label: 'default', threads: POOL, adaptCores: cores },
    ...FIXED.map((t) => ({ label: `fixed ${t}`, threads: t })),
  ];
  const median = (xs: number[]): number => {
    const v = [...xs].sort((a, b) => a - b);
    return v.length % 2 === 1 ? v[(v.length - 1) / 2]! : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2;
  };
  try {
    for (const kind of kinds) {
      const runs = new Map<string, number[]>();
      for (let round = 0; round < args.rounds; round++) {
        for (const s of settings) {
          if (s.label === 'warm-up' && round > 0) continue;
          const options: EngineOptions = {
            modulePath: kind.modulePath,
            userPin: token.pin,
            poolMaxSize: POOL,
            poolTimeoutMs: 5000,
            eagerClose: false,
            threads: s.threads,
            ivMode: 'random',
            keyCopies: false,
            ...(s.adaptCores !== undefined ? { adaptCores: s.adaptCores } : {}),
          };
          const engine = new Engine(options);
          await engine.open();
          try {
            await closedLoop(engine, clients, warmupMs);
            const done = await closedLoop(engine, clients, seconds * 1000);
            runs.set(s.label, [...(runs.get(s.label) ?? []), done / seconds]);
          } finally {
            await engine.close();
          }
        }
      }
      const rows = settings.filter((s) => s.label !== 'warm-up').map((s) => ({ label: s.label, rps: median(runs.get(s.label)!) }));
      const best = rows.filter((r) => r.label !== 'default').reduce((a, b) => (b.rps > a.rps ? b : a));
      console.log(
        `${kind.name}: ${clients} clients, pool ${POOL}, ${cpus} CPUs (adaptCores ${cores}), median of ${args.rounds} rounds x ${seconds} s`,
      );
      for (const r of rows.filter((x) => x.label !== 'warm-up'))
        console.log(
          `  ${r.label.padEnd(9)} ${r.rps.toFixed(0).padStart(7)} req/s  ${((100 * r.rps) / best.rps).toFixed(1)} % of best fixed`,
        );
      console.log(`  best fixed: ${best.label}`);
    }
  } finally {
    token.remove();
  }
}

await main();
