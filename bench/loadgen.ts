/**
 * The bench's HTTP/1.1 load generator. Runs in its own process (forked by
 * bench/lib/loadgen-client.ts), talks to the target over raw `net` sockets with
 * keep-alive, replays pre-built request bytes, and parses responses minimally
 * (status line + Content-Length).
 *
 * Two modes:
 *  - closed loop: N connections, each sends its next request as soon as the
 *    previous response is in (maximum throughput);
 *  - open loop: request i is due at t0 + i/rate, whatever happened before. It is
 *    sent on whatever connection is free; if none is, it waits in the generator's
 *    queue. Latency runs from the DUE time to the end of the response, so time
 *    spent queued (in the generator or the server) counts: no coordinated omission.
 *
 * Precision: libuv timers have 1 ms granularity, so when the next due time is
 * under ~1.5 ms away the scheduler spins through setImmediate (the event loop
 * still polls sockets with a zero timeout between spins). This costs one CPU
 * core while an open-loop run is going; the lag between due and actual send time
 * is measured and reported so the generator's own share is visible.
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { summarize, type LatencySummary } from './lib/stats.js';
import type { KernelDaemons } from './lib/machine.js';

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
  /** The kernel's memory daemons during the run (bench/lib/machine.ts); absent in older results. */
  kernelDaemons?: KernelDaemons;
}

const CRLFCRLF = Buffer.from('\r\n\r\n');

class Conn {
  sock: net.Socket;
  buf: Buffer | undefined;
  /** Total length of the response being read (headers + body), -1 while headers are incomplete. */
  need = -1;
  status = 0;
  busy = false;
  /** Index of the request in flight (into the run's record arrays), -1 when none. */
  req = -1;
  alive = false;
  /** Slot number (closed loop). */
  id = 0;

  constructor(
    readonly target: Target,
    private readonly onResponse: (c: Conn, status: number) => void,
    private readonly onDead: (c: Conn, err: boolean) => void,
    onReady: (c: Conn) => void,
  ) {
    this.sock = net.connect({ host: target.host, port: target.port, noDelay: true });
    this.sock.on('connect', () => {
      this.alive = true;
      onReady(this);
    });
    this.sock.on('data', (chunk: Buffer) => this.data(chunk));
    this.sock.on('error', () => undefined);
    this.sock.on('close', (hadError) => {
      const wasAlive = this.alive;
      this.alive = false;
      if (wasAlive || hadError) this.onDead(this, hadError);
      else this.onDead(this, true);
    });
  }

  send(bytes: Uint8Array, req: number): void {
    this.busy = true;
    this.req = req;
    this.sock.write(bytes);
  }

  private data(chunk: Buffer): void {
    let buf = this.buf === undefined ? chunk : Buffer.concat([this.buf, chunk]);
    for (;;) {
      if (this.need < 0) {
        const end = buf.indexOf(CRLFCRLF);
        if (end < 0) break;
        // "HTTP/1.1 200 ..."
        this.status = (buf[9]! - 48) * 100 + (buf[10]! - 48) * 10 + (buf[11]! - 48);
        this.need = end + 4 + contentLength(buf.toString('latin1', 0, end));
      }
      if (buf.length < this.need) break;
      const rest = buf.length > this.need ? buf.subarray(this.need) : undefined;
      this.need = -1;
      this.busy = false;
      this.onResponse(this, this.status);
      if (rest === undefined) {
        this.buf = undefined;
        return;
      }
      buf = rest;
    }
    this.buf = buf;
  }

  close(): void {
    this.alive = false;
    this.sock.destroy();
  }
}

function contentLength(head: string): number {
  let i = head.indexOf('Content-Length:');
  if (i < 0) i = head.toLowerCase().indexOf('content-length:');
  if (i < 0) return 0;
  return parseInt(head.slice(i + 15, head.indexOf('\r', i) >>> 0), 10) || 0;
}

