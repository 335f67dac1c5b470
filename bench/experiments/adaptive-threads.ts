/**
 * Experiment (not a regression figure): the default HSM thread count (worker_threads unset: the
 * engine adapts, native/workers.cc) against fixed counts, closed loop through the addon (no HTTP),
 * for two HSMs in the same run: SoftHSM2 directly (CPU-bound on the same cores) and SoftHSM2
 * behind the fault module with `delay * 1` (a 1 ms sleep before every call: a blocking network
 * HSM). Encrypt, random IV, key copies off, pool 30 (the seed's). Each setting warms up first, so
 * the adaptive engine has made its decisions; an untimed run warms the process up per HSM, then
 * the default runs first and last (their mean is compared with the best fixed setting).
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
  const cores = availableParallelism();
  const kinds = [
    { name: 'softhsm2', modulePath: token.modulePath },
    { name: 'delay*1ms', modulePath: FAULTY },
  ];
  const settings: { label: string; threads: number; adaptCores?: number }[] = [
    { label: 'warm-up', threads: 2 },
    { label: 'default', threads: POOL, adaptCores: cores },
    ...FIXED.map((t) => ({ label: `fixed ${t}`, threads: t })),
    { label: 'default', threads: POOL, adaptCores: cores },
  ];
  try {
    for (const kind of kinds) {
      const rows: { label: string; rps: number }[] = [];
      for (const s of settings) {
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
          rows.push({ label: s.label, rps: done / seconds });
        } finally {
          await engine.close();
        }
      }
      const fixed = rows.filter((r) => r.label.startsWith('fixed'));
      const best = fixed.reduce((a, b) => (b.rps > a.rps ? b : a));
      const defaults = rows.filter((r) => r.label === 'default');
      const mean = defaults.reduce((a, r) => a + r.rps, 0) / defaults.length;
      console.log(`${kind.name}: ${clients} clients, pool ${POOL}, ${cores} CPUs, ${seconds} s per setting`);
      for (const r of rows.filter((x) => x.label !== 'warm-up'))
        console.log(
          `  ${r.label.padEnd(9)} ${r.rps.toFixed(0).padStart(7)} req/s  ${((100 * r.rps) / best.rps).toFixed(1)} % of best fixed`,
        );
      console.log(`  best fixed: ${best.label}; default (mean of 2): ${mean.toFixed(0)} req/s, ${((100 * mean) / best.rps).toFixed(1)} %`);
    }
  } finally {
    token.remove();
  }
}

await main();
