/**
 * Messages between the main thread and the worker threads (structured clone over the Worker's
 * port; one port per worker, so messages of one worker arrive in order: its log lines before its
 * 'stopped').
 */
import type { AuditInit, AuditServedWithoutMessage } from '../audit/channel.js';
import type { Config, ConfigSecrets, LoadedConfig } from '../config.js';
import { configSecrets, reviveConfig } from '../config.js';
import type { HealthVerdict } from '../hsm/hsm.js';
import type { MetricsSnapshot } from '../metrics.js';

/**
 * The settings the main thread read and applied, as they cross to a worker thread: the structured
 * clone of the Config plus its secrets in their own field (the clone drops non-enumerable properties).
 */
export interface SettingsMessage {
  file: string;
  config: Config;
  secrets: ConfigSecrets;
}

export function toSettingsMessage(loaded: LoadedConfig): SettingsMessage {
  return { file: loaded.file, config: loaded.config, secrets: configSecrets(loaded.config) };
}

/** The worker's side: the same Config as the main thread's (warnings were the main thread's to log). */
export function fromSettingsMessage(m: SettingsMessage): LoadedConfig {
  return { file: m.file, config: reviveConfig(m.config, m.secrets), warnings: [] };
}

/** workerData of a worker thread. */
export interface WorkerInit {
  /** 1..count-1 (the main thread is 0). */
  index: number;
  count: number;
  /** The settings the main thread loaded (a worker never reads the settings file). */
  settings: SettingsMessage;
  /** The API port the main thread listens on (the worker listens there too: SO_REUSEPORT). */
  port: number;
  poolMaxSize: number;
  threads: number;
  /** Absent: `threads` serve; else the engine adapts its serving threads (src/workers/split.ts). */
  adaptCores?: number;
  /** The deep health check's verdict when the main thread runs one (forwarded on every change). */
  health: HealthVerdict | undefined;
  /** The audit trail's mode when [audit] is on (the records go to the process's writer thread). */
  audit?: AuditInit | undefined;
}

export type ToWorker =
  | { type: 'snapshot'; id: number }
  | { type: 'reload'; id: number; settings: SettingsMessage }
  | { type: 'health'; verdict: HealthVerdict }
  | { type: 'stop'; drainMs: number };

export type FromWorker =
  | { type: 'ready' }
  | { type: 'failed'; error: string }
  | { type: 'log'; lines: string }
  | { type: 'snapshot'; id: number; snapshot: MetricsSnapshot }
  | { type: 'reloaded'; id: number; ok: boolean; error?: string }
  | { type: 'stopped'; drained: boolean }
  | AuditServedWithoutMessage;

export function isWorkerInit(v: unknown): v is WorkerInit {
  if (typeof v !== 'object' || v === null) return false;
  const o = v as Record<string, unknown>;
  return (
    typeof o.index === 'number' &&
    typeof o.count === 'number' &&
    typeof o.settings === 'object' &&
    o.settings !== null &&
    typeof o.port === 'number' &&
    typeof o.poolMaxSize === 'number' &&
    typeof o.threads === 'number'
  );
}
