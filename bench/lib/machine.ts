/** What the bench ran on. */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
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
