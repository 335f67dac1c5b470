/**
 * The main thread's side of `[server] workers`: starts the worker threads (src/workers/thread.ts),
 * writes their log lines through its own logger, makes the /metrics text of the [metrics] listener
 * (the sum over all event loops), forwards reloads and the deep health check's verdict, and stops
 * them (drain, close connections, close engines) before the process exits.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { AuditWriter } from '../audit/writer.js';
import type { LoadedConfig } from '../config.js';
import type { HealthVerdict } from '../hsm/hsm.js';
import type { BufferedLogger } from '../log.js';
import { Metrics, sumGauges, type MetricsSnapshot } from '../metrics.js';
import { toSettingsMessage, type FromWorker, type SettingsMessage, type ToWorker, type WorkerInit } from './protocol.js';

/** dist/src/workers/thread.js next to this file, or (running from src/ under a TypeScript loader) the compiled one. */
function threadScript(): URL {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [path.join(here, 'thread.js'), path.resolve(here, '../../dist/src/workers/thread.js')];
  const found = candidates.find((c) => existsSync(c));
  if (found === undefined) throw new Error(`worker thread script not found (run npm run build:ts): ${candidates.join(', ')}`);
  return pathToFileURL(found);
}

const RPC_TIMEOUT_MS = 5000;

interface Pending {
  resolve(m: FromWorker): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

class WorkerHandle {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  readonly exited: Promise<number>;
  stopped: { drained: boolean } | undefined;
  /** The audit writer, which logs the worker's 200s sent without their record (fail-open). */
  audit: AuditWriter | undefined;

  constructor(
    readonly index: number,
    readonly worker: Worker,
    private readonly log: BufferedLogger,
    readonly ready: Promise<void>,
  ) {
    this.exited = new Promise((resolve) => worker.once('exit', (code) => resolve(code)));
  }

  post(m: ToWorker): void {
    this.worker.postMessage(m);
  }

