/**
 * `npm run bench [-- --quick] [-- --compare FILE] [-- --profile]`
 *
 * 1. micro-benchmarks (tinybench) of the hot-path pieces, in this process;
 * 2. ceilings: the addon's raw encrypt rate (no HTTP), an empty uWebSockets.js
 *    handler under the same load generator, wrk against that handler;
 * 3. the real proxy (node bin/xks-proxy.js) on a throw-away SoftHSM2 token, driven
 *    with pre-signed requests: closed-loop maximum throughput and open-loop fixed
 *    rates (latency from each request's due time).
 * Prints a table, writes bench/results/latest.json and a timestamped copy.
 */
import os from 'node:os';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { compareMetrics, type Comparison, type Metric } from './compare.js';
import {
  CLOSED_CONNECTIONS,
  FULL,
  httpCeilings,
  OPEN_CONNECTIONS,
  OPS,
  proxyRuns,
  QUICK,
  RATES,
  scalingRuns,
  type HttpCeilings,
  type OpKey,
  type OpResults,
  type ScalingPoint,
} from './e2e.js';
import { topSelfTime, type SelfTime } from './lib/cpuprofile.js';
import { buildCGenerator, CGenerator, type LoadResult } from './lib/loadgen.js';
import { parseArgs } from './lib/args.js';
import { describeMachine, type Machine } from './lib/machine.js';
import { ROOT } from './lib/procs.js';
import { encryptBodies, signAll } from './lib/requests.js';
import { makeSigner } from './lib/sign.js';
import { makeToken, openEngine } from './lib/token.js';
import { addonRate, runMicro, type MicroRow } from './micro.js';
import { auditReport, auditRuns, type AuditResults } from './audit.js';
import type { NativeEngine } from '../src/hsm/addon.js';
import { cv } from './lib/stats.js';
import { adaptiveVsFixed, ADAPTIVE_TOLERANCE, type AdaptiveResult } from './lib/adaptive.js';
import { NetModel } from './lib/netmodel.js';
import { NET_FULL, NET_QUICK, networkRuns, P50_SLACK_MS, THROUGHPUT_SHARE, type BackgroundHalf, type NetworkResults } from './network.js';

interface Args {
  quick: boolean;
  compare: string | undefined;
  profile: boolean;
  threads: number;
  pool: number;
  level: string;
  out: string;
  workers: number;
  hsmRtt: number;
}

const USAGE = 'npm run bench -- [options]';
const OPTIONS = {
  quick: { type: 'flag', help: 'short smoke (< 30 s); fails on a wrong answer or a broken connection' },
  compare: { type: 'string', value: 'FILE', help: 'flag figures slower than in this result file beyond the noise band' },
  profile: { type: 'flag', help: 'run the proxy under node --cpu-prof and print its top self-time functions' },
  threads: { type: 'number', help: 'proxy [pkcs11] worker_threads', default: 2 },
  pool: { type: 'number', help: 'proxy [pkcs11] session_pool_max_size', default: 8 },
  workers: {
    type: 'number',
    help: 'proxy [server] workers, event loops (default: all cores, as the proxy); the full run also measures 1 and 2',
  },
  'log-level': { type: 'string', value: 'LEVEL', help: 'proxy [tracing] level, one line per request to a file', default: 'INFO' },
  out: { type: 'string', value: 'DIR', help: 'directory for the result files (default bench/results)' },
  'hsm-rtt': {
    type: 'number',
    help: 'ms per PKCS#11 call of the network-HSM model (the fault module in front of SoftHSM2) in its rows',
    default: 1,
  },
} as const;

function benchArgs(): Args {
  const a = parseArgs(USAGE, OPTIONS);
  for (const [name, v] of [
    ['threads', a.threads],
    ['pool', a.pool],
    ['workers', a.workers],
  ] as const) {
    if (v !== undefined && (!Number.isInteger(v) || v < 1)) throw new Error(`--${name} needs a positive integer, got ${v}`);
  }
  if (!(a['hsm-rtt'] > 0 && a['hsm-rtt'] <= 100)) throw new Error(`--hsm-rtt needs a number of ms in (0, 100], got ${a['hsm-rtt']}`);
  return {
    quick: a.quick,
    compare: a.compare,
    profile: a.profile,
    threads: a.threads,
    pool: a.pool,
    level: a['log-level'],
    out: a.out === undefined ? path.join(ROOT, 'bench', 'results') : path.resolve(a.out),
    workers: a.workers ?? os.availableParallelism(),
    hsmRtt: a['hsm-rtt'],
  };
}

