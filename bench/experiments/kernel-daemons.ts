/**
 * Experiment (not a regression figure): how much CPU the kernel's memory daemons take, and
 * in how many slices, over a window. Run it beside a load, e.g. `npm run bench` in another
 * shell, to see whether they steal a vCPU from the proxy or the generator:
 *
 *   npm run build:ts && node dist/bench/experiments/kernel-daemons.js [--seconds 30] [--every 5]
 */
import { performance } from 'node:perf_hooks';
import { readdirSync, readFileSync } from 'node:fs';
import { parseArgs } from '../lib/args.js';

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
function watchKernelDaemons(): () => KernelDaemons {
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

const args = parseArgs('node dist/bench/experiments/kernel-daemons.js [options]', {
  seconds: { type: 'number', help: 'how long to watch', default: 30 },
  every: { type: 'number', help: 'print a line every N seconds', default: 5 },
});

async function main(): Promise<void> {
  if (!(args.seconds > 0) || !(args.every > 0)) throw new Error('--seconds and --every must be positive');
  const whole = watchKernelDaemons();
  const end = Date.now() + args.seconds * 1000;
  while (Date.now() < end) {
    const part = watchKernelDaemons();
    await new Promise((r) => setTimeout(r, Math.min(args.every * 1000, end - Date.now())));
    process.stdout.write(`${line(part())}\n`);
  }
  process.stdout.write(`whole window: ${line(whole())}\n`);
}

function line(k: KernelDaemons): string {
  const perS = k.overMs > 0 ? k.cpuMs / (k.overMs / 1000) : 0;
  return `${(k.overMs / 1000).toFixed(1)} s: ${k.names.length ? k.names.join('+') : 'no daemon ran'} ${k.cpuMs.toFixed(1)} ms CPU (${perS.toFixed(1)} ms/s) in ${k.slices} slices`;
}

main().catch((e: unknown) => {
  process.stderr.write(`kernel-daemons: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
