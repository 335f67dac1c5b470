/**
 * The network-HSM rows (issue 13): the proxy process behind the fault module's network model
 * (bench/lib/netmodel.ts: `rtt <ms>` per PKCS#11 call that crosses the network), the seed's pool
 * of 30 sessions and the default (adaptive) HSM thread count, per operation:
 *
 * - round trips per request: the model's round_trips over the sequential run, divided by the
 *   requests the proxy logged in it (background work of the proxy in that window included);
 * - sequential p50/p99 (one connection, client side) at the model's rtt;
 * - the floor: the same sequential run's p50 with rtt 0 through the same module and process,
 *   plus round trips x the measured cost of one modelled call (bench/sleepcost.c: the module's
 *   clock_nanosleep timed on this machine, in the same run);
 * - closed-loop throughput (64 connections) against the HSM ceiling 30 / (round trips x rtt)
 *   and against the same closed loop on SoftHSM2 directly (same settings, same run).
 *
 * And the background pair: p99 of sequential and closed-loop Encrypt on the model with the
 * proxy's background HSM work (the key copies' re-check every session_key_check_milli, default
 * 1 s; a deep health check every second) and without it (re-check every hour, no health check).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import type { CGenerator, LoadResult } from './lib/loadgen.js';
import { compileBenchC } from './lib/cc.js';
import { withCpu, type ClosedRun } from './lib/cpu.js';
import { callsBetween, NetModel, type ModelStatus } from './lib/netmodel.js';
import { freePort, startProxyProcess, type Store } from './lib/procs.js';
import { decryptBody, encryptBodies, healthBody, metadataBody, sendAll, signAll, type SignedRequest } from './lib/requests.js';
import { makeSigner } from './lib/sign.js';
import { KEY_LABEL, openEngine, type BenchToken } from './lib/token.js';

/** The seed's session pool. */
export const NET_POOL = 30;
export const NET_CONNECTIONS = 64;
/** Round trips per request below which the HSM is not what bounds the closed loop. */
const NO_CEILING_BELOW = 0.05;
/** Targets: sequential p50 within this of the floor (ms); closed loop at least this share of min(ceiling, SoftHSM2). */
export const P50_SLACK_MS = 0.5;
export const THROUGHPUT_SHARE = 0.9;
/** The deep health check's key in the background pair (reserved for it, not in the key store). */
export const HEALTH_KEY = 'xks-bench-health';

export type NetOpKey = 'encrypt' | 'encryptCdiv' | 'decrypt' | 'metadata' | 'health';
export const NET_OPS: { key: NetOpKey; label: string }[] = [
  { key: 'encrypt', label: 'Encrypt' },
  { key: 'encryptCdiv', label: 'Encrypt with CDIV' },
  { key: 'decrypt', label: 'Decrypt' },
  { key: 'metadata', label: 'GetKeyMetadata' },
  { key: 'health', label: 'GetHealthStatus' },
];

export interface NetDurations {
  warmupMs: number;
  seqMs: number;
  closedMs: number;
  /** Each half of the background pair, sequential. */
  backgroundMs: number;
  /** The idle proxy's background round trips are counted over this long. */
  idleMs: number;
}
export const NET_FULL: NetDurations = { warmupMs: 500, seqMs: 4000, closedMs: 3000, backgroundMs: 8000, idleMs: 2000 };
export const NET_QUICK: NetDurations = { warmupMs: 200, seqMs: 700, closedMs: 700, backgroundMs: 1200, idleMs: 1000 };

/** What the proxy's request log says about a window: requests and their `micros` (handler entry to write). */
export interface LoggedRequests {
  n: number;
  microsP50: number;
  microsP99: number;
}

export interface NetOpRow {
  key: NetOpKey;
  label: string;
  /** Round trips per request over the sequential run at rtt. */
  roundTrips: number;
  /** Per PKCS#11 function, per request, over the same run. */
  calls: Record<string, number>;
  sequential: LoadResult;
  /** The proxy's own view of the sequential run at rtt (request log). */
  logged: LoggedRequests;
  sequentialRtt0: LoadResult;
  loggedRtt0: LoggedRequests;
  /** sequentialRtt0 p50 + roundTrips x the measured cost of one modelled call (ms). */
  floorMs: number;
  closed: ClosedRun;
  /** 30 / (roundTrips x rtt), requests/s (Infinity with no round trip). */
  ceiling: number;
  /** The same closed loop on SoftHSM2 directly. */
  softhsm: ClosedRun;
  p50Met: boolean;
  throughputMet: boolean;
  errorsMet: boolean;
}