export interface BenchResult {
  schema: 1;
  startedAt: string;
  durationS: number;
  quick: boolean;
  profiled: boolean;
  machine: Machine;
  config: {
    workerThreads: number;
    poolMaxSize: number;
    logLevel: string;
    closedConnections: number;
    openConnections: number;
    requestPool: number;
    workers?: number;
  };
  micro: MicroRow[];
  ceilings: {
    /** With session key copies, as the proxy runs by default. */
    addonEncrypt32OneThread: number;
    addonEncrypt32ProxyThreads: number;
    /** One thread on the token key itself (session_key_copies = false). */
    addonEncrypt32OneThreadTokenKey?: number;
    http: HttpCeilings;
  };
  e2e: Record<OpKey, OpResults>;
  /** Closed-loop encrypt 32 B by [server] workers and session_key_copies (full runs only). */
  scaling?: ScalingPoint[];
  profile?: { file: string; totalMs: number; idlePct: number; top: SelfTime[] };
  /** The network-HSM model's rows (issue 13; not in --profile runs). */
  network?: NetworkResults;
  /** The default HSM thread count against fixed counts, SoftHSM2 and the model (full runs). */
  adaptive?: AdaptiveResult[];
  /** Encrypt 32 B with the audit trail off, batched, before-response, before-response on tmpfs (issue 14). */
  audit?: AuditResults;
  metrics: Metric[];
}

const log = (s: string): void => {
  process.stderr.write(`${s}\n`);
};

const f0 = (n: number): string => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '-');
const f2 = (n: number): string => (Number.isFinite(n) ? n.toFixed(n >= 100 ? 0 : n >= 10 ? 1 : 2) : '-');
const ms = (n: number): string => (Number.isFinite(n) ? (n < 1 ? n.toFixed(3) : n < 10 ? n.toFixed(2) : n.toFixed(1)) : '-');
/** req/s, p50, p99, p99.9, max (ms) and errors of one load run, as table cells. */
const loadCells = (r: LoadResult): string[] => [
  f0(r.throughput),
  ms(r.latencyMs.p50),
  ms(r.latencyMs.p99),
  ms(r.latencyMs.p999),
  ms(r.latencyMs.max),
  String(r.errors),
];
const pct = (a: number, b: number): string => (b > 0 && Number.isFinite(a) ? `${((100 * a) / b).toFixed(0)}%` : '-');

function table(rows: string[][], header: string[]): string {
  const all = [header, ...rows];
  const w = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]): string => r.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
  return [line(header), w.map((x) => '-'.repeat(x)).join('  '), ...rows.map(line)].join('\n');
}

