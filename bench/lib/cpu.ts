/**
 * CPU accounting for closed loops on a shared machine: the proxy's CPU time per request varies far
 * less with the host's load than its throughput does, and the machine's busy share says whether
 * a row was CPU-bound.
 */
import { readFileSync } from 'node:fs';
import type { LoadResult } from './loadgen.js';

/** CPU time of a process so far (user + system, ms; USER_HZ is 100 on Linux). */
function processCpuMs(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) * 10;
}

/** Idle and total jiffies of the whole machine so far. */
function machineCpu(): { idle: number; total: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  return { idle: f[3]! + f[4]!, total: f.reduce((a, b) => a + b, 0) };
}

/** A closed loop, with the proxy's CPU per request and how busy the machine was meanwhile. */
export interface ClosedRun extends LoadResult {
  /** The proxy process's CPU time per completed request (µs). */
  proxyCpuUsPerRequest: number;
  /** Share of the machine's CPU time not idle during the window (all processes). */
  machineBusy: number;
}

/** Runs `load` (a closed loop without warm-up) and accounts the CPU of process `pid` over it. */
export async function withCpu(pid: number, load: () => Promise<LoadResult>): Promise<ClosedRun> {
  const c0 = processCpuMs(pid);
  const m0 = machineCpu();
  const r = await load();
  const c1 = processCpuMs(pid);
  const m1 = machineCpu();
  return {
    ...r,
    proxyCpuUsPerRequest: ((c1 - c0) * 1000) / Math.max(1, r.completed),
    machineBusy: 1 - (m1.idle - m0.idle) / Math.max(1, m1.total - m0.total),
  };
}
