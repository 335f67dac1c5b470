/**
 * End-to-end runs: the empty uWebSockets.js server (HTTP ceiling and load generator
 * ceiling), wrk as a cross-check, and the real proxy process on a SoftHSM2 token.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { CGenerator, LoadResult } from './lib/loadgen.js';
import { startProxyProcess, startUwsEmpty, freePort, type Store } from './lib/procs.js';
import { decryptBody, encryptBodies, sendAll, signAll, type SignedRequest } from './lib/requests.js';
import { makeSigner } from './lib/sign.js';
import { KEY_LABEL, type BenchToken } from './lib/token.js';

export interface Durations {
  warmupMs: number;
  closedMs: number;
  openMs: number;
  /** Longer window at the low rate, so p99.9 has enough samples. */
  openLowMs: number;
  drainMs: number;
}

export const FULL: Durations = { warmupMs: 1000, closedMs: 5000, openMs: 5000, openLowMs: 8000, drainMs: 2000 };
export const QUICK: Durations = { warmupMs: 300, closedMs: 1000, openMs: 1000, openLowMs: 1000, drainMs: 1000 };

export const RATES = [1800, 10000] as const;
export const CLOSED_CONNECTIONS = 32;
export const OPEN_CONNECTIONS = 64;

export type OpKey = 'encrypt32' | 'decrypt32' | 'encrypt4300';
export const OPS: { key: OpKey; label: string }[] = [
  { key: 'encrypt32', label: 'encrypt 32 B + 64 B AAD' },
  { key: 'decrypt32', label: 'decrypt of that' },
  { key: 'encrypt4300', label: 'encrypt 4300 B + 64 B AAD' },
];

export interface OpResults {
  closed: LoadResult;
  open: Record<string, LoadResult>;
}

export interface HttpCeilings {
  /** The generator used for every e2e figure. */
  generator: string;
  closed: LoadResult;
  open: Record<string, LoadResult>;
  /** wrk -t1 against the same server and request, requests/s (undefined when wrk is missing or in --quick). */
  wrkRps: number | undefined;
}

const host = (port: number): string => `127.0.0.1:${port}`;

async function closedAndOpen(
  gen: CGenerator,
  port: number,
  requests: Uint8Array[],
  d: Durations,
  log: (s: string) => void,
  what: string,
): Promise<OpResults> {
  const target = { host: '127.0.0.1', port };
  log(`  ${what}: closed loop, ${CLOSED_CONNECTIONS} connections, ${d.closedMs / 1000} s`);
  const closed = await gen.run({
    kind: 'closed',
    target,
    requests,
    connections: CLOSED_CONNECTIONS,
    warmupMs: d.warmupMs,
    durationMs: d.closedMs,
    expectStatus: 200,
  });
  const open: Record<string, LoadResult> = {};
  for (const rate of RATES) {
    const ms = rate === RATES[0] ? d.openLowMs : d.openMs;
    log(`  ${what}: open loop ${rate} req/s, ${ms / 1000} s`);
    open[rate] = await gen.run({
      kind: 'open',
      target,
      requests,
      rate,
      connections: OPEN_CONNECTIONS,
      warmupMs: d.warmupMs,
      durationMs: ms,
      expectStatus: 200,
      drainMs: d.drainMs,
    });
  }
  return { closed, open };
}

function wrk(port: number, body: string, seconds: number, dir: string): Promise<number | undefined> {
  const script = path.join(dir, 'wrk-post.lua');
  writeFileSync(script, `wrk.method = "POST"\nwrk.body = ${JSON.stringify(body)}\nwrk.headers["Content-Type"] = "application/json"\n`);
  return new Promise((resolve) => {
    execFile(
      'wrk',
      ['-t1', `-c${CLOSED_CONNECTIONS}`, `-d${seconds}s`, '-s', script, `http://127.0.0.1:${port}/bench`],
      { timeout: (seconds + 10) * 1000 },
      (err, stdout) => {
        if (err) {
          resolve(undefined);
          return;
        }
        const m = /Requests\/sec:\s*([\d.]+)/.exec(stdout);
        resolve(m ? Number(m[1]) : undefined);
      },
    );
  });
}

/** A key store with fresh credentials for one proxy process of the bench. */
export function benchStore(): Store {
  return {
    prefix: '/bench/prefix',
    accessKeyId: 'AKIA' + randomBytes(8).toString('hex').toUpperCase(),
    secretAccessKey: randomBytes(30).toString('base64'),
    keys: [KEY_LABEL],
  };
}

/** The HTTP ceiling: the same generator (and wrk) against an empty uWebSockets.js handler. */
export async function httpCeilings(
  gen: CGenerator,
  sample: SignedRequest[],
  d: Durations,
  quick: boolean,
  dir: string,
  log: (s: string) => void,
): Promise<HttpCeilings> {
  const server = await startUwsEmpty();
  try {
    const requests = sample.map((r) => r.raw);
    const r = await closedAndOpen(gen, server.port, requests, d, log, `empty uWS handler, ${gen.name} generator`);
    let wrkRps: number | undefined;
    if (!quick) {
      log('  empty uWS handler: wrk -t1 cross-check, 3 s');
      wrkRps = await wrk(server.port, sample[0]!.body, 3, dir);
    }
    return { generator: gen.name, ...r, wrkRps };
  } finally {
    await server.stop();
  }
}

