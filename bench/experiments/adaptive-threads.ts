/**
 * Experiment (not a regression figure): the default HSM thread count against fixed counts,
 * closed loop through the addon, for SoftHSM2 directly and behind the network model (`rtt`
 * ms per call). The measurement is bench/lib/adaptive.ts, which `npm run bench` also runs
 * (full runs); this lets it run alone with other durations.
 *
 *   npm run build && node dist/bench/experiments/adaptive-threads.js [--seconds 2] [--clients 64] [--rtt 1]
 */
import { adaptiveVsFixed, type AdaptiveResult } from '../lib/adaptive.js';
import { parseArgs } from '../lib/args.js';
import { NetModel } from '../lib/netmodel.js';
import { makeToken } from '../lib/token.js';

function print(r: AdaptiveResult, rounds: number): void {
  console.log(
    `${r.hsm}: ${r.clients} clients, pool ${r.pool}, ${r.cpus} CPUs (adaptCores ${r.adaptCores}), median of ${rounds} rounds x ${r.seconds} s`,
  );
  const best = r.rows.find((x) => x.label === r.bestFixed)!.rps;
  for (const x of r.rows)
    console.log(`  ${x.label.padEnd(9)} ${x.rps.toFixed(0).padStart(7)} req/s  ${((100 * x.rps) / best).toFixed(1)} % of best fixed`);
  console.log(`  best fixed: ${r.bestFixed}`);
}

async function main(): Promise<void> {
  const args = parseArgs('node dist/bench/experiments/adaptive-threads.js [options]', {
    seconds: { type: 'number', help: 'measured seconds per setting', default: 2 },
    warmup: { type: 'number', help: 'warm-up seconds per setting', default: 0.6 },
    clients: { type: 'number', help: 'closed-loop callers', default: 64 },
    rounds: { type: 'number', help: 'interleaved rounds (median reported)', default: 3 },
    rtt: { type: 'number', help: 'ms per modelled network call', default: 1 },
  });
  const token = await makeToken();
  try {
    const model = new NetModel(token, 'adaptive');
    model.useInThisProcess();
    model.setRtt(args.rtt);
    const common = { pin: token.pin, seconds: args.seconds, warmupMs: args.warmup * 1000, clients: args.clients, rounds: args.rounds };
    print(await adaptiveVsFixed({ ...common, hsm: 'softhsm2', modulePath: token.modulePath }), args.rounds);
    print(await adaptiveVsFixed({ ...common, hsm: `rtt ${args.rtt} ms`, modulePath: model.modulePath }), args.rounds);
  } finally {
    token.remove();
  }
}

await main();
