/**
 * How `[server] workers` event loops share the process's limits: the PKCS#11 session pool
 * (session_pool_max_size) and the addon's threads (worker_threads) are split between the loops'
 * engines so that the totals stay as configured (each loop gets at least 1). With worker_threads
 * unset, each engine adapts its serving threads below its share, keeping about its share of the
 * CPUs that the event loops leave busy (adaptCores; native/workers.cc).
 */
import { availableParallelism } from 'node:os';
import type { Config } from '../config.js';

/** `total` split into `n` near-equal integer shares, larger ones first, each at least 1. */
export function splitEvenly(total: number, n: number): number[] {
  const base = Math.floor(total / n);
  const rem = total % n;
  return Array.from({ length: n }, (_, i) => Math.max(1, base + (i < rem ? 1 : 0)));
}

export interface WorkerPlan {
  /** Event loops: the main thread (index 0) and count - 1 worker threads. */
  count: number;
  /** Per loop: session pool size and addon threads of its engine; adaptCores absent = fixed threads. */
  shares: { poolMaxSize: number; threads: number; adaptCores?: number }[];
  /** Operator notes (one line each) about adjustments. */
  notes: string[];
}

/**
 * The plan for a config: `[server] workers`, default os.availableParallelism(). With mTLS the Node
 * TLS terminator in the main thread owns the port, so one loop serves (a note says so).
 */
export function planWorkers(config: Config, parallelism: number = availableParallelism()): WorkerPlan {
  const notes: string[] = [];
  let count = config.server.workers ?? parallelism;
  const mtls = config.security.is_tls_enabled && config.security.is_mtls_enabled;
  if (mtls && count > 1) {
    if (config.server.workers !== undefined)
      notes.push(`server.workers = ${count} ignored: with mTLS one event loop serves behind the TLS terminator`);
    count = 1;
  }
  const pool = splitEvenly(config.pkcs11.session_pool_max_size, count);
  const threads = splitEvenly(config.pkcs11.worker_threads, count);
  // The CPUs left to HSM threads once every event loop has its own (at least 1 per loop): with
  // one loop on 2 CPUs, 1 SoftHSM2 thread beat 2 by 10-25 % (bench/experiments/adaptive-threads.ts).
  const cores = splitEvenly(Math.max(count, parallelism - count), count);
  const adaptive = config.pkcs11.worker_threads_adaptive;
  if (count > config.pkcs11.session_pool_max_size) {
    notes.push(
      `server.workers = ${count} > pkcs11.session_pool_max_size = ${config.pkcs11.session_pool_max_size}: each event loop gets 1 session, ${count} in total`,
    );
  }
  if (!adaptive && count > config.pkcs11.worker_threads) {
    notes.push(
      `server.workers = ${count} > pkcs11.worker_threads = ${config.pkcs11.worker_threads}: each event loop gets 1 HSM thread, ${count} in total`,
    );
  }
  const shares = pool.map((p, i) => ({ poolMaxSize: p, threads: threads[i]!, adaptCores: adaptive ? cores[i]! : undefined }));
  return { count, shares, notes };
}
