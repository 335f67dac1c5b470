/**
 * Experiment (not a regression figure): the machine's thread wake-up latency
 * (bench/experiments/wakeup.c). One thread wakes another through an eventfd once every
 * `--gap-us` (default 555 µs, the spacing of 1,800 requests/s), the way the proxy's event
 * loop wakes an HSM thread and is woken back: the floor under any design with a thread
 * hand-off. Measured with the threads where the scheduler puts them, pinned to two vCPUs,
 * and pinned to one.
 *
 *   npm run build:ts && node dist/bench/experiments/wakeup.js [--count 3000] [--gap-us 555]
 */
import { execFile } from 'node:child_process';
import { parseArgs } from '../lib/args.js';
import { compileBenchC } from '../lib/cc.js';

type WakeupMode = 'any' | 'cross' | 'same';

interface WakeupLatency {
  mode: WakeupMode;
  /** Wake-ups measured. */
  n: number;
  /** Microseconds from the eventfd write to the sleeper running. */
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
}

const PLACES: Record<WakeupMode, string> = {
  any: 'threads where the scheduler puts them',
  cross: 'across two vCPUs',
  same: 'both on one vCPU',
};

const args = parseArgs('node dist/bench/experiments/wakeup.js [options]', {
  count: { type: 'number', help: 'wake-ups per mode', default: 3000 },
  'gap-us': { type: 'number', help: 'microseconds between two wake-ups', default: 555 },
});

/** One measurement of `mode`, or why the machine cannot set it up (one CPU). */
function measure(binary: string, mode: WakeupMode, count: number, gapUs: number): Promise<WakeupLatency | { skipped: string }> {
  return new Promise((resolve, reject) => {
    execFile(binary, [mode, String(count), String(gapUs)], { timeout: 30_000 + (count * gapUs) / 500 }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`wakeup ${mode}: ${stderr.trim() || err.message}`));
        return;
      }
      resolve(JSON.parse(stdout.trim()) as WakeupLatency | { skipped: string });
    });
  });
}

async function main(): Promise<void> {
  if (!Number.isInteger(args.count) || args.count < 1 || !Number.isInteger(args['gap-us']) || args['gap-us'] < 1) {
    throw new Error('--count and --gap-us must be positive integers');
  }
  const c = compileBenchC('experiments/wakeup');
  if ('error' in c) throw new Error(`cannot compile bench/experiments/wakeup.c: ${c.error}`);
  for (const mode of ['any', 'cross', 'same'] as const) {
    const w = await measure(c.binary, mode, args.count, args['gap-us']);
    const what = `thread wake-up, one every ${args['gap-us']} µs, ${PLACES[mode]}`;
    process.stdout.write(
      'skipped' in w
        ? `${what}: skipped (${w.skipped})\n`
        : `${what}: p50 ${w.p50.toFixed(0)} p99 ${w.p99.toFixed(0)} p99.9 ${w.p999.toFixed(0)} max ${w.max.toFixed(0)} µs (${w.n} wake-ups)\n`,
    );
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`wakeup: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