function metricsOf(r: Omit<BenchResult, 'metrics'>): Metric[] {
  const m: Metric[] = [];
  for (const row of r.micro) {
    m.push({
      name: `micro: ${row.name}`,
      value: row.opsPerSec,
      unit: 'ops/s',
      better: 'higher',
      noise: Math.max(0.1, (3 * row.rme) / 100),
      absNoise: 0,
    });
  }
  m.push({
    name: 'ceiling: addon encrypt 32 B, 1 thread',
    value: r.ceilings.addonEncrypt32OneThread,
    unit: 'req/s',
    better: 'higher',
    noise: 0.1,
    absNoise: 0,
  });
  m.push({
    name: `ceiling: addon encrypt 32 B, ${r.config.workerThreads} threads`,
    value: r.ceilings.addonEncrypt32ProxyThreads,
    unit: 'req/s',
    better: 'higher',
    noise: 0.1,
    absNoise: 0,
  });
  const loadMetrics = (prefix: string, x: { closed: LoadResult; open: Record<string, LoadResult> }): void => {
    m.push({
      name: `${prefix} closed-loop throughput`,
      value: x.closed.throughput,
      unit: 'req/s',
      better: 'higher',
      noise: Math.max(0.1, 2 * cv(x.closed.perSecond)),
      absNoise: 0,
    });
    m.push({ name: `${prefix} closed-loop errors`, value: x.closed.errors, unit: '', better: 'lower', noise: 0, absNoise: 0 });
    for (const [rate, o] of Object.entries(x.open)) {
      m.push({ name: `${prefix} @${rate}/s p50`, value: o.latencyMs.p50, unit: 'ms', better: 'lower', noise: 0.15, absNoise: 0.05 });
      m.push({ name: `${prefix} @${rate}/s p99`, value: o.latencyMs.p99, unit: 'ms', better: 'lower', noise: 0.25, absNoise: 0.1 });
      m.push({ name: `${prefix} @${rate}/s p99.9`, value: o.latencyMs.p999, unit: 'ms', better: 'lower', noise: 0.5, absNoise: 0.25 });
      m.push({
        name: `${prefix} @${rate}/s max`,
        value: o.latencyMs.max,
        unit: 'ms',
        better: 'lower',
        noise: 1,
        absNoise: 1,
        informational: true,
      });
      m.push({ name: `${prefix} @${rate}/s errors`, value: o.errors, unit: '', better: 'lower', noise: 0, absNoise: 0 });
    }
  };
  loadMetrics('empty uWS:', r.ceilings.http);
  for (const op of OPS) {
    const x = r.e2e[op.key];
    if (x) loadMetrics(`proxy ${op.key}:`, x);
  }
  for (const p of r.scaling ?? []) {
    m.push({
      name: `scaling: encrypt32 closed-loop, workers = ${p.workers}${p.keyCopies === false ? ', no key copies' : ''}`,
      value: p.closed.throughput,
      unit: 'req/s',
      better: 'higher',
      noise: Math.max(0.1, 2 * cv(p.closed.perSecond)),
      absNoise: 0,
    });
  }
  if (r.network) {
    const n = r.network;
    for (const op of n.ops) {
      const p = `network rtt ${n.rttMs} ms ${op.key}:`;
      m.push({ name: `${p} round trips`, value: op.roundTrips, unit: '', better: 'lower', noise: 0, absNoise: 0.02 });
      m.push({ name: `${p} sequential p50`, value: op.sequential.latencyMs.p50, unit: 'ms', better: 'lower', noise: 0.15, absNoise: 0.1 });
      m.push({ name: `${p} sequential p99`, value: op.sequential.latencyMs.p99, unit: 'ms', better: 'lower', noise: 0.25, absNoise: 0.25 });
      m.push({
        name: `${p} closed-loop throughput`,
        value: op.closed.throughput,
        unit: 'req/s',
        better: 'higher',
        noise: Math.max(0.1, 2 * cv(op.closed.perSecond)),
        absNoise: 0,
      });
      m.push({
        name: `${p} errors`,
        value: op.sequential.errors + op.sequentialRtt0.errors + op.closed.errors,
        unit: '',
        better: 'lower',
        noise: 0,
        absNoise: 0,
      });
    }
    for (const [k, b] of Object.entries(n.background)) {
      m.push({
        name: `network rtt ${n.rttMs} ms background ${k}: sequential encrypt p99`,
        value: b.sequential.latencyMs.p99,
        unit: 'ms',
        better: 'lower',
        noise: 0.25,
        absNoise: 0.25,
      });
    }
  }
  for (const a of r.adaptive ?? []) {
    m.push({
      name: `adaptive threads ${a.hsm}: default / best fixed`,
      value: a.defaultOfBest,
      unit: '',
      better: 'higher',
      noise: 0.1,
      absNoise: 0,
    });
  }
  return m;
}

const metOr = (ok: boolean): string => (ok ? 'met' : 'MISSED');

