/** What the bench ran on. */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';

export interface Machine {
  cpuModel: string;
  /** Logical CPUs the OS reports. */
  cpus: number;
  /** CPUs this process may use (cgroup/affinity aware when Node knows). */
  availableParallelism: number;
  memGiB: number;
  kernel: string;
  node: string;
  v8: string;
  softhsm: string;
  gitCommit: string;
  /** 1-minute load average when the bench started: above ~0.5 the machine was busy with something else. */
  loadAvg1: number;
}

function cpuModel(): string {
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) return m[1]!.trim();
  } catch {
    // not Linux
  }
  return os.cpus()[0]?.model ?? 'unknown';
}

function run(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'ignore'] })
      .toString('utf8')
      .trim();
  } catch {
    return 'unknown';
  }
}

export function describeMachine(): Machine {
  return {
    cpuModel: cpuModel(),
    cpus: os.cpus().length,
    availableParallelism: os.availableParallelism(),
    memGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    kernel: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    v8: process.versions.v8,
    softhsm: run('softhsm2-util', ['--version']),
    gitCommit: run('git', ['rev-parse', '--short', 'HEAD']),
    loadAvg1: Math.round(os.loadavg()[0]! * 100) / 100,
  };
}

/**
 * The kernel's memory-management threads (DAMON's kdamond, kswapd, kcompactd, khugepaged).
 * Measured on the bench VM: its platform runs a DAMON pageout scheme whose kdamond holds a
 * vCPU for 3-4 ms slices every 500 ms, and any thread woken on that vCPU meanwhile (the
 * generator's, the proxy's) waits behind it (README, "Where the tail comes from").
 */
const DAEMON = /^(kdamond|kswapd|kcompactd|khugepaged)/;

export interface KernelDaemons {
  /** CPU the daemons used during the run, ms (from /proc/PID/schedstat, ns precision). */
  cpuMs: number;
  /** Time slices they ran in. */
  slices: number;
  /** Their names, e.g. kdamond.0 (those that ran). */
  names: string[];
  /** Wall time watched, ms (the whole run: warm-up, window and drain). */
  overMs: number;
}

interface DaemonSample {
  pid: string;
  name: string;
  ns: number;
  slices: number;
}

/** The daemons' counters now: those found in /proc, or again those of an earlier sample. */
function sampleDaemons(known?: readonly DaemonSample[]): DaemonSample[] {
  const out: DaemonSample[] = [];
  let candidates: readonly { pid: string; name: string }[];
  if (known !== undefined) {
    candidates = known;
  } else {
    const found: { pid: string; name: string }[] = [];
    let entries: string[] = [];
    try {
      entries = readdirSync('/proc').filter((e) => /^\d+$/.test(e));
    } catch {
      return out; // not Linux
    }
    for (const pid of entries) {
      try {
        const name = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
        if (DAEMON.test(name)) found.push({ pid, name });
      } catch {
        // gone
      }
    }
    candidates = found;
  }
  for (const c of candidates) {
    try {
      const [run, , slices] = readFileSync(`/proc/${c.pid}/schedstat`, 'utf8').trim().split(' ').map(Number);
      out.push({ pid: c.pid, name: c.name, ns: run ?? 0, slices: slices ?? 0 });
    } catch {
      // gone (a daemon switched off mid-run): its share is not counted
    }
  }
  return out;
}

/** Starts watching; the returned function gives what the daemons used since. */
export function watchKernelDaemons(): () => KernelDaemons {
  const before = sampleDaemons();
  const t0 = performance.now();
  return () => {
    const after = sampleDaemons(before);
    let ns = 0;
    let slices = 0;
    const names = new Set<string>();
    for (const a of after) {
      const b = before.find((x) => x.pid === a.pid);
      if (b === undefined) continue;
      const d = a.ns - b.ns;
      if (d > 0) names.add(a.name);
      ns += Math.max(0, d);
      slices += Math.max(0, a.slices - b.slices);
    }
    return { cpuMs: ns / 1e6, slices, names: [...names], overMs: performance.now() - t0 };
  };
}