export interface BackgroundHalf {
  /** What the proxy ran in the background. */
  what: string;
  sequential: LoadResult;
  /** Round trips per request over the sequential run (the background's included). */
  roundTrips: number;
  closed: ClosedRun;
  /** Round trips per second of an idle proxy (background work alone). */
  idleRoundTripsPerS: number;
  /** Most sessions the module saw open at once. */
  maxOpenSessions: number;
}

export interface NetworkResults {
  rttMs: number;
  /** One modelled call as slept on this machine (ms). */
  callCost: { p50: number; mean: number; p99: number; samples: number };
  pool: number;
  connections: number;
  ops: NetOpRow[];
  background: { without: BackgroundHalf; with: BackgroundHalf };
}

/** Times the module's sleep: median / mean / p99 of `count` sleeps of rttMs (ms). */
export function measureCallCost(rttMs: number, count: number): NetworkResults['callCost'] {
  if (rttMs <= 0) return { p50: 0, mean: 0, p99: 0, samples: 0 };
  const c = compileBenchC('sleepcost');
  if ('error' in c) throw new Error(`cannot compile bench/sleepcost.c: ${c.error}`);
  const out = execFileSync(c.binary, [String(Math.round(rttMs * 1e6)), String(count)], { encoding: 'utf8' })
    .trim()
    .split(' ');
  const [p50, mean, p99] = out.map((x) => Number(x) / 1e6);
  return { p50: p50!, mean: mean!, p99: p99!, samples: count };
}

function benchStore(): Store {
  return {
    prefix: '/bench/net',
    accessKeyId: 'AKIA' + randomBytes(8).toString('hex').toUpperCase(),
    secretAccessKey: randomBytes(30).toString('base64'),
    keys: [KEY_LABEL],
  };
}

const pctl = (xs: number[], q: number): number => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
};

/**
 * The log's size once it has stopped growing, so that the request lines of every answered
 * request are in: the proxy's log drains its buffer every 50 ms (src/log.ts), so 150 ms
 * without growth.
 */
async function settledSize(logFile: string): Promise<number> {
  let size = statSync(logFile).size;
  for (let i = 0; i < 20; i++) {
    await new Promise((r) => setTimeout(r, 150));
    const now = statSync(logFile).size;
    if (now === size) return now;
    size = now;
  }
  return size;
}

/** Request lines the proxy wrote to its log after byte `from`, once it has stopped growing. */
async function loggedSince(logFile: string, from: number): Promise<LoggedRequests> {
  await settledSize(logFile);
  const text = readFileSync(logFile).subarray(from).toString('utf8');
  const micros: number[] = [];
  for (const m of text.matchAll(/ request op=\S+.* micros=(\d+)/g)) micros.push(Number(m[1]) / 1000);
  return { n: micros.length, microsP50: pctl(micros, 0.5), microsP99: pctl(micros, 0.99) };
}

interface ProxyUnderTest {
  port: number;
  pid: number;
  store: Store;
  logFile: string;
  stop(): Promise<number | null>;
}

async function startNetProxy(
  token: BenchToken,
  level: string,
  o: { model?: NetModel; keyCheckMs?: number; healthCheck?: { keyId: string; intervalSecs: number } },
): Promise<ProxyUnderTest> {
  const port = await freePort();
  const store = benchStore();
  const p = await startProxyProcess({
    token,
    port,
    store,
    poolMaxSize: NET_POOL,
    workerThreads: undefined,
    level,
    ...(o.model ? { modulePath: o.model.modulePath, env: o.model.env() } : {}),
    ...(o.keyCheckMs !== undefined ? { keyCheckMs: o.keyCheckMs } : {}),
    ...(o.healthCheck ? { healthCheck: o.healthCheck } : {}),
  });
  return { port, pid: p.proc.pid!, store, logFile: p.logFile, stop: p.stop };
}