function openConnections(
  job: Job,
  onResponse: (c: Conn, status: number) => void,
  onDead: (c: Conn, err: boolean) => void,
): Promise<Conn[]> {
  return new Promise((resolve, reject) => {
    const conns: Conn[] = [];
    let ready = 0;
    let failed = false;
    const timer = setTimeout(() => {
      failed = true;
      for (const c of conns) c.close();
      reject(new Error(`could not open ${job.connections} connections to ${job.target.host}:${job.target.port}`));
    }, 5000);
    for (let i = 0; i < job.connections; i++) {
      conns.push(
        new Conn(
          job.target,
          onResponse,
          (c, err) => {
            if (!failed && ready < job.connections) {
              failed = true;
              clearTimeout(timer);
              for (const x of conns) x.close();
              reject(new Error(`connection to ${job.target.host}:${job.target.port} failed`));
              return;
            }
            onDead(c, err);
          },
          () => {
            ready++;
            if (ready === job.connections && !failed) {
              clearTimeout(timer);
              resolve(conns);
            }
          },
        ),
      );
    }
  });
}

function cpuFraction(before: NodeJS.CpuUsage, wallMs: number): number {
  const d = process.cpuUsage(before);
  return (d.user + d.system) / 1000 / wallMs;
}

/** Closed loop: every connection keeps exactly one request in flight. */
async function runClosed(job: ClosedJob): Promise<LoadResult> {
  const reqs = job.requests;
  let next = 0;
  const sentAt = new Float64Array(job.connections);
  const cap = 1 << 22;
  const lat = new Float64Array(cap);
  let nLat = 0;
  const statusCounts: Record<string, number> = {};
  let errors = 0;
  let socketErrors = 0;
  let measuring = false;
  let stopped = false;
  let windowStart = 0;
  const seconds: number[] = [];

  const issue = (c: Conn): void => {
    if (stopped || !c.alive) return;
    sentAt[c.id] = performance.now();
    c.send(reqs[next++ % reqs.length]!, 0);
  };
  const onResponse = (c: Conn, status: number): void => {
    const now = performance.now();
    if (measuring && !stopped) {
      if (nLat < cap) lat[nLat++] = now - sentAt[c.id]!;
      const sec = Math.floor((now - windowStart) / 1000);
      seconds[sec] = (seconds[sec] ?? 0) + 1;
      statusCounts[status] = (statusCounts[status] ?? 0) + 1;
      if (status !== job.expectStatus) errors++;
    }
    issue(c);
  };
  const onDead = (c: Conn): void => {
    if (stopped) return;
    if (measuring) {
      socketErrors++;
      errors++;
    }
    // Replace the connection; the replacement starts sending once connected.
    const fresh = new Conn(job.target, onResponse, onDead, (n) => issue(n));
    fresh.id = c.id;
    conns[c.id] = fresh;
  };
  const conns = await openConnections(job, onResponse, onDead);
  conns.forEach((c, i) => (c.id = i));
  for (const c of conns) issue(c);
  await sleep(job.warmupMs);
  const cpu0 = process.cpuUsage();
  windowStart = performance.now();
  measuring = true;
  await sleep(job.durationMs);
  const windowMs = performance.now() - windowStart;
  stopped = true;
  const generatorCpu = cpuFraction(cpu0, windowMs);
  for (const c of conns) c.close();
  const perSecond = seconds.slice(0, Math.floor(windowMs / 1000)).map((v) => v ?? 0);
  return {
    kind: 'closed',
    connections: job.connections,
    windowMs,
    completed: nLat,
    errors,
    statusCounts,
    socketErrors,
    unanswered: 0,
    throughput: (nLat * 1000) / windowMs,
    perSecond,
    latencyMs: summarize(lat.subarray(0, nLat)),
    generatorCpu,
  };
}