export interface ProxyRun {
  results: Record<OpKey, OpResults>;
  logFile: string;
  /** Exit code of the proxy after SIGTERM. */
  exitCode: number | null;
}

/** Starts the proxy, builds pre-signed request pools, runs every op. */
export async function proxyRuns(
  gen: CGenerator,
  token: BenchToken,
  opts: { poolMaxSize: number; workerThreads: number; level: string; poolSize: number; nodeArgs: string[]; workers?: number },
  d: Durations,
  log: (s: string) => void,
): Promise<ProxyRun> {
  const port = await freePort();
  const store = benchStore();
  const proxy = await startProxyProcess(
    { token, port, store, poolMaxSize: opts.poolMaxSize, workerThreads: opts.workerThreads, level: opts.level, workers: opts.workers },
    opts.nodeArgs,
  );
  const signer = makeSigner(store);
  const base = `http://${host(port)}`;
  const encPath = `${store.prefix}/kms/xks/v1/keys/${KEY_LABEL}/encrypt`;
  const decPath = `${store.prefix}/kms/xks/v1/keys/${KEY_LABEL}/decrypt`;
  const results = {} as Record<OpKey, OpResults>;
  let exitCode: number | null = null;
  try {
    for (const op of OPS) {
      // Signed right before use: a signature stays valid for 5 minutes.
      let pool: SignedRequest[];
      if (op.key === 'encrypt32') {
        pool = await signAll(signer, host(port), encPath, encryptBodies(opts.poolSize, 32, 64));
      } else if (op.key === 'encrypt4300') {
        pool = await signAll(signer, host(port), encPath, encryptBodies(opts.poolSize, 4300, 64));
      } else {
        const enc = await signAll(signer, host(port), encPath, encryptBodies(opts.poolSize, 32, 64));
        const sealed = await sendAll(base, enc);
        const bodies = sealed.map((s, i) =>
          decryptBody({
            ciphertext: String(s.ciphertext),
            initializationVector: String(s.initializationVector),
            authenticationTag: String(s.authenticationTag),
            aad: String((JSON.parse(enc[i]!.body) as { additionalAuthenticatedData: string }).additionalAuthenticatedData),
          }),
        );
        pool = await signAll(signer, host(port), decPath, bodies);
      }
      // One checked request through fetch first: a pool the proxy rejects is a bench bug.
      await sendAll(base, pool.slice(0, 4), 1);
      results[op.key] = await closedAndOpen(
        gen,
        port,
        pool.map((r) => r.raw),
        d,
        log,
        `proxy ${op.label}`,
      );
    }
  } catch (e) {
    await new Promise((r) => setTimeout(r, 100));
    const gone = proxy.exited();
    if (gone !== undefined) {
      let tail = '';
      try {
        tail = readFileSync(proxy.logFile, 'utf8').split('\n').slice(-6).join('\n');
      } catch {
        // no log
      }
      throw new Error(`the proxy process died during the run: ${gone}\nlast log lines:\n${tail}`);
    }
    throw e;
  } finally {
    exitCode = await proxy.stop();
  }
  return { results, logFile: proxy.logFile, exitCode };
}

export interface ScalingPoint {
  /** [server] workers of the proxy process. */
  workers: number;
  /** [pkcs11] session_key_copies (absent in older results: true). */
  keyCopies?: boolean;
  closed: LoadResult;
  /** Exit code after SIGTERM. */
  exitCode: number | null;
}

/**
 * Closed-loop encrypt 32 B throughput of the proxy with 1, 2, ... event loops ([server] workers),
 * same session pool and HSM threads in total: how the proxy scales over cores; and with
 * session_key_copies off: what the copies bring.
 */
export async function scalingRuns(
  gen: CGenerator,
  token: BenchToken,
  opts: { poolMaxSize: number; workerThreads: number; level: string; poolSize: number },
  points: readonly { workers: number; keyCopies: boolean }[],
  d: Durations,
  log: (s: string) => void,
): Promise<ScalingPoint[]> {
  const out: ScalingPoint[] = [];
  for (const { workers, keyCopies } of points) {
    const port = await freePort();
    const store = benchStore();
    const proxy = await startProxyProcess({
      token,
      port,
      store,
      poolMaxSize: opts.poolMaxSize,
      workerThreads: opts.workerThreads,
      level: opts.level,
      workers,
      keyCopies,
    });
    let closed: LoadResult | undefined;
    let exitCode: number | null = null;
    try {
      const pool = await signAll(
        makeSigner(store),
        host(port),
        `${store.prefix}/kms/xks/v1/keys/${KEY_LABEL}/encrypt`,
        encryptBodies(opts.poolSize, 32, 64),
      );
      await sendAll(`http://${host(port)}`, pool.slice(0, 4), 1);
      log(
        `  proxy, workers = ${workers}, session_key_copies = ${keyCopies}: closed loop encrypt 32 B, ${CLOSED_CONNECTIONS} connections, ${d.closedMs / 1000} s`,
      );
      closed = await gen.run({
        kind: 'closed',
        target: { host: '127.0.0.1', port },
        requests: pool.map((r) => r.raw),
        connections: CLOSED_CONNECTIONS,
        warmupMs: d.warmupMs,
        durationMs: d.closedMs,
        expectStatus: 200,
      });
    } finally {
      exitCode = await proxy.stop();
    }
    out.push({ workers, keyCopies, closed, exitCode });
  }
  return out;
}
