/**
 * Messages between the main thread and the worker threads (structured clone over the Worker's
 * port; one port per worker, so messages of one worker arrive in order: its log lines before its
 * 'stopped').
 */
import type { HealthVerdict } from '../hsm/hsm.js';
import type { MetricsSnapshot } from '../metrics.js';

/** workerData of a worker thread. */
export interface WorkerInit {
  /** 1..count-1 (the main thread is 0). */
  index: number;
  count: number;
  /** The settings file the main thread loaded (the worker loads it too, and again on reload). */
  file: string;
  /** The API port the main thread listens on (the worker listens there too: SO_REUSEPORT). */
  port: number;
  poolMaxSize: number;
  threads: number;
  /** The deep health check's verdict when the main thread runs one (forwarded on every change). */
  health: HealthVerdict | undefined;
}

export type ToWorker =
  | { type: 'snapshot'; id: number }
  | { type: 'reload'; id: number }
  | { type: 'health'; verdict: HealthVerdict }
  | { type: 'stop'; drainMs: number };

export type FromWorker =
  | { type: 'ready' }
  | { type: 'failed'; error: string }
  | { type: 'log'; lines: string }
  | { type: 'snapshot'; id: number; snapshot: MetricsSnapshot }
  | { type: 'reloaded'; id: number; ok: boolean; error?: string }
  | { type: 'stopped'; drained: boolean };

export function isWorkerInit(v: unknown): v is WorkerInit {
  if (typeof v !== 'object' || v === null) return false;
  const o = v as Record<string, unknown>;
  return (
    typeof o.index === 'number' &&
    typeof o.count === 'number' &&
    typeof o.file === 'string' &&
    typeof o.port === 'number' &&
    typeof o.poolMaxSize === 'number' &&
    typeof o.threads === 'number'
  );
}
