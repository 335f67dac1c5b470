/**
 * The audit trail's cost (issue 14): closed-loop encrypt 32 B and p99 at 1,800/s with the trail
 * off, `batched` and `before-response`, one proxy process each on the bench token (which gets an
 * HMAC key here), and before-response on tmpfs to split its cost (see MODES). Targets: batched
 * <= 5 % throughput cost, before-response <= 15 %, and p99 at 1,800/s within 1 ms of off. The
 * throughput is measured twice: at the bench's 32 connections, and at SATURATED_CONNECTIONS (the
 * targets' figure: a proxy's throughput is what it serves with enough requests in flight). Then
 * what one synchronized group write costs on the disk the trail used (bench/disksync.c).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { benchStore, CLOSED_CONNECTIONS, FULL, OPEN_CONNECTIONS, QUICK, type Durations } from './e2e.js';
import { withCpu, type ClosedRun } from './lib/cpu.js';
import { compileBenchC } from './lib/cc.js';
import { buildCGenerator, CGenerator, type LoadResult } from './lib/loadgen.js';
import { freePort, startProxyProcess } from './lib/procs.js';
import { encryptBodies, sendAll, signAll } from './lib/requests.js';
import { makeSigner } from './lib/sign.js';
import { KEY_LABEL, makeToken, openEngine, type BenchToken } from './lib/token.js';

export const AUDIT_HMAC_LABEL = 'xks-bench-audit-hmac';
export const AUDIT_RATE = 1800;
/**
 * Connections of the closed loop that measures throughput for the targets. With 32, before-response
 * is bound by latency rather than work: each of the 32 requests in flight also waits for a
 * synchronized write, so fewer are served per second on an idle CPU. With 128, every mode keeps
 * the machine busy (off gains 2-5 % over 32 here).
 */
export const SATURATED_CONNECTIONS = 128;
/**
 * `before-response@tmpfs`: before-response with its files in /dev/shm, where fdatasync costs
 * nothing. Not a durable set-up: a diagnostic row that splits before-response's cost into the
 * proxy's own (this row against off) and the machine's synchronized write (the rest).
 */
const MODES = ['off', 'batched', 'before-response', 'before-response@tmpfs'] as const;
export type AuditMode = (typeof MODES)[number];
const TMPFS = '/dev/shm';

export interface AuditRow {
  mode: AuditMode;
  /** With the proxy's CPU per request: on a shared machine it moves far less than req/s. */
  closed: ClosedRun;
  /** The same at SATURATED_CONNECTIONS. */
  saturated: ClosedRun;
  open1800: LoadResult;
}

/** One synchronized write on the machine's disk (bench/disksync.c), in µs. */
export interface SyncCost {
  p50: number;
  p99: number;
  /** CPU of the writing thread per write. */
  cpu: number;
}

export interface AuditResults {
  rows: AuditRow[];
  /** What before-response's group write costs on this disk, against an overwrite of preallocated blocks. */
  disk?: { append: SyncCost; overwrite: SyncCost };
}

export interface AuditTargets {
  /** Throughput costs against off, at SATURATED_CONNECTIONS (%). */
  batchedCostPct: number;
  beforeResponseCostPct: number;
  /** The same at the bench's 32 connections (%). */
  batchedCost32Pct: number;
  beforeResponseCost32Pct: number;
  /** p99 at 1,800/s of before-response minus off (ms). */
  p99DeltaMs: number;
  /** The proxy's CPU per request against off's (%), batched and before-response. */
  batchedCpuPct: number;
  beforeResponseCpuPct: number;
  /** before-response with its files on tmpfs (no cost of the disk), against off (%). */
  tmpfsCostPct: number;
  met: boolean;
}

/** Tokens that hold the HMAC key already (a second key with the label would make it ambiguous). */
const keyed = new WeakSet<BenchToken>();

