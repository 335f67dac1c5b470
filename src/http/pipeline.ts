/**
 * The one request pipeline every XKS operation (src/ops/) runs through, in the Rust proxy's order:
 *   route (the key store of the prefix) -> SigV4 (headers, then the body's hash) -> quota ->
 *   (audit trail writable, fail-closed) -> shape -> key in set -> policy -> limits and decoding -> run ->
 *   audit record (a 200 waits for it in the before-response mode) -> respond -> log and metrics.
 * The first failing step answers with its typed error. Early answers, before the body is read:
 * 400 for ambiguous framing, 413 for a declared body over the limit, 401 for a failed SigV4
 * header check (see src/http/server.ts).
 */
import { performance } from 'node:perf_hooks';
import { AUDIT_REFUSAL } from '../audit/sink.js';
import type { Authorizer } from '../auth/oso.js';
import { XksError } from '../errors.js';
import type { OpContext } from '../ops/context.js';
import type { Operation } from '../ops/operation.js';
import { SigV4Verifier, type Credential, type PendingSignature } from '../sigv4.js';
import { parseJsonObject, type Limits } from '../validate.js';
import { readBody, refuse, type BodySink } from './body.js';
import { Exchange, scanFraming } from './exchange.js';
import type { Responder } from './respond.js';
import type { KeyStoreRoute } from './server.js';
import type { HttpRequest, HttpResponse } from './uws.js';

/** Room for requestMetadata (three ARNs of up to 2048 characters) and JSON framing. */
const BODY_OVERHEAD = 16 * 1024;
const BAD_FRAMING = new XksError('ValidationException', 'Request framing is ambiguous (Content-Length, Transfer-Encoding)').toBody();

/** The routing and authorization snapshot; replaced as a whole on reload. */
export interface Routing {
  readonly stores: ReadonlyMap<string, KeyStoreRoute>;
  readonly authorizer: Authorizer | undefined;
}

export interface PipelineOptions {
  region: string;
  service: string;
  sigv4Enabled: boolean;
  limits: Limits;
  /**
   * Set: the API listens on this Unix socket behind the mTLS terminator, which sends each connection's
   * client address first in a PROXY protocol v2 header (native/tls/proxy_header.h).
   */
  listenUnix?: string | undefined;
}

export type Handler = (res: HttpResponse, req: HttpRequest) => void;

function lookupIn(store: KeyStoreRoute) {
  return (accessKeyId: string): Credential | undefined => store.credentials.find((c) => c.accessKeyId === accessKeyId);
}

export class Pipeline implements BodySink {
  private readonly verifier: SigV4Verifier;
  private readonly limits: Limits;
  private readonly sigv4Enabled: boolean;
  /** Behind the mTLS terminator: the client is the one its PROXY header names, not the socket's peer. */
  private readonly proxied: boolean;
  /** The largest body read: both Base64 limits and room for the rest. */
  readonly maxBody: number;

  constructor(
    opts: PipelineOptions,
    /** The current snapshot: requests read it at routing and at the policy step. */
    public routing: Routing,
    private readonly ctx: OpContext,
    private readonly r: Responder,
    /** The answer to a request of a prefix no key store has (any more). */
    private readonly notFound: Handler,
  ) {
    this.verifier = new SigV4Verifier({ region: opts.region, service: opts.service });
    this.limits = opts.limits;
    this.sigv4Enabled = opts.sigv4Enabled;
    this.proxied = opts.listenUnix !== undefined;
    this.maxBody = opts.limits.max_plaintext_in_base64 + opts.limits.max_aad_in_base64 + BODY_OVERHEAD;
  }

  /** The uWS handler of `op` on the key store `prefix`. */
  handler(op: Operation, prefix: string): Handler {
    return (res, req) => this.receive(op, prefix, res, req);
  }