/** Pre-signed pools of every operation for one proxy (decrypt: of ciphertexts this proxy made). */
async function pools(p: ProxyUnderTest, n: number): Promise<Record<NetOpKey, SignedRequest[]>> {
  const host = `127.0.0.1:${p.port}`;
  const base = `http://${host}`;
  const signer = makeSigner(p.store);
  const api = `${p.store.prefix}/kms/xks/v1`;
  const enc = `${api}/keys/${KEY_LABEL}/encrypt`;
  const encrypt = await signAll(signer, host, enc, encryptBodies(n, 32, 64));
  const sealed = await sendAll(base, encrypt);
  const decBodies = sealed.map((s, i) =>
    decryptBody({
      ciphertext: String(s.ciphertext),
      initializationVector: String(s.initializationVector),
      authenticationTag: String(s.authenticationTag),
      aad: String((JSON.parse(encrypt[i]!.body) as { additionalAuthenticatedData: string }).additionalAuthenticatedData),
    }),
  );
  const out: Record<NetOpKey, SignedRequest[]> = {
    encrypt: await signAll(signer, host, enc, encryptBodies(n, 32, 64)),
    encryptCdiv: await signAll(signer, host, enc, encryptBodies(n, 32, 64, true)),
    decrypt: await signAll(signer, host, `${api}/keys/${KEY_LABEL}/decrypt`, decBodies),
    metadata: await signAll(
      signer,
      host,
      `${api}/keys/${KEY_LABEL}/metadata`,
      Array.from({ length: n }, () => metadataBody()),
    ),
    health: await signAll(
      signer,
      host,
      `${api}/health`,
      Array.from({ length: n }, () => healthBody()),
    ),
  };
  // One checked request of each through fetch first: a pool the proxy rejects is a bench bug.
  for (const k of Object.keys(out) as NetOpKey[]) await sendAll(base, out[k].slice(0, 4), 1);
  return out;
}

function run(
  gen: CGenerator,
  port: number,
  requests: Uint8Array[],
  connections: number,
  warmupMs: number,
  ms: number,
): Promise<LoadResult> {
  return gen.run({
    kind: 'closed',
    target: { host: '127.0.0.1', port },
    requests,
    connections,
    warmupMs,
    durationMs: ms,
    expectStatus: 200,
  });
}

async function closedRun(gen: CGenerator, p: ProxyUnderTest, reqs: SignedRequest[], d: NetDurations): Promise<ClosedRun> {
  const raw = reqs.map((r) => r.raw);
  await run(gen, p.port, raw, NET_CONNECTIONS, 0, d.warmupMs);
  return withCpu(p.pid, () => run(gen, p.port, raw, NET_CONNECTIONS, 0, d.closedMs));
}

/** A sequential run (warmed up first) and the model's round trips and the proxy's log over its window. */
async function sequential(
  gen: CGenerator,
  p: ProxyUnderTest,
  model: NetModel,
  reqs: SignedRequest[],
  d: NetDurations,
  ms: number,
): Promise<{ load: LoadResult; logged: LoggedRequests; s0: ModelStatus; s1: ModelStatus }> {
  const raw = reqs.map((r) => r.raw);
  await run(gen, p.port, raw, 1, 0, d.warmupMs);
  // The warm-up's last request may still be in the HSM and its log line not yet written.
  const from = await settledSize(p.logFile);
  const s0 = model.status();
  const load = await run(gen, p.port, raw, 1, 0, ms);
  const logged = await loggedSince(p.logFile, from);
  const s1 = model.status();
  return { load, logged, s0, s1 };
}

export async function backgroundHalf(
  gen: CGenerator,
  token: BenchToken,
  level: string,
  rttMs: number,
  withWork: boolean,
  poolSize: number,
  d: NetDurations,
  log: (s: string) => void,
): Promise<BackgroundHalf> {
  const model = new NetModel(token, withWork ? 'net-background' : 'net-quiet');
  model.setRtt(rttMs);
  const what = withWork
    ? 'key copies re-checked every 1 s (the default), deep health check every 1 s'
    : 'key copies re-checked every hour, no deep health check';
  const p = await startNetProxy(
    token,
    level,
    withWork ? { model, healthCheck: { keyId: HEALTH_KEY, intervalSecs: 1 } } : { model, keyCheckMs: 3_600_000 },
  );
  try {
    const host = `127.0.0.1:${p.port}`;
    const reqs = await signAll(
      makeSigner(p.store),
      host,
      `${p.store.prefix}/kms/xks/v1/keys/${KEY_LABEL}/encrypt`,
      encryptBodies(poolSize, 32, 64),
    );
    await sendAll(`http://${host}`, reqs.slice(0, 4), 1);
    const idle0 = model.status();
    await new Promise((r) => setTimeout(r, d.idleMs));
    const idle1 = model.status();
    log(`  network model, ${withWork ? 'with' : 'without'} background HSM work: sequential Encrypt, ${d.backgroundMs / 1000} s`);
    const seq = await sequential(gen, p, model, reqs, d, d.backgroundMs);
    log(`  network model, ${withWork ? 'with' : 'without'} background HSM work: closed loop Encrypt, ${NET_CONNECTIONS} connections`);
    const closed = await closedRun(gen, p, reqs, d);
    return {
      what,
      sequential: seq.load,
      roundTrips: (seq.s1.roundTrips - seq.s0.roundTrips) / Math.max(1, seq.logged.n > 0 ? seq.logged.n : seq.load.completed),
      closed,
      idleRoundTripsPerS: (idle1.roundTrips - idle0.roundTrips) / (d.idleMs / 1000),
      maxOpenSessions: model.status().maxOpenSessions,
    };
  } finally {
    await p.stop();
  }
}