  request(m: { type: 'snapshot' } | { type: 'reload'; settings: SettingsMessage }, timeoutMs = RPC_TIMEOUT_MS): Promise<FromWorker> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`worker ${this.index} did not answer ${m.type} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.post({ ...m, id });
    });
  }

  /** Handles one message from the worker (everything but 'ready' and 'failed'). */
  handle(m: FromWorker): void {
    switch (m.type) {
      case 'log':
        this.log.raw(m.lines);
        break;
      case 'snapshot':
      case 'reloaded': {
        const p = this.pending.get(m.id);
        if (p === undefined) return;
        this.pending.delete(m.id);
        clearTimeout(p.timer);
        p.resolve(m);
        break;
      }
      case 'stopped':
        this.stopped = { drained: m.drained };
        break;
      case 'audit-served-without':
        this.audit?.servedWithout();
        break;
      default:
        break;
    }
  }

  failAll(why: string): void {
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new Error(why));
    }
    this.pending.clear();
  }
}

export interface PoolOptions {
  /** The settings the main thread loaded; the workers get them parsed (they never read the file). */
  loaded: LoadedConfig;
  /** All event loops, the main thread included (>= 2 for a pool). */
  count: number;
  /** The API port the main thread listens on. */
  port: number;
  /** Session pool and addon threads of loops 1..count-1 (index 0 is the main thread's). */
  shares: readonly { poolMaxSize: number; threads: number; adaptCores?: number }[];
  health: HealthVerdict | undefined;
  log: BufferedLogger;
  /** The audit trail's one writer (every loop's records go to its thread); undefined without [audit]. */
  audit?: AuditWriter | undefined;
  /** The main thread's own metrics (event loop 0); undefined when [metrics] is off. */
  metrics: Metrics | undefined;
  version: string;
}

export class WorkerPool {
  private stopping: Promise<boolean> | undefined;

  private constructor(
    private readonly workers: WorkerHandle[],
    private readonly options: PoolOptions,
  ) {}

  /** Starts count - 1 worker threads; resolves when all listen, rejects (after stopping the others) when one cannot. */
  static async start(options: PoolOptions): Promise<WorkerPool> {
    const script = threadScript();
    const { log } = options;
    const handles: WorkerHandle[] = [];
    for (let index = 1; index < options.count; index++) {
      const share = options.shares[index]!;
      const init: WorkerInit = {
        index,
        count: options.count,
        settings: toSettingsMessage(options.loaded),
        port: options.port,
        poolMaxSize: share.poolMaxSize,
        threads: share.threads,
        adaptCores: share.adaptCores,
        health: options.health,
        audit: options.audit?.init(),
      };
      const worker = new Worker(script, { workerData: init, execArgv: [] });
      let handle: WorkerHandle | undefined;
      let serving = false;
      const ready = new Promise<void>((resolve, reject) => {
        worker.on('message', (m: FromWorker) => {
          if (m.type === 'ready') {
            serving = true;
            resolve();
          } else if (m.type === 'failed') reject(new Error(`worker ${index}: ${m.error}`));
          else handle?.handle(m);
        });
        worker.on('error', (e) => {
          log.error('worker thread failed', { thread: index, error: e.message });
          reject(new Error(`worker ${index}: ${e.message}`));
        });
        worker.once('exit', (code) => {
          handle?.failAll(`worker ${index} exited`);
          if (serving && handle?.stopped === undefined) log.error('worker thread exited unexpectedly', { thread: index, code });
          reject(new Error(`worker ${index} exited with code ${code} before it was ready`));
        });
      });
      handle = new WorkerHandle(index, worker, log, ready);
      handle.audit = options.audit;
      handles.push(handle);
    }
    const outcomes = await Promise.allSettled(handles.map((h) => h.ready));
    const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
    if (failed !== undefined) {
      const pool = new WorkerPool(handles, options);
      await pool.stop(0);
      throw failed.reason instanceof Error ? failed.reason : new Error(String(failed.reason));
    }
    return new WorkerPool(handles, options);
  }

  /** Worker threads (event loops besides the main thread). */
  get size(): number {
    return this.workers.length;
  }

  /** The /metrics text: every loop's counters and histograms added up, gauges summed, plus requests per loop. */
  async metricsText(): Promise<string> {
    const own = this.options.metrics;
    if (own === undefined) throw new Error('metrics are off ([metrics] enabled = false)');
    const others = await Promise.all(
      this.workers.map(async (w) => {
        const m = await w.request({ type: 'snapshot' });
        if (m.type !== 'snapshot') throw new Error('unexpected answer');
        return m.snapshot;
      }),
    );
    const all: MetricsSnapshot[] = [own.snapshot(), ...others];
    const total = new Metrics(this.options.version, () => sumGauges(all.map((s) => s.gauges)));
    for (const s of all) total.merge(s);
    const perLoop = all.map((s, i) => {
      let n = 0;
      for (const r of s.routes) for (const [, c] of r.outcomes) n += c;
      return `xks_worker_requests_total{worker="${i}"} ${n}`;
    });
    return (
      total.render() +
      '# HELP xks_worker_requests_total XKS API requests answered by each event loop ([server] workers; 0 is the main thread).\n' +
      '# TYPE xks_worker_requests_total counter\n' +
      `${perLoop.join('\n')}\n` +
      '# HELP xks_workers Event loops serving the API port.\n# TYPE xks_workers gauge\n' +
      `xks_workers ${all.length}\n`
    );
  }

  /** Every worker applies `next`, the settings the main thread read and applied; errors name the worker. */
  async reload(next: LoadedConfig): Promise<{ ok: boolean; errors: string[] }> {
    const settings = toSettingsMessage(next);
    const results = await Promise.allSettled(this.workers.map((w) => w.request({ type: 'reload', settings }, 30_000)));
    const errors: string[] = [];
    results.forEach((r, i) => {
      if (r.status === 'rejected') errors.push(`worker ${i + 1}: ${r.reason instanceof Error ? r.reason.message : String(r.reason)}`);
      else if (r.value.type === 'reloaded' && !r.value.ok) errors.push(`worker ${i + 1}: ${r.value.error ?? 'refused'}`);
    });
    return { ok: errors.length === 0, errors };
  }

  /** The deep health check's new verdict, for GetHealthStatus on every loop. */
  pushHealth(verdict: HealthVerdict): void {
    for (const w of this.workers) if (w.stopped === undefined) w.post({ type: 'health', verdict });
  }

  /**
   * Drains every worker (bounded by drainMs), closes their connections and engines and waits until
   * the threads have ended; true when all drained in time.
   */
  stop(drainMs: number): Promise<boolean> {
    this.stopping ??= (async () => {
      for (const w of this.workers) w.post({ type: 'stop', drainMs });
      const bound = drainMs + 10_000;
      const results = await Promise.all(
        this.workers.map(async (w) => {
          let timer: NodeJS.Timeout | undefined;
          const timeout = new Promise<'timeout'>((resolve) => {
            timer = setTimeout(() => resolve('timeout'), bound);
          });
          const r = await Promise.race([w.exited, timeout]);
          clearTimeout(timer);
          if (r === 'timeout') {
            this.options.log.error('worker thread did not stop in time', { thread: w.index, waited_ms: bound });
            return false;
          }
          return w.stopped?.drained === true;
        }),
      );
      return results.every((x) => x);
    })();
    return this.stopping;
  }
}