/** Open loop at a fixed rate; latency from each request's due time. */
async function runOpen(job: OpenJob): Promise<LoadResult> {
  const reqs = job.requests;
  const interval = 1000 / job.rate;
  const warmN = Math.floor((job.warmupMs * job.rate) / 1000);
  const total = warmN + Math.floor((job.durationMs * job.rate) / 1000);
  const done = new Float64Array(total).fill(-1);
  const sent = new Float64Array(total).fill(-1);
  const status = new Uint16Array(total);
  let socketErrors = 0;
  let stopped = false;
  // FIFO of request indices waiting for a free connection.
  const backlog = new Int32Array(total);
  let bHead = 0;
  let bTail = 0;
  const free: Conn[] = [];
  const extra: Conn[] = [];
  let t0 = 0;
  let nextIdx = 0;

  const dispatch = (c: Conn): void => {
    if (bHead < bTail) {
      const i = backlog[bHead++]!;
      sent[i] = performance.now();
      c.send(reqs[i % reqs.length]!, i);
    } else {
      free.push(c);
    }
  };

  const onResponse = (c: Conn, st: number): void => {
    const i = c.req;
    done[i] = performance.now();
    status[i] = st;
    c.req = -1;
    if (!stopped) dispatch(c);
  };
  const onDead = (c: Conn): void => {
    if (stopped) return;
    socketErrors++;
    const fi = free.indexOf(c);
    if (fi >= 0) free.splice(fi, 1);
    if (c.req >= 0) {
      status[c.req] = 0;
      done[c.req] = performance.now();
    }
    // Replace it; the replacement joins the free list when connected.
    extra.push(new Conn(job.target, onResponse, onDead, (n) => dispatch(n)));
  };

  const conns = await openConnections(job, onResponse, onDead);
  free.push(...conns);

  const finished = new Promise<void>((resolve) => {
    const pump = (): void => {
      if (stopped) return;
      const now = performance.now();
      while (nextIdx < total && t0 + nextIdx * interval <= now) {
        const c = free.pop();
        if (c !== undefined && c.alive) {
          sent[nextIdx] = now;
          c.send(reqs[nextIdx % reqs.length]!, nextIdx);
        } else {
          backlog[bTail++] = nextIdx;
        }
        nextIdx++;
      }
      if (nextIdx >= total) {
        resolve();
        return;
      }
      const wait = t0 + nextIdx * interval - performance.now();
      if (wait > 1.5) setTimeout(pump, wait - 1.2);
      else setImmediate(pump);
    };
    t0 = performance.now() + 20;
    setTimeout(pump, 10);
  });
  const cpu0 = process.cpuUsage();
  const wall0 = performance.now();
  await finished;
  // Drain: wait for the measured requests to be answered.
  const deadline = performance.now() + (job.drainMs ?? 2000);
  while (performance.now() < deadline) {
    let pending = false;
    for (let i = total - 1; i >= warmN; i--) {
      if (done[i]! < 0) {
        pending = true;
        break;
      }
    }
    if (!pending) break;
    await sleep(5);
  }
  stopped = true;
  const end = performance.now();
  const generatorCpu = cpuFraction(cpu0, end - wall0);
  for (const c of conns) c.close();
  for (const c of extra) c.close();

  const n = total - warmN;
  const lat = new Float64Array(n);
  const lag = new Float64Array(n);
  let nLag = 0;
  const statusCounts: Record<string, number> = {};
  let errors = 0;
  let unanswered = 0;
  let completed = 0;
  const windowStart = t0 + warmN * interval;
  const seconds: number[] = [];
  for (let k = 0; k < n; k++) {
    const i = warmN + k;
    const due = t0 + i * interval;
    if (sent[i]! >= 0) lag[nLag++] = sent[i]! - due;
    if (done[i]! < 0) {
      unanswered++;
      errors++;
      lat[k] = end - due; // a lower bound: it had not come back when we gave up
      continue;
    }
    lat[k] = done[i]! - due;
    const st = status[i]!;
    statusCounts[st] = (statusCounts[st] ?? 0) + 1;
    if (st !== job.expectStatus) errors++;
    else completed++;
    const sec = Math.floor((done[i]! - windowStart) / 1000);
    if (sec >= 0) seconds[sec] = (seconds[sec] ?? 0) + 1;
  }
  const windowMs = n * interval;
  return {
    kind: 'open',
    connections: job.connections,
    rate: job.rate,
    windowMs,
    completed,
    errors,
    statusCounts,
    socketErrors,
    unanswered,
    throughput: (completed * 1000) / windowMs,
    perSecond: seconds.slice(0, Math.floor(windowMs / 1000)).map((v) => v ?? 0),
    latencyMs: summarize(lat),
    sendLagMs: summarize(lag.subarray(0, nLag)),
    generatorCpu,
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function runJob(job: Job): Promise<LoadResult> {
  return job.kind === 'closed' ? runClosed(job) : runOpen(job);
}

// Child-process entry: one job per message, one result per job.
if (process.send !== undefined && process.argv[2] === '--child') {
  process.on('message', (msg: { id: number; job: Job }) => {
    runJob(msg.job).then(
      (result) => process.send!({ id: msg.id, result }),
      (e: unknown) => process.send!({ id: msg.id, error: e instanceof Error ? e.message : String(e) }),
    );
  });
  process.send({ ready: true });
}