/** The network-HSM model's rows (issue 13), one per operation, and the background pair. */
function networkReport(n: NetworkResults): string[] {
  const out: string[] = [];
  out.push(
    `Network HSM model: the fault module in front of SoftHSM2, rtt ${n.rttMs} ms per PKCS#11 call (measured ${ms(n.callCost.p50)} ms per modelled call here, p99 ${ms(n.callCost.p99)}), pool ${n.pool}, worker_threads unset (adaptive); sequential = 1 connection, closed = ${n.connections} connections (ms, client side)`,
  );
  out.push(
    table(
      n.ops.map((o) => [
        o.label,
        o.roundTrips.toFixed(2),
        ms(o.sequential.latencyMs.p50),
        ms(o.sequential.latencyMs.p99),
        ms(o.logged.microsP50),
        ms(o.sequentialRtt0.latencyMs.p50),
        ms(o.floorMs),
        `${o.sequential.latencyMs.p50 - o.floorMs >= 0 ? '+' : ''}${ms(o.sequential.latencyMs.p50 - o.floorMs)}`,
        f0(o.closed.throughput),
        Number.isFinite(o.ceiling) ? f0(o.ceiling) : 'none',
        f0(o.softhsm.throughput),
        pct(o.closed.throughput, Math.min(o.ceiling, o.softhsm.throughput)),
        `${f0(o.closed.proxyCpuUsPerRequest)}/${f0(o.softhsm.proxyCpuUsPerRequest)}`,
        `${pct(o.closed.machineBusy, 1)}/${pct(o.softhsm.machineBusy, 1)}`,
        String(o.sequential.errors + o.sequentialRtt0.errors + o.closed.errors + o.softhsm.errors),
        `p50 ${metOr(o.p50Met)}, req/s ${metOr(o.throughputMet)}, errors ${metOr(o.errorsMet)}`,
      ]),
      [
        '',
        'trips',
        'p50',
        'p99',
        'log p50',
        'p50 rtt0',
        'floor',
        'p50-floor',
        'req/s',
        'ceiling',
        'SoftHSM2',
        'of min',
        'cpu µs/req',
        'busy',
        'err',
        'targets',
      ],
    ),
  );
  out.push(
    `(trips: round trips per request over the sequential run, background work included; log p50: the proxy's own micros; floor: p50 rtt0 + trips x one modelled call; targets: p50 <= floor + ${P50_SLACK_MS} ms, req/s >= ${100 * THROUGHPUT_SHARE}% of min(ceiling ${n.pool} / (trips x rtt), SoftHSM2 directly with the same settings), no errors; cpu µs/req: the proxy's CPU per request in the closed loop, model/SoftHSM2; busy: the machine's CPU not idle meanwhile, all processes)`,
  );
  const bg = (name: string, b: BackgroundHalf): string[] => [
    name,
    ms(b.sequential.latencyMs.p50),
    ms(b.sequential.latencyMs.p99),
    ms(b.sequential.latencyMs.p999),
    ms(b.sequential.latencyMs.max),
    b.roundTrips.toFixed(3),
    f0(b.closed.throughput),
    ms(b.closed.latencyMs.p99),
    b.idleRoundTripsPerS.toFixed(1),
    String(b.maxOpenSessions),
    String(b.sequential.errors + b.closed.errors),
  ];
  const w = n.background.with;
  const wo = n.background.without;
  out.push('');
  out.push(`Background HSM work on the model (Encrypt): with = ${w.what}; without = ${wo.what}`);
  out.push(
    table(
      [bg('without', wo), bg('with', w)],
      ['', 'seq p50', 'seq p99', 'seq p99.9', 'seq max', 'seq trips', 'closed req/s', 'closed p99', 'idle trips/s', 'max sessions', 'err'],
    ),
  );
  const dp99 = w.sequential.latencyMs.p99 - wo.sequential.latencyMs.p99;
  out.push(
    `background work: sequential p99 ${dp99 >= 0 ? '+' : ''}${ms(dp99)} ms, closed loop ${pct(w.closed.throughput, wo.closed.throughput)} of without: ${metOr(dp99 <= P50_SLACK_MS && w.closed.throughput >= THROUGHPUT_SHARE * wo.closed.throughput)} (p99 within ${P50_SLACK_MS} ms, throughput >= ${100 * THROUGHPUT_SHARE}%)`,
  );
  return out;
}

function adaptiveReport(rs: AdaptiveResult[]): string[] {
  const out: string[] = [];
  const r0 = rs[0]!;
  out.push(
    `HSM threads: the default (worker_threads unset, adaptive) against fixed counts, addon closed loop, ${r0.clients} callers, pool ${r0.pool}, encrypt, median of ${r0.rows[0]!.rounds.length} interleaved rounds x ${r0.seconds} s (req/s)`,
  );
  const labels = r0.rows.map((x) => x.label);
  out.push(
    table(
      rs.map((r) => [
        r.hsm,
        ...labels.map((l) => f0(r.rows.find((x) => x.label === l)?.rps ?? NaN)),
        r.bestFixed,
        pct(r.defaultOfBest, 1),
        metOr(r.met),
      ]),
      ['', ...labels, 'best', 'default/best', `>= ${100 - 100 * ADAPTIVE_TOLERANCE}%`],
    ),
  );
  return out;
}

/** Target check of the issue (2-core machine). */
function targets(e2e: Record<OpKey, OpResults>): string[][] {
  const rows: string[][] = [];
  for (const op of OPS) {
    const x = e2e[op.key];
    if (!x) continue;
    const slack = op.key === 'encrypt32' ? 1 : 1.25;
    const rpsTarget = 20000 / slack;
    rows.push([
      op.key,
      `closed-loop >= ${f0(rpsTarget)} req/s, 0 errors`,
      `${f0(x.closed.throughput)} req/s, ${x.closed.errors} err`,
      x.closed.throughput >= rpsTarget && x.closed.errors === 0 ? 'met' : 'MISSED',
    ]);
    for (const [rate, limit] of [
      [1800, 1],
      [10000, 5],
    ] as const) {
      const o = x.open[rate];
      if (!o) continue;
      const l = limit * slack;
      rows.push([
        op.key,
        `p99 <= ${l} ms @ ${rate}/s, 0 errors`,
        `${ms(o.latencyMs.p99)} ms, ${o.errors} err`,
        o.latencyMs.p99 <= l && o.errors === 0 ? 'met' : 'MISSED',
      ]);
    }
  }
  return rows;
}