/** Every network-model row of one bench run. */
export async function networkRuns(
  gen: CGenerator,
  token: BenchToken,
  o: { rttMs: number; level: string; poolSize: number },
  d: NetDurations,
  log: (s: string) => void,
): Promise<NetworkResults> {
  const callCost = measureCallCost(o.rttMs, 300);
  log(`  one modelled call of ${o.rttMs} ms costs ${callCost.p50.toFixed(3)} ms here (median of 300 sleeps)`);
  const setup = await openEngine({ modulePath: token.modulePath, pin: token.pin, threads: 1, poolMaxSize: 1, keyCopies: false });
  try {
    await setup.createKey(HEALTH_KEY, { encrypt: true, decrypt: true });
  } finally {
    await setup.close();
  }

  const model = new NetModel(token, 'net');
  const rows: Omit<NetOpRow, 'softhsm' | 'throughputMet'>[] = [];
  const proxy = await startNetProxy(token, o.level, { model });
  try {
    const reqs = await pools(proxy, o.poolSize);
    for (const op of NET_OPS) {
      model.setRtt(0);
      log(`  network model rtt 0: ${op.label}, sequential, ${d.seqMs / 1000} s`);
      const zero = await sequential(gen, proxy, model, reqs[op.key], d, d.seqMs);
      model.setRtt(o.rttMs);
      log(`  network model rtt ${o.rttMs} ms: ${op.label}, sequential, ${d.seqMs / 1000} s`);
      const at = await sequential(gen, proxy, model, reqs[op.key], d, d.seqMs);
      const served = at.logged.n > 0 ? at.logged.n : at.load.completed;
      const roundTrips = (at.s1.roundTrips - at.s0.roundTrips) / Math.max(1, served);
      log(`  network model rtt ${o.rttMs} ms: ${op.label}, closed loop, ${NET_CONNECTIONS} connections, ${d.closedMs / 1000} s`);
      const closed = await closedRun(gen, proxy, reqs[op.key], d);
      const floorMs = zero.load.latencyMs.p50 + roundTrips * callCost.p50;
      rows.push({
        key: op.key,
        label: op.label,
        roundTrips,
        calls: callsBetween(at.s0, at.s1, Math.max(1, served)),
        sequential: at.load,
        logged: at.logged,
        sequentialRtt0: zero.load,
        loggedRtt0: zero.logged,
        floorMs,
        closed,
        // Under one round trip in 20 requests (GetKeyMetadata's background re-checks) the HSM sets no ceiling.
        ceiling: roundTrips >= NO_CEILING_BELOW ? NET_POOL / ((roundTrips * o.rttMs) / 1000) : Infinity,
        p50Met: at.load.latencyMs.p50 <= floorMs + P50_SLACK_MS,
        errorsMet: at.load.errors + zero.load.errors + closed.errors === 0,
      });
    }
  } finally {
    await proxy.stop();
  }

  const direct = await startNetProxy(token, o.level, {});
  const softhsm: Partial<Record<NetOpKey, ClosedRun>> = {};
  try {
    const reqs = await pools(direct, o.poolSize);
    for (const op of NET_OPS) {
      log(`  SoftHSM2 directly, same settings: ${op.label}, closed loop, ${NET_CONNECTIONS} connections, ${d.closedMs / 1000} s`);
      softhsm[op.key] = await closedRun(gen, direct, reqs[op.key], d);
    }
  } finally {
    await direct.stop();
  }

  const ops: NetOpRow[] = rows.map((r) => {
    const s = softhsm[r.key]!;
    return {
      ...r,
      softhsm: s,
      throughputMet: r.closed.throughput >= THROUGHPUT_SHARE * Math.min(r.ceiling, s.throughput),
      errorsMet: r.errorsMet && s.errors === 0,
    };
  });
  const without = await backgroundHalf(gen, token, o.level, o.rttMs, false, o.poolSize, d, log);
  const withWork = await backgroundHalf(gen, token, o.level, o.rttMs, true, o.poolSize, d, log);
  return { rttMs: o.rttMs, callCost, pool: NET_POOL, connections: NET_CONNECTIONS, ops, background: { without, with: withWork } };
}
