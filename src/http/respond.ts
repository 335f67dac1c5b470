/**
 * The pipeline's last steps: the answer (status line, JSON body, connection kept or closed), then
 * the request's log line and metrics. Also counts the requests in flight, for the graceful stop.
 */
import { performance } from 'node:perf_hooks';
import type { AuditUse } from '../audit/record.js';
import { AUDIT_REFUSAL, type AuditSink } from '../audit/sink.js';
import { XksError, STATUS_LINE } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics, RouteMetrics } from '../metrics.js';
import { OPERATIONS } from '../ops/index.js';
import type { Operation } from '../ops/operation.js';
import { wipeChunks, type Exchange } from './exchange.js';

export const JSON_TYPE = 'application/json';
const AUDIT_FAILED = new XksError('InternalException', AUDIT_REFUSAL).toBody();

/** The audit record's fields of a request (never its body: no plaintext, AAD, ciphertext, IV or tag). */
function auditUse(x: Exchange, status: number, outcome: string): AuditUse {
  const m = x.meta;
  return {
    kmsRequestId: m?.kmsRequestId,
    kmsOperation: m?.kmsOperation,
    awsPrincipalArn: m?.awsPrincipalArn,
    kmsKeyArn: m?.kmsKeyArn,
    kmsViaService: m?.kmsViaService,
    awsSourceVpc: m?.awsSourceVpc,
    awsSourceVpce: m?.awsSourceVpce,
    prefix: x.store.prefix,
    keyId: x.keyId,
    operation: x.op.name,
    outcome,
    status,
    micros: Math.round((performance.now() - x.started) * 1000),
    accessKeyId: x.pending?.accessKeyId,
    client: x.client,
  };
}

export class Responder {
  /** Requests begun and not yet finished. */
  private inFlight = 0;
  /** GET /ping answers 503 and every answer closes its connection (graceful stop). */
  draining = false;
  private onIdle: (() => void) | undefined;
  /** Per prefix, the metrics of each operation by name (no string building per request). */
  private readonly routeMetrics = new Map<string, Record<string, RouteMetrics>>();

  constructor(
    private readonly log: Logger,
    private readonly metrics: Metrics | undefined,
    /** The audit trail: every answered request is recorded here (src/audit/). */
    private readonly audit?: AuditSink | undefined,
  ) {}

  /** The metrics of `op` on `prefix`; those of every operation of a prefix are made at its first request. */
  metricsOf(op: Operation, prefix: string): RouteMetrics | undefined {
    const m = this.metrics;
    if (m === undefined) return undefined;
    let byOp = this.routeMetrics.get(prefix);
    if (byOp === undefined) {
      byOp = {};
      for (const o of OPERATIONS) byOp[o.name] = m.route(o.name, prefix);
      this.routeMetrics.set(prefix, byOp);
    }
    return byOp[op.name];
  }

  /** A request begins: finish() ends it, exactly once. */
  begin(): void {
    this.inFlight++;
  }

  finish(x: Exchange, status: number, body: string, outcome: string, detail?: string, closeConnection = false): void {
    if (x.done) return;
    x.done = true;
    wipeChunks(x);
    if (x.drainTimer !== undefined) clearTimeout(x.drainTimer);
    const a = this.audit;
    if (a !== undefined) {
      const use = auditUse(x, status, x.aborted ? 'aborted' : outcome);
      // before-response: a key use's 200 goes out only once its record is on disk.
      if (status === 200 && x.op.namesKey && a.waitsForDisk && !x.aborted) {
        a.record(use, (ok) => {
          if (ok) this.answer(x, status, body, outcome, detail, closeConnection);
          else if (a.failClosed) this.answer(x, 500, AUDIT_FAILED, 'InternalException', 'audit record not written', closeConnection);
          else {
            a.servedWithout();
            this.answer(x, status, body, outcome, 'audit record not written', closeConnection);
          }
        });
        return;
      }
      a.record(use);
    }
    this.answer(x, status, body, outcome, detail, closeConnection);
  }

  /** Writes the answer (unless the client went away), then the log line and metrics. */
  private answer(x: Exchange, status: number, body: string, outcome: string, detail: string | undefined, closeConnection: boolean): void {
    if (!x.aborted) {
      // While draining, every answer closes its connection: the client reconnects to a live instance.
      const close = closeConnection || this.draining;
      x.res.cork(() => {
        // Read the connection again (a pipelined request waits there), before end() may close it.
        if (x.paused) x.res.resume();
        x.res
          .writeStatus(STATUS_LINE[status] ?? `${status}`)
          .writeHeader('content-type', JSON_TYPE)
          .end(body, close);
      });
    } else if (x.abortDetail !== undefined) {
      detail = x.abortDetail;
    }
    const elapsed = performance.now() - x.started;
    const result = x.aborted ? 'aborted' : outcome;
    x.metrics?.record(result, elapsed / 1000);
    this.log.request({
      op: x.op.name,
      prefix: x.store.prefix,
      keyId: x.keyId || undefined,
      kmsRequestId: x.meta?.kmsRequestId,
      outcome: result,
      kmsOperation: x.meta?.kmsOperation,
      awsPrincipalArn: x.meta?.awsPrincipalArn,
      kmsKeyArn: x.meta?.kmsKeyArn,
      kmsViaService: x.meta?.kmsViaService,
      awsSourceVpc: x.meta?.awsSourceVpc,
      awsSourceVpce: x.meta?.awsSourceVpce,
      status,
      micros: Math.round(elapsed * 1000),
      detail,
    });
    if (--this.inFlight === 0 && this.onIdle !== undefined) this.onIdle();
  }

  /** Answers the typed error `e` (anything else: 500 InternalException, its message for the log only). */
  fail(x: Exchange, e: unknown): void {
    const err = e instanceof XksError ? e : new XksError('InternalException', 'Internal error', e instanceof Error ? e.message : String(e));
    this.finish(
      x,
      err.status,
      err.toBody(),
      err.errorName,
      err.detail ?? (err.status >= 500 || err.status === 401 ? err.message : undefined),
    );
  }

  /** Answers a refused request's error (x.refusal) and closes the connection. */
  answerRefusal(x: Exchange): void {
    const err = x.refusal!;
    this.finish(x, err.status, err.toBody(), err.errorName, err.detail, true);
  }

  /** Resolves when no request is in flight, or after `timeoutMs`; true when none was left. */
  drained(timeoutMs: number): Promise<boolean> {
    if (this.inFlight === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.onIdle = undefined;
        resolve(false);
      }, timeoutMs);
      this.onIdle = () => {
        clearTimeout(timer);
        this.onIdle = undefined;
        resolve(true);
      };
    });
  }
}