function report(r: BenchResult, comparison: Comparison[] | undefined, compareFile: string | undefined): string {
  const out: string[] = [];
  const mc = r.machine;
  out.push(
    `xks-proxy bench  ${r.startedAt}  ${r.quick ? '(--quick smoke: short windows, figures are rough)' : ''}${r.profiled ? '(profiled: proxy ran under --cpu-prof, figures are lower)' : ''}`,
  );
  out.push(
    `machine: ${mc.cpuModel}, ${mc.cpus} CPUs (${mc.availableParallelism} available), ${mc.memGiB} GiB, ${mc.kernel}, load average ${mc.loadAvg1} at start${mc.loadAvg1 > 0.5 ? ' (BUSY: other work was running; figures are pessimistic)' : ''}`,
  );
  out.push(
    `software: node ${mc.node} (V8 ${mc.v8}), ${mc.softhsm === 'unknown' ? 'SoftHSM2' : `SoftHSM2 ${mc.softhsm}`}, commit ${mc.gitCommit}`,
  );
  out.push(
    `proxy: workers=${r.config.workers ?? 1}, worker_threads=${r.config.workerThreads}, session_pool_max_size=${r.config.poolMaxSize}, log level ${r.config.logLevel} to a file; ` +
      `load: ${r.config.requestPool} distinct pre-signed requests per op, closed loop ${r.config.closedConnections} keep-alive connections, open loop up to ${r.config.openConnections}`,
  );
  out.push('');
  out.push('Micro-benchmarks (tinybench, one at a time, in the bench process)');
  out.push(
    table(
      r.micro.map((x) => [x.name, f0(x.opsPerSec), f2(x.meanUs), f2(x.p99Us), `±${x.rme.toFixed(1)}%`]),
      ['', 'ops/s', 'mean µs', 'p99 µs', 'rme'],
    ),
  );
  out.push('');
  const h = r.ceilings.http;
  out.push('Ceilings');
  out.push(
    table(
      [
        ['addon encrypt 32 B, no HTTP, 1 worker thread, 64 in flight', `${f0(r.ceilings.addonEncrypt32OneThread)} req/s`],
        ...(r.ceilings.addonEncrypt32OneThreadTokenKey !== undefined
          ? [['  the same on the token key (session_key_copies = false)', `${f0(r.ceilings.addonEncrypt32OneThreadTokenKey)} req/s`]]
          : []),
        [
          `addon encrypt 32 B, no HTTP, ${r.config.workerThreads} worker threads, 64 in flight`,
          `${f0(r.ceilings.addonEncrypt32ProxyThreads)} req/s`,
        ],
        [
          `empty uWS handler, ${h.generator} generator, closed loop ${r.config.closedConnections} conns`,
          `${f0(h.closed.throughput)} req/s (generator CPU ${pct(h.closed.generatorCpu, 1)} of a core)`,
        ],
        [
          `empty uWS handler, wrk -t1 -c${r.config.closedConnections} (cross-check)`,
          h.wrkRps === undefined ? 'not run' : `${f0(h.wrkRps)} req/s`,
        ],
        ...RATES.map((rate) => {
          const o = h.open[rate]!;
          return [
            `empty uWS handler, open loop ${rate}/s: latency floor`,
            `p50 ${ms(o.latencyMs.p50)} p99 ${ms(o.latencyMs.p99)} p99.9 ${ms(o.latencyMs.p999)} max ${ms(o.latencyMs.max)} ms, ${o.errors} err, gen CPU ${pct(o.generatorCpu, 1)}`,
          ];
        }),
      ],
      ['', ''],
    ),
  );
  const genLimited = h.wrkRps !== undefined && h.wrkRps > h.closed.throughput * 1.15;
  out.push(
    `load generator ceiling (${h.generator}): ${f0(h.closed.throughput)} req/s closed loop against an instant server` +
      (h.wrkRps === undefined
        ? ''
        : genLimited
          ? ` (wrk reaches ${f0(h.wrkRps)}: our generator, not uWS, is the limit of that figure)`
          : ` (wrk reaches ${f0(h.wrkRps)}: the server side is the limit, the generator keeps up)`),
  );
  out.push('');
  out.push('End to end: the proxy process on SoftHSM2, 127.0.0.1, pre-signed requests; open-loop latency from each due time (ms)');
  const rows: string[][] = [];
  for (const op of OPS) {
    const x = r.e2e[op.key];
    if (!x) continue;
    const c = x.closed;
    rows.push([
      `${op.label}`,
      'closed',
      ...loadCells(c),
      `${pct(c.throughput, r.ceilings.addonEncrypt32OneThread)} of addon 1-thr, ${pct(c.throughput, r.ceilings.addonEncrypt32ProxyThreads)} of addon ${r.config.workerThreads}-thr, ${pct(c.throughput, h.closed.throughput)} of empty uWS`,
    ]);
    for (const rate of RATES) {
      const o = x.open[rate];
      if (!o) continue;
      const floor = h.open[rate]!;
      rows.push(['', `@${rate}/s`, ...loadCells(o), `floor p99 ${ms(floor.latencyMs.p99)}; send lag p99 ${ms(o.sendLagMs?.p99 ?? NaN)}`]);
    }
  }
  out.push(table(rows, ['', 'mode', 'req/s', 'p50', 'p99', 'p99.9', 'max', 'errors', 'vs ceiling']));
  out.push(
    '(closed loop latency is from send time; "floor" = same load on the empty uWS handler; "send lag" = due time to write, the generator\'s own lateness)',
  );
  if (r.scaling && r.scaling.length > 0) {
    out.push('');
    out.push(
      `Scaling over event loops ([server] workers) and key copies: closed-loop encrypt 32 B, ${r.config.closedConnections} connections, same pool and HSM threads in total (README, "All cores")`,
    );
    const one = r.scaling.find((p) => p.workers === 1 && p.keyCopies !== false)?.closed.throughput ?? NaN;
    out.push(
      table(
        r.scaling.map((p) => [
          `workers = ${p.workers}${p.keyCopies === false ? ', session_key_copies = false' : ''}`,
          f0(p.closed.throughput),
          ms(p.closed.latencyMs.p50),
          ms(p.closed.latencyMs.p99),
          String(p.closed.errors),
          Number.isFinite(one) && one > 0 ? `x${(p.closed.throughput / one).toFixed(2)}` : '-',
          `exit ${p.exitCode}`,
        ]),
        ['', 'req/s', 'p50', 'p99', 'errors', 'vs 1', 'SIGTERM'],
      ),
    );
    out.push(
      `(the load generator shares the ${r.machine.availableParallelism} cores with the proxy: "empty uWS handler" above is its ceiling)`,
    );
  }
  if (r.network) {
    out.push('');
    out.push(...networkReport(r.network));
  }
  if (r.adaptive) {
    out.push('');
    out.push(...adaptiveReport(r.adaptive));
  }
  if (r.audit) out.push('', auditReport(r.audit));
  out.push('');
  out.push('Targets (issue 3)');
  out.push(table(targets(r.e2e), ['op', 'target', 'measured', '']));
  if (r.profile) {
    out.push('');
    out.push(
      `Proxy CPU profile (${r.profile.file}), ${f0(r.profile.totalMs)} ms profiled, idle ${r.profile.idlePct.toFixed(1)}%: top self time`,
    );
    out.push(
      table(
        r.profile.top.map((t) => [t.fn, t.where, `${f0(t.selfMs)} ms`, `${t.pct.toFixed(1)}%`]),
        ['function', 'where', 'self', '%'],
      ),
    );
  }
  if (comparison) {
    out.push('');
    const bad = comparison.filter((c) => c.regressed);
    const good = comparison.filter((c) => c.improved);
    out.push(
      `Compared with ${compareFile}: ${bad.length} slower beyond the noise band, ${good.length} faster, ${comparison.length} compared`,
    );
    const fmt = (c: Comparison): string[] => [
      c.name,
      `${c.unit === 'ms' ? ms(c.base) : f0(c.base)} -> ${c.unit === 'ms' ? ms(c.current) : f0(c.current)} ${c.unit}`,
      !Number.isFinite(c.worse)
        ? c.worse > 0
          ? 'new errors'
          : 'errors gone'
        : c.worse > 0
          ? `${(100 * c.worse).toFixed(0)}% worse`
          : `${(-100 * c.worse).toFixed(0)}% better`,
      `band ${(100 * c.band).toFixed(0)}%`,
    ];
    if (bad.length)
      out.push(
        table(
          bad.map((c) => [...fmt(c), 'SLOWER']),
          ['figure', 'base -> now', 'change', 'noise', ''],
        ),
      );
    if (good.length)
      out.push(
        table(
          good.map((c) => [...fmt(c), 'faster']),
          ['figure', 'base -> now', 'change', 'noise', ''],
        ),
      );
  }
  return out.join('\n');
}