/** Runs the three proxies, taking turns. */
export async function auditRuns(
  gen: CGenerator,
  token: BenchToken,
  opts: { poolMaxSize: number; workerThreads: number; level: string; poolSize: number; workers?: number },
  d: Durations,
  log: (s: string) => void,
  modes: readonly AuditMode[] = MODES,
): Promise<AuditResults> {
  if (!keyed.has(token)) {
    const engine = await openEngine({ modulePath: token.modulePath, pin: token.pin, threads: 1, poolMaxSize: 2, keyCopies: false });
    try {
      await engine.createKey(AUDIT_HMAC_LABEL, { encrypt: false, decrypt: false, hmac: true });
    } finally {
      await engine.close();
    }
    keyed.add(token);
  }
  // All proxies run side by side (an idle one costs nothing) and take turns in short windows:
  // each mode's figures are sums over windows spread across the whole measurement, so the shared
  // host's drift (a quarter of the throughput between minutes) falls on every mode alike.
  const base = mkdtempSync(path.join(os.tmpdir(), 'xks-bench-audit-'));
  const shmBase = mkdtempSync(path.join(TMPFS, 'xks-bench-audit-'));
  const proxies: {
    mode: AuditMode;
    pid: number;
    target: { host: string; port: number };
    requests: Uint8Array[];
    stop(): Promise<unknown>;
  }[] = [];
  try {
    for (const mode of modes) {
      const port = await freePort();
      const store = benchStore();
      // On the machine's disk (the bench token lives in /dev/shm, where fdatasync costs nothing).
      const onTmpfs = mode.endsWith('@tmpfs');
      const directory = path.join(onTmpfs ? shmBase : base, mode.replace('@', '-'));
      const durability = onTmpfs ? mode.slice(0, mode.indexOf('@')) : mode;
      const proxy = await startProxyProcess({
        token,
        port,
        store,
        poolMaxSize: opts.poolMaxSize,
        workerThreads: opts.workerThreads,
        level: opts.level,
        workers: opts.workers,
        ...(mode === 'off' ? {} : { audit: { directory, hmacKeyId: AUDIT_HMAC_LABEL, durability } }),
      });
      proxies.push({ mode, pid: proxy.proc.pid!, target: { host: '127.0.0.1', port }, requests: [], stop: proxy.stop });
      const hostPort = `127.0.0.1:${port}`;
      const pool = await signAll(
        makeSigner(store),
        hostPort,
        `${store.prefix}/kms/xks/v1/keys/${KEY_LABEL}/encrypt`,
        encryptBodies(opts.poolSize, 32, 64),
      );
      await sendAll(`http://${hostPort}`, pool.slice(0, 4), 1);
      proxies.at(-1)!.requests = pool.map((r) => r.raw);
    }
    const closedRun = (p: (typeof proxies)[number], durationMs: number, connections = CLOSED_CONNECTIONS): Promise<LoadResult> =>
      gen.run({
        kind: 'closed',
        target: p.target,
        requests: p.requests,
        connections,
        warmupMs: 0,
        durationMs,
        expectStatus: 200,
      });
    for (const p of proxies) await closedRun(p, d.warmupMs);
    const closedWindows = Math.max(2, Math.round(d.closedMs / 1000));
    const openWindows = Math.max(1, Math.round(d.openLowMs / 2000));
    log(
      `  audit ${modes.join(', ')}: closed loop encrypt 32 B, ${CLOSED_CONNECTIONS} and ${SATURATED_CONNECTIONS} connections, ${closedWindows} turns of ${d.closedMs / closedWindows / 1000} s each`,
    );
    const closed = new Map<(typeof proxies)[number], ClosedRun[]>(proxies.map((p) => [p, []]));
    const saturated = new Map<(typeof proxies)[number], ClosedRun[]>(proxies.map((p) => [p, []]));
    const windowMs = d.closedMs / closedWindows;
    for (let w = 0; w < closedWindows; w++) {
      for (const p of proxies) {
        closed.get(p)!.push(await withCpu(p.pid, () => closedRun(p, windowMs)));
        saturated.get(p)!.push(await withCpu(p.pid, () => closedRun(p, windowMs, SATURATED_CONNECTIONS)));
      }
    }
    log(`  audit ${modes.join(', ')}: open loop ${AUDIT_RATE} req/s, ${openWindows} turns of ${d.openLowMs / openWindows / 1000} s each`);
    const open = new Map<(typeof proxies)[number], LoadResult[]>(proxies.map((p) => [p, []]));
    for (let w = 0; w < openWindows; w++) {
      for (const p of proxies) {
        open.get(p)!.push(
          await gen.run({
            kind: 'open',
            target: p.target,
            requests: p.requests,
            rate: AUDIT_RATE,
            connections: OPEN_CONNECTIONS,
            warmupMs: w === 0 ? d.warmupMs : 0,
            durationMs: d.openLowMs / openWindows,
            expectStatus: 200,
            drainMs: d.drainMs,
          }),
        );
      }
    }
    const rows = proxies.map((p) => ({
      mode: p.mode,
      closed: mergeClosed(closed.get(p)!),
      saturated: mergeClosed(saturated.get(p)!),
      open1800: mergeLoad(open.get(p)!),
    }));
    return { rows, disk: diskSyncCost(base) };
  } finally {
    for (const p of proxies) await p.stop();
    rmSync(base, { recursive: true, force: true });
    rmSync(shmBase, { recursive: true, force: true });
  }
}

