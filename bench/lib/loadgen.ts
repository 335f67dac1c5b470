/**
 * The bench's load generator: bench/loadgen.c (one epoll loop, nanosecond sleeps to each
 * due time), compiled with the system C compiler on first use into dist/bench/, one process
 * per job. This file holds the job and result shapes and runs a job through the binary.
 *
 * Closed loop: N connections, each sends its next request as soon as the previous answer
 * is in (maximum throughput; latency from send time). Open loop: request i is due at
 * t0 + i/rate and goes out on whatever connection is free, or waits in the generator's
 * queue; latency runs from the due time, so queueing anywhere counts (no coordinated
 * omission).
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { compileBenchC } from './cc.js';
import { summarize, type LatencySummary } from './stats.js';

export interface Target {
  host: string;
  port: number;
}

interface JobBase {
  target: Target;
  /** Complete HTTP/1.1 requests (request line, headers, body), replayed round-robin. */
  requests: Uint8Array[];
  /** Requests issued but not recorded before the measured window. */
  warmupMs: number;
  /** Measured window. */
  durationMs: number;
  /** Status counted as success. */
  expectStatus: number;
  /** How long to wait for in-flight responses after the window (open loop). */
  drainMs?: number;
}

export interface ClosedJob extends JobBase {
  kind: 'closed';
  connections: number;
}

export interface OpenJob extends JobBase {
  kind: 'open';
  /** Requests per second. */
  rate: number;
  /** Connections opened up front (the most requests in flight at once). */
  connections: number;
}

export type Job = ClosedJob | OpenJob;

export interface LoadResult {
  kind: 'closed' | 'open';
  connections: number;
  /** Target rate (open loop). */
  rate?: number;
  /** Length of the measured window in ms, as it really was. */
  windowMs: number;
  /** Responses received for requests of the measured window. */
  completed: number;
  /** Of the measured window: wrong status + socket failures + never answered. */
  errors: number;
  statusCounts: Record<string, number>;
  socketErrors: number;
  /** Open loop: measured requests without a response when the drain time ran out. */
  unanswered: number;
  /** Completed per second over the window. */
  throughput: number;
  /** Completions per whole second of the window (spread). */
  perSecond: number[];
  /** Open loop: from due time to end of response. Closed loop: from send to end of response. */
  latencyMs: LatencySummary;
  /** Open loop: from due time to the write of the request (generator lateness + queueing for a free connection). */
  sendLagMs?: LatencySummary;
  /** CPU the generator process used during the run, as a fraction of one core. */
  generatorCpu: number;
}

/** Compiles bench/loadgen.c; the reason when no C compiler works. */
export function buildCGenerator(): { binary: string } | { error: string } {
  return compileBenchC('loadgen');
}

export class CGenerator {
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