async function main(): Promise<number> {
  const args = benchArgs();
  const t0 = Date.now();
  const d = args.quick ? QUICK : FULL;
  const machine = describeMachine();
  let baseline: Metric[] | undefined;
  if (args.compare) baseline = (JSON.parse(readFileSync(args.compare, 'utf8')) as BenchResult).metrics;

  log(`bench: making a SoftHSM2 token`);
  const token = await makeToken();
  let gen: CGenerator | undefined;
  try {
    // One engine per measurement on the bench token, closed whatever happens.
    const withEngine = async <T>(
      o: { threads: number; poolMaxSize: number; keyCopies: boolean },
      fn: (e: NativeEngine) => Promise<T>,
    ): Promise<T> => {
      const engine = await openEngine({ modulePath: token.modulePath, pin: token.pin, ...o });
      try {
        return await fn(engine);
      } finally {
        await engine.close();
      }
    };
    const { micro, addon1 } = await withEngine({ threads: 1, poolMaxSize: 4, keyCopies: true }, async (e) => {
      log('bench: micro-benchmarks');
      const rows = await runMicro(e, args.quick);
      log('bench: addon ceiling, 1 thread');
      return { micro: rows, addon1: await addonRate(e, 64, args.quick ? 500 : 2000) };
    });
    const addon1Token = args.quick
      ? undefined
      : await withEngine({ threads: 1, poolMaxSize: 4, keyCopies: false }, (e) => {
          log('bench: addon ceiling, 1 thread, token key');
          return addonRate(e, 64, 2000);
        });
    const addonN = await withEngine({ threads: args.threads, poolMaxSize: args.pool, keyCopies: true }, (e) => {
      log(`bench: addon ceiling, ${args.threads} threads`);
      return addonRate(e, 64, args.quick ? 500 : 2000);
    });

    const c = buildCGenerator();
    if ('error' in c) throw new Error(`cannot compile the load generator bench/loadgen.c (set CC to a C compiler): ${c.error}`);
    gen = new CGenerator(c.binary);
    const poolSize = args.quick ? 200 : 1000;
    log('bench: HTTP ceilings (empty uWebSockets.js handler)');
    const sample = await signAll(
      makeSigner({ accessKeyId: 'AKIAEMPTYEMPTYEMPTY0', secretAccessKey: 'x'.repeat(40) }),
      '127.0.0.1:1',
      '/bench/kms/xks/v1/keys/k/encrypt',
      encryptBodies(poolSize, 32, 64),
    );
    const http = await httpCeilings(gen, sample, d, args.quick, token.dir, log);

    let profileDir: string | undefined;
    const nodeArgs: string[] = [];
    if (args.profile) {
      profileDir = path.join(args.out, 'profile');
      mkdirSync(profileDir, { recursive: true });
      nodeArgs.push('--cpu-prof', '--cpu-prof-dir', profileDir, '--cpu-prof-name', `proxy-${Date.now()}.cpuprofile`);
    }
    log('bench: the proxy');
    const before = new Set(profileDir ? readdirSync(profileDir) : []);
    const run = await proxyRuns(
      gen,
      token,
      { poolMaxSize: args.pool, workerThreads: args.threads, level: args.level, poolSize, nodeArgs, workers: args.workers },
      d,
      log,
    );
    log('bench: the audit trail (off, batched, before-response, before-response on tmpfs)');
    const audit = await auditRuns(
      gen,
      token,
      { poolMaxSize: args.pool, workerThreads: args.threads, level: args.level, poolSize, workers: args.workers },
      d,
      log,
    );
    let scaling: ScalingPoint[] | undefined;
    if (!args.quick && !args.profile) {
      log('bench: scaling over event loops ([server] workers = 1, 2) and without key copies');
      const points = [
        { workers: 1, keyCopies: true },
        { workers: 2, keyCopies: true },
        { workers: args.workers, keyCopies: false },
      ];
      scaling = await scalingRuns(
        gen,
        token,
        { poolMaxSize: args.pool, workerThreads: args.threads, level: args.level, poolSize },
        points,
        d,
        log,
      );
    }

    let network: NetworkResults | undefined;
    if (!args.profile) {
      log(`bench: the network HSM model (rtt ${args.hsmRtt} ms per call)`);
      const tn = Date.now();
      network = await networkRuns(gen, token, { rttMs: args.hsmRtt, level: args.level, poolSize }, args.quick ? NET_QUICK : NET_FULL, log);
      log(`bench: the network rows took ${((Date.now() - tn) / 1000).toFixed(1)} s`);
    }
    let adaptive: AdaptiveResult[] | undefined;
    if (!args.quick && !args.profile) {
      log('bench: the default HSM thread count against fixed counts, SoftHSM2 and the model');
      const model = new NetModel(token, 'adaptive');
      model.useInThisProcess();
      model.setRtt(args.hsmRtt);
      const common = { pin: token.pin, seconds: 1, warmupMs: 800, clients: 64, rounds: 3 };
      adaptive = [
        await adaptiveVsFixed({ ...common, hsm: 'SoftHSM2', modulePath: token.modulePath }),
        await adaptiveVsFixed({ ...common, hsm: `rtt ${args.hsmRtt} ms`, modulePath: model.modulePath }),
      ];
    }

    let profile: BenchResult['profile'];
    if (profileDir) {
      const fresh = readdirSync(profileDir).filter((f) => f.endsWith('.cpuprofile') && !before.has(f));
      if (fresh.length) {
        const file = path.join(profileDir, fresh[0]!);
        profile = { file: path.relative(ROOT, file), ...topSelfTime(file, 30) };
      } else log('bench: the proxy wrote no CPU profile');
    }

    const partial: Omit<BenchResult, 'metrics'> = {
      schema: 1,
      startedAt: new Date(t0).toISOString(),
      durationS: (Date.now() - t0) / 1000,
      quick: args.quick,
      profiled: args.profile,
      machine,
      config: {
        workerThreads: args.threads,
        poolMaxSize: args.pool,
        logLevel: args.level,
        closedConnections: CLOSED_CONNECTIONS,
        openConnections: OPEN_CONNECTIONS,
        requestPool: poolSize,
        workers: args.workers,
      },
      micro,
      ceilings: {
        addonEncrypt32OneThread: addon1,
        addonEncrypt32ProxyThreads: addonN,
        ...(addon1Token !== undefined ? { addonEncrypt32OneThreadTokenKey: addon1Token } : {}),
        http,
      },
      e2e: run.results,
      ...(scaling ? { scaling } : {}),
      ...(profile ? { profile } : {}),
      ...(network ? { network } : {}),
      ...(adaptive ? { adaptive } : {}),
      audit,
    };
    const result: BenchResult = { ...partial, metrics: metricsOf(partial) };
    const comparison = baseline ? compareMetrics(baseline, result.metrics) : undefined;
    process.stdout.write(report(result, comparison, args.compare) + '\n');

    mkdirSync(args.out, { recursive: true });
    const stamp = result.startedAt.replace(/[:.]/g, '-');
    const kind = args.quick ? 'quick' : args.profile ? 'profile' : 'full';
    const json = JSON.stringify(result, null, 1);
    writeFileSync(path.join(args.out, `${stamp}-${kind}.json`), json);
    if (!args.quick && !args.profile) writeFileSync(path.join(args.out, 'latest.json'), json);
    else writeFileSync(path.join(args.out, `latest-${kind}.json`), json);
    log(
      `bench: ${(Date.now() - t0) / 1000} s; results in ${path.relative(process.cwd(), args.out) || '.'}/${!args.quick && !args.profile ? 'latest.json' : `latest-${kind}.json`}`,
    );

    if (run.exitCode !== 0) {
      log(`bench: the proxy exited with ${run.exitCode} after SIGTERM`);
      return 1;
    }
    const badScaling = (scaling ?? []).find((p) => p.exitCode !== 0);
    if (badScaling) {
      log(`bench: the proxy with workers = ${badScaling.workers} exited with ${badScaling.exitCode} after SIGTERM`);
      return 1;
    }
    if (args.quick) {
      // Wrong answers and broken connections fail the smoke; requests still queued when an
      // overloaded open-loop window ends (unanswered) are a speed figure, not a failure.
      const errs =
        Object.values(run.results).reduce(
          (n, x) => n + x.closed.errors + Object.values(x.open).reduce((a, o) => a + o.errors - o.unanswered, 0),
          0,
        ) +
        (network?.ops ?? []).reduce((n, o) => n + o.sequential.errors + o.sequentialRtt0.errors + o.closed.errors + o.softhsm.errors, 0) +
        Object.values(network?.background ?? {}).reduce((n, b) => n + b.sequential.errors + b.closed.errors, 0);
      if (errs > 0) {
        log(`bench --quick: ${errs} requests failed (wrong status or connection error)`);
        return 1;
      }
    }
    return 0;
  } finally {
    await gen?.close();
    if (existsSync(token.dir)) token.remove();
  }
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`bench: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