  /** Steps route and SigV4 (headers), the early answers, then the body. */
  private receive(op: Operation, prefix: string, res: HttpResponse, req: HttpRequest): void {
    const store = this.routing.stores.get(prefix);
    if (store === undefined) {
      this.notFound(res, req);
      return;
    }
    const started = performance.now();
    const keyId = op.namesKey ? req.getParameter(0) : '';
    const scan = scanFraming(req);
    const problem = scan.problem;
    const chunked = scan.codings > 0;
    const declared = Number(scan.contentLength ?? '0');
    let pending: PendingSignature | undefined;
    let authError: string | undefined;
    if (this.sigv4Enabled && problem === undefined) {
      const v = this.verifier.begin('POST', req.getUrl(), req.getQuery() ?? '', (name) => req.getHeader(name));
      if (v.ok) pending = v;
      else authError = v.reason;
    }
    const r = this.r;
    const x = new Exchange(res, op, store, keyId, started, pending, r.metricsOf(op, prefix));
    if (this.ctx.audit !== undefined) {
      // Its text's bytes, as uWS gives them: the audit channel reads them natively.
      x.client = this.proxied ? res.getProxiedRemoteAddressAsText() : res.getRemoteAddressAsText();
    }
    r.begin();
    if (problem !== undefined) {
      // The body's end is unknown: answer and close (RFC 9112 section 6.3).
      r.finish(x, 400, BAD_FRAMING, 'ValidationException', problem, true);
      return;
    }
    const maxBody = this.maxBody;
    if (declared > maxBody) {
      refuse(x, r, new XksError('PayloadTooLargeException', `Request body exceeds ${maxBody} bytes`), declared);
      return;
    }
    if (authError !== undefined) {
      const err = new XksError('AuthenticationFailedException', 'Request signature is not valid', authError);
      // uWS skips a Content-Length body of at most maxBody by itself; a chunked one has no bound.
      if (chunked) refuse(x, r, err, 0);
      else r.fail(x, err);
      return;
    }
    readBody(x, r, maxBody, this);
  }

  /** The body is complete: the rest of the pipeline, then the answer. */
  complete(x: Exchange, body: Buffer): void {
    x.dispatched = true;
    // Hold back what the client sends next until this answer is written (pipelining, see server.ts).
    x.res.pause();
    x.paused = true;
    // The body holds the Base64 plaintext of an encrypt: wipe it once the request is answered.
    this.dispatch(x, body).then(
      (out) => {
        body.fill(0);
        this.r.finish(x, 200, out, 'ok');
      },
      (e: unknown) => {
        body.fill(0);
        this.r.fail(x, e);
      },
    );
  }

  /** Steps SigV4 (the body's hash), quota, shape, key in set, policy, limits and decoding, run. */
  private async dispatch(x: Exchange, body: Buffer): Promise<string> {
    if (x.pending) {
      const result = this.verifier.finish(x.pending, body, lookupIn(x.store));
      if (!result.ok) throw new XksError('AuthenticationFailedException', 'Request signature is not valid', result.reason);
    }
    const audit = this.ctx.audit;
    if (x.op.namesKey && audit?.failClosed && audit.failed()) {
      throw new XksError('InternalException', AUDIT_REFUSAL);
    }
    if (x.store.quota !== undefined && !x.store.quota.tryTake()) {
      throw new XksError('ThrottlingException', 'Request rate of this key store exceeds its quota');
    }
    const op = x.op;
    const shape = op.shape(parseJsonObject(body));
    const meta = op.metadata(shape);
    x.meta = meta;
    if (op.namesKey && !x.store.keyIds.has(x.keyId)) throw new XksError('KeyNotFoundException', 'Key id is not in this key store');
    const authorizer = this.routing.authorizer;
    if (op.policy.enforced && authorizer !== undefined) await authorizer.authorize(x.store.prefix, op.policy.action, meta);
    return op.run(this.ctx, x.keyId, op.decode(shape, this.limits));
  }
}