/** bench/disksync.c in `dir` (on the disk the trail's files were on); undefined when it cannot run. */
function diskSyncCost(dir: string): AuditResults['disk'] {
  const c = compileBenchC('disksync');
  if ('error' in c) return undefined;
  const run = (kind: string): SyncCost => {
    const [p50, p99, cpu] = execFileSync(c.binary, [kind, path.join(dir, `disksync-${kind}`), '2000'], { encoding: 'utf8' })
      .trim()
      .split(' ')
      .map((x) => Number(x) / 1000);
    return { p50: p50!, p99: p99!, cpu: cpu! };
  };
  try {
    return { append: run('append'), overwrite: run('overwrite') };
  } catch {
    return undefined;
  }
}

/**
 * One result of several windows of one proxy: counts add up, req/s is over their whole time,
 * latency percentiles are the windows' means (each window has its own distribution).
 */
function mergeLoad(ws: readonly LoadResult[]): LoadResult {
  const sum = (f: (w: LoadResult) => number): number => ws.reduce((a, w) => a + f(w), 0);
  const mean = (f: (w: LoadResult) => number): number => sum(f) / ws.length;
  const seconds = sum((w) => (w.throughput > 0 ? w.completed / w.throughput : 0));
  const statusCounts: Record<string, number> = {};
  for (const w of ws) for (const [k, v] of Object.entries(w.statusCounts)) statusCounts[k] = (statusCounts[k] ?? 0) + v;
  const latency = Object.fromEntries(
    Object.keys(ws[0]!.latencyMs).map((k) => [k, mean((w) => (w.latencyMs as unknown as Record<string, number>)[k]!)]),
  );
  return {
    ...ws[0]!,
    completed: sum((w) => w.completed),
    errors: sum((w) => w.errors),
    statusCounts,
    socketErrors: sum((w) => w.socketErrors),
    unanswered: sum((w) => w.unanswered),
    throughput: seconds > 0 ? sum((w) => w.completed) / seconds : 0,
    perSecond: ws.flatMap((w) => w.perSecond),
    latencyMs: latency as unknown as LoadResult['latencyMs'],
    generatorCpu: mean((w) => w.generatorCpu),
  };
}

function mergeClosed(ws: readonly ClosedRun[]): ClosedRun {
  const completed = ws.reduce((a, w) => a + w.completed, 0);
  return {
    ...mergeLoad(ws),
    proxyCpuUsPerRequest: ws.reduce((a, w) => a + w.proxyCpuUsPerRequest * w.completed, 0) / Math.max(1, completed),
    machineBusy: ws.reduce((a, w) => a + w.machineBusy, 0) / ws.length,
  };
}

export function auditTargets(rows: readonly AuditRow[]): AuditTargets {
  const by = (m: AuditMode): AuditRow | undefined => rows.find((r) => r.mode === m);
  const off = by('off');
  const cost = (m: AuditMode, run: (r: AuditRow) => ClosedRun = (r) => r.saturated): number => {
    const r = by(m);
    return off && r && run(off).throughput > 0 ? (100 * (run(off).throughput - run(r).throughput)) / run(off).throughput : NaN;
  };
  const batchedCostPct = cost('batched');
  const beforeResponseCostPct = cost('before-response');
  const p99DeltaMs = (by('before-response')?.open1800.latencyMs.p99 ?? NaN) - (off?.open1800.latencyMs.p99 ?? NaN);
  const cpu = (m: AuditMode): number => {
    const r = by(m);
    return off && r ? (100 * r.saturated.proxyCpuUsPerRequest) / off.saturated.proxyCpuUsPerRequest : NaN;
  };
  return {
    batchedCostPct,
    beforeResponseCostPct,
    batchedCost32Pct: cost('batched', (r) => r.closed),
    beforeResponseCost32Pct: cost('before-response', (r) => r.closed),
    p99DeltaMs,
    batchedCpuPct: cpu('batched'),
    beforeResponseCpuPct: cpu('before-response'),
    tmpfsCostPct: cost('before-response@tmpfs'),
    met: batchedCostPct <= 5 && beforeResponseCostPct <= 15 && p99DeltaMs <= 1,
  };
}

