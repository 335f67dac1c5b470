/**
 * The machine's thread wake-up latency (bench/wakeup.c): one thread wakes another
 * through an eventfd once every `gapUs`, the way the proxy's event loop wakes an HSM
 * thread and is woken back. The floor under any design with a thread hand-off.
 */
import { execFile } from 'node:child_process';
import { compileBenchC } from './cgen.js';

export type WakeupMode = 'any' | 'cross' | 'same';

export interface WakeupLatency {
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

const WAKEUP_MODES: readonly WakeupMode[] = ['any', 'cross', 'same'];

/** One measurement per mode; a mode the machine cannot set up (one CPU) is left out. */
export async function wakeupLatencies(
  count: number,
  gapUs: number,
): Promise<{ gapUs: number; modes: WakeupLatency[] } | { error: string }> {
  const c = compileBenchC('wakeup');
  if ('error' in c) return { error: c.error };
  const modes: WakeupLatency[] = [];
  for (const mode of WAKEUP_MODES) {
    const line = await new Promise<string>((resolve, reject) => {
      execFile(c.binary, [mode, String(count), String(gapUs)], { timeout: 30_000 + (count * gapUs) / 500 }, (err, stdout, stderr) => {
        if (err) reject(new Error(`wakeup ${mode}: ${stderr.trim() || err.message}`));
        else resolve(stdout.trim());
      });
    });
    const r = JSON.parse(line) as WakeupLatency | { mode: WakeupMode; skipped: string };
    if (!('skipped' in r)) modes.push(r);
  }
  return { gapUs, modes };
}
