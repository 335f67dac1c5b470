/**
 * The C load generator (bench/loadgen.c): compiled with the system C compiler on
 * first use into dist/bench/, one process per job. Same job and result shapes as the
 * Node generator.
 */
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Job, LoadResult } from '../loadgen.js';
import { summarize } from './stats.js';
import { watchKernelDaemons } from './machine.js';
import { ROOT } from './procs.js';

export interface Generator {
  readonly name: string;
  run(job: Job): Promise<LoadResult>;
  close(): Promise<void>;
}

/** The same generator; each result also says what the kernel's memory daemons took meanwhile. */
export function watchingKernelDaemons(gen: Generator): Generator {
  return {
    name: gen.name,
    async run(job: Job): Promise<LoadResult> {
      const took = watchKernelDaemons();
      const r = await gen.run(job);
      return { ...r, kernelDaemons: took() };
    },
    close: () => gen.close(),
  };
}

/** Compiles bench/NAME.c into dist/bench/NAME-c unless the binary is newer; the reason when no compiler works. */
export function compileBenchC(name: string): { binary: string } | { error: string } {
  const src = path.join(ROOT, 'bench', `${name}.c`);
  const binary = path.join(ROOT, 'dist', 'bench', `${name}-c`);
  try {
    if (existsSync(binary) && statSync(binary).mtimeMs >= statSync(src).mtimeMs) return { binary };
    execFileSync(process.env.CC ?? 'cc', ['-O2', '-pthread', '-o', binary, src], { stdio: ['ignore', 'ignore', 'pipe'] });
    return { binary };
  } catch (e) {
    return { error: e instanceof Error ? e.message.split('\n')[0]! : String(e) };
  }
}

/** The C load generator (bench/loadgen.c). */
export function buildCGenerator(): { binary: string } | { error: string } {
  return compileBenchC('loadgen');
}

export class CGenerator implements Generator {
  readonly name = 'C (epoll_pwait2)';
  private readonly dir = mkdtempSync(path.join(os.tmpdir(), 'xks-loadgen-'));
  private lastRequests: Uint8Array[] | undefined;
  private readonly reqFile = path.join(this.dir, 'requests.bin');

  constructor(private readonly binary: string) {}

  async run(job: Job): Promise<LoadResult> {
    if (this.lastRequests !== job.requests) {
      const parts: Buffer[] = [];
      const n = Buffer.alloc(4);
      n.writeUInt32LE(job.requests.length);
      parts.push(n);
      for (const r of job.requests) {
        const l = Buffer.alloc(4);
        l.writeUInt32LE(r.length);
        parts.push(l, Buffer.from(r.buffer, r.byteOffset, r.byteLength));
      }
      writeFileSync(this.reqFile, Buffer.concat(parts));
      this.lastRequests = job.requests;
    }
    const outFile = path.join(this.dir, 'out.bin');
    const rate = job.kind === 'open' ? job.rate : 0;
    const args = [
      job.kind,
      job.target.host,
      String(job.target.port),
      String(rate),
      String(job.connections),
      String(job.warmupMs),
      String(job.durationMs),
      String(job.drainMs ?? 2000),
      this.reqFile,
      outFile,
    ];
    await new Promise<void>((resolve, reject) => {
      execFile(this.binary, args, { timeout: job.warmupMs + job.durationMs + (job.drainMs ?? 2000) + 15000 }, (err, _out, stderr) => {
        if (err) reject(new Error(`C load generator: ${stderr.trim() || err.message}`));
        else resolve();
      });
    });
    return parse(readFileSync(outFile), job);
  }

  close(): Promise<void> {
    rmSync(this.dir, { recursive: true, force: true });
    return Promise.resolve();
  }
}

function parse(b: Buffer, job: Job): LoadResult {
  const windowMs = b.readDoubleLE(0);
  const generatorCpu = b.readDoubleLE(8);
  const socketErrors = b.readInt32LE(16);
  const n = b.readInt32LE(20);
  const lat = new Float64Array(n);
  const lag = new Float64Array(n);
  let nLag = 0;
  const statusCounts: Record<string, number> = {};
  const seconds: number[] = [];
  let errors = 0;
  let unanswered = 0;
  let completed = 0;
  for (let i = 0; i < n; i++) {
    const o = 24 + i * 32;
    lat[i] = b.readDoubleLE(o);
    const lg = b.readDoubleLE(o + 8);
    if (lg >= 0) lag[nLag++] = lg;
    const done = b.readDoubleLE(o + 16);
    const status = b.readInt32LE(o + 24);
    if (status === -1) {
      unanswered++;
      errors++;
      continue;
    }
    statusCounts[status] = (statusCounts[status] ?? 0) + 1;
    if (status !== job.expectStatus) errors++;
    else completed++;
    const sec = Math.floor(done / 1000);
    if (sec >= 0) seconds[sec] = (seconds[sec] ?? 0) + 1;
  }
  const base = {
    connections: job.connections,
    windowMs,
    completed: job.kind === 'closed' ? n : completed,
    errors,
    statusCounts,
    socketErrors,
    unanswered,
    throughput: ((job.kind === 'closed' ? n : completed) * 1000) / windowMs,
    perSecond: seconds.slice(0, Math.floor(windowMs / 1000)).map((v) => v ?? 0),
    latencyMs: summarize(lat),
    generatorCpu,
  };
  return job.kind === 'closed'
    ? { kind: 'closed', ...base }
    : { kind: 'open', rate: job.rate, ...base, sendLagMs: summarize(lag.subarray(0, nLag)) };
}