/** The report's section. */
export function auditReport(results: AuditResults): string {
  const { rows, disk } = results;
  const t = auditTargets(rows);
  const off = rows.find((r) => r.mode === 'off');
  const f0 = (n: number): string => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '-');
  const ms = (n: number): string => (Number.isFinite(n) ? n.toFixed(n < 10 ? 2 : 1) : '-');
  const pct = (r: AuditRow, run: (x: AuditRow) => ClosedRun): string =>
    off && run(off).throughput > 0 ? `${((100 * run(r).throughput) / run(off).throughput).toFixed(0)}%`.padStart(4) : '   -';
  const errors = (r: AuditRow): number => r.closed.errors + r.saturated.errors + r.open1800.errors;
  const lines = [
    `Audit trail ([audit] durability), encrypt 32 B: closed loop ${SATURATED_CONNECTIONS} and ${CLOSED_CONNECTIONS} connections, open loop ${AUDIT_RATE}/s; the proxies take turns in short windows, each row sums its own`,
    ...rows.map(
      (r) =>
        `  ${r.mode.padEnd(22)} ${f0(r.saturated.throughput).padStart(8)} req/s ${pct(r, (x) => x.saturated)} of off  cpu ${r.saturated.proxyCpuUsPerRequest.toFixed(1)} µs/req  busy ${(100 * r.saturated.machineBusy).toFixed(0)}%  | ${CLOSED_CONNECTIONS} conns ${f0(r.closed.throughput).padStart(8)} req/s ${pct(r, (x) => x.closed)}  cpu ${r.closed.proxyCpuUsPerRequest.toFixed(1)} µs/req  | p99 @${AUDIT_RATE}/s ${ms(r.open1800.latencyMs.p99)} ms  errors ${errors(r)}${errors(r) > 0 ? ` (closed ${JSON.stringify(r.closed.statusCounts)}/${JSON.stringify(r.saturated.statusCounts)} sockets ${r.closed.socketErrors + r.saturated.socketErrors}; open ${JSON.stringify(r.open1800.statusCounts)} sockets ${r.open1800.socketErrors} unanswered ${r.open1800.unanswered})` : ''}`,
    ),
    `  targets (throughput at ${SATURATED_CONNECTIONS} connections): batched cost ${t.batchedCostPct.toFixed(1)}% (<= 5), before-response ${t.beforeResponseCostPct.toFixed(1)}% (<= 15), p99 +${ms(t.p99DeltaMs)} ms (<= 1): ${t.met ? 'met' : 'NOT MET'}; cpu per request vs off: batched ${t.batchedCpuPct.toFixed(0)}%, before-response ${t.beforeResponseCpuPct.toFixed(0)}%`,
    `  at ${CLOSED_CONNECTIONS} connections: batched cost ${t.batchedCost32Pct.toFixed(1)}%, before-response ${t.beforeResponseCost32Pct.toFixed(1)}% (each request in flight also waits for its group's synchronized write)`,
    ...(Number.isFinite(t.tmpfsCostPct)
      ? [
          `  before-response costs ${t.tmpfsCostPct.toFixed(1)}% on tmpfs at ${SATURATED_CONNECTIONS} connections (the proxy's own work), ${(t.beforeResponseCostPct - t.tmpfsCostPct).toFixed(1)} points more on the disk (its synchronized writes)`,
        ]
      : []),
    ...(disk
      ? [
          `  one synchronized group write on this disk: O_DSYNC append p50 ${disk.append.p50.toFixed(0)} µs, p99 ${disk.append.p99.toFixed(0)} µs, ${disk.append.cpu.toFixed(0)} µs of CPU; O_DIRECT overwrite of preallocated blocks p50 ${disk.overwrite.p50.toFixed(0)} µs, p99 ${disk.overwrite.p99.toFixed(0)} µs, ${disk.overwrite.cpu.toFixed(0)} µs of CPU (bench/disksync.c, idle)`,
        ]
      : []),
  ];
  return lines.join('\n');
}

/**
 * `node dist/bench/audit.js [--quick] [--rounds N] [off] [batched] [before-response] [before-response@tmpfs]`: only these rows
 * (the full bench runs them too); N rounds of all modes in turn (on a shared machine, look at each round).
 */
async function main(): Promise<void> {
  const quick = process.argv.includes('--quick');
  const r = process.argv.indexOf('--rounds');
  const rounds = r > 0 ? Math.max(1, Number(process.argv[r + 1]) || 1) : 1;
  const only = MODES.filter((m) => process.argv.includes(m));
  const log = (m: string): void => void process.stderr.write(`${m}\n`);
  const token = await makeToken();
  const c = buildCGenerator();
  if ('error' in c) throw new Error(`cannot compile the load generator: ${c.error}`);
  const gen = new CGenerator(c.binary);
  try {
    for (let i = 0; i < rounds; i++) {
      const results = await auditRuns(
        gen,
        token,
        { poolMaxSize: 8, workerThreads: 2, level: 'INFO', poolSize: quick ? 200 : 1000 },
        quick ? QUICK : FULL,
        log,
        only.length > 0 ? only : MODES,
      );
      process.stdout.write(`round ${i + 1}: ${auditReport(results)}\n`);
    }
  } finally {
    await gen.close();
    token.remove();
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((e: unknown) => {
    process.stderr.write(`${e instanceof Error ? e.stack : String(e)}\n`);
    process.exitCode = 1;
  });
}
