/**
 * The HTTP front end on uWebSockets.js: routes for every keystore prefix, SigV4, body
 * reading with a hard size cap, one pipeline for every operation (src/ops/), typed JSON errors,
 * one log line per request. Handlers never block: HSM work returns through Promises
 * settled by the addon's own threads.
 *
 * HTTP details uWS leaves to us (its source: uNetworking/uWebSockets 7999d09, v20.43+, which our uWS.js 20.30 builds):
 * - Pipelining. uWS closes a connection when a request's headers arrive while an earlier answer
 *   is pending ("denying async pipelining", HttpContext.h). While a request waits on the HSM its
 *   connection is paused (not read), so a request the client sends meanwhile stays in the kernel
 *   until the answer is written, then is read and answered in order. Requests that arrive in the
 *   same read as an earlier one that waits on the HSM cannot be held back: uWS closes the connection.
 * - Framing. uWS frames a body by the first Content-Length, treats any Transfer-Encoding as chunked
 *   and refuses both together. Content-Length headers that disagree and a Transfer-Encoding other
 *   than chunked are answered 400 and the connection is closed (RFC 9112 section 6.3).
 * - Refusals before the body. A body over the limit is read and thrown away (up to DRAIN_MAX_BYTES
 *   and DRAIN_MAX_MS) before the 413 is written and the connection closed, so that the client reads
 *   the 413 instead of a reset. A request whose SigV4 header check failed is answered 401 at once;
 *   uWS then skips its body (at most the size limit: larger or chunked bodies are drained as above).
 */
import { performance } from 'node:perf_hooks';
import { XksError, STATUS_LINE } from '../errors.js';
import type { Logger } from '../log.js';
import type { OpContext } from '../ops/context.js';
import { OPERATIONS } from '../ops/index.js';
import type { Operation } from '../ops/operation.js';
import { SigV4Verifier } from '../sigv4.js';
import type { Credential, PendingSignature } from '../sigv4.js';
import { parseJsonObject, type Limits, type RequestMetadata } from '../validate.js';
import type { Authorizer } from '../auth/oso.js';
import type { Metrics, RouteMetrics } from '../metrics.js';
import { explainUwsFailure, probePort } from './listen.js';
import { startPingListener, type PingListener } from './ping.js';
import { plaintextCopy } from './plaintext-copies.js';
import { TLS12_CIPHER_LIST } from './tls.js';
import { loadUws, type HttpRequest, type HttpResponse, type TemplatedApp, type us_listen_socket } from './uws.js';

export interface KeyStoreRoute {
  /** '' or '/some/prefix' */
  prefix: string;
  credentials: readonly Credential[];
  keyIds: ReadonlySet<string>;
  /** Request quota (429 ThrottlingException when tryTake() is false); none when undefined. */
  quota?: { tryTake(): boolean } | undefined;
}

export interface ServerOptions {
  host: string;
  port: number;
  /** Port of the separate /ping listener (node:http, src/http/ping.ts); equal to `port` means none: /ping is on the API listener. */
  pingPort: number;
  region: string;
  service: string;
  sigv4Enabled: boolean;
  limits: Limits;
  keyStores: readonly KeyStoreRoute[];
  tls?: { certFile: string; keyFile: string } | undefined;
  version: string;
  /** Secondary authorization (Oso); none when undefined. */
  authorizer?: Authorizer | undefined;
  /**
   * Serve the API on this Unix socket instead of host:port (the mTLS terminator in front of it owns
   * host:port); `port` is then only used to decide whether `pingPort` needs its own listener.
   */
  listenUnix?: string | undefined;
  /** Where requests are counted ([metrics] serves them on its own listener); none when undefined. */
  metrics?: Metrics | undefined;
  /**
   * Open the separate ping listener when `pingPort` differs from `port` (default true). Worker
   * threads pass false: the main thread owns that listener.
   */
  pingListener?: boolean | undefined;
  /**
   * How the API listener binds host:port (src/http/listen.ts): 'exclusive' (default; one event loop,
   * no SO_REUSEPORT), 'first' (the main thread of several loops: probe, then SO_REUSEPORT), 'join'
   * (a worker thread: SO_REUSEPORT on the main thread's port).
   */
  portSharing?: 'exclusive' | 'first' | 'join' | undefined;
}

export interface RunningServer {
  port: number;
  pingPort: number;
  close(): void;
  /** Graceful stop, step 1: GET /ping answers 503 so load balancers stop sending. */
  startDraining(): void;
  /** Resolves when no request is in flight, or after `timeoutMs`; true when none was left. */
  drained(timeoutMs: number): Promise<boolean>;
  /**
   * Closes every connection now, idle keep-alive ones included (after close() and drained()). A worker
   * thread must do this before it exits: uWS handles left open abort the process.
   */
  closeConnections(): void;
  /**
   * Atomically swaps the keystores (prefixes, credentials, key ids, quotas) and the secondary
   * authorization. Requests already past routing finish with what they started with; listeners stay.
   * Routes of new prefixes are added; removed prefixes answer 404 InvalidUriPathException.
   */
  apply(keyStores: readonly KeyStoreRoute[], authorizer: Authorizer | undefined): void;
}

const JSON_TYPE = 'application/json';
const BAD_FRAMING = new XksError('ValidationException', 'Request framing is ambiguous (Content-Length, Transfer-Encoding)').toBody();
const NOT_FOUND = new XksError('InvalidUriPathException', 'No such URI path').toBody();
const NOT_ALLOWED = new XksError('ValidationException', 'Method not allowed; use POST').toBody();
/** Room for requestMetadata (three ARNs of up to 2048 characters) and JSON framing. */
const BODY_OVERHEAD = 16 * 1024;
/** A refused body is read and thrown away up to this many bytes before the answer and the close. */
export const DRAIN_MAX_BYTES = 8 * 1024 * 1024;
/** ... and for at most this long (uWS itself drops a connection idle for 10 s). */
export const DRAIN_MAX_MS = 5000;

/** What one scan of a request's headers found (a single object reused: one event loop per thread). */
const framing = {
  /** Why the body's length is ambiguous (RFC 9112 section 6.3), or undefined. */
  problem: undefined as string | undefined,
  /** The Content-Length value (uWS frames the body by the first one). */
  contentLength: undefined as string | undefined,
  /** Transfer-Encoding headers seen (1: a chunked body). */
  codings: 0,
};
function scanHeader(name: string, value: string): void {
  if (name === 'content-length') {
    if (framing.contentLength !== undefined && value !== framing.contentLength) framing.problem = 'Content-Length headers with different values';
    framing.contentLength = value;
  } else if (name === 'transfer-encoding') {
    // uWS takes any Transfer-Encoding for chunked: only a single "chunked" (any case, RFC 9112 section 7) means that.
    if (++framing.codings > 1 || value.toLowerCase() !== 'chunked') framing.problem = 'Transfer-Encoding other than chunked';
  }
}

/** Scans the request's headers once (req.forEach, no closure per request); valid until the next scan. */
function scanFraming(req: HttpRequest): typeof framing {
  framing.problem = undefined;
  framing.contentLength = undefined;
  framing.codings = 0;
  req.forEach(scanHeader);
  return framing;
}

/** Per-request state kept across onData and the HSM round trip. */
class Exchange {
  aborted = false;
  done = false;
  /** The body is complete and the request handed to dispatch(), which always finishes it. */
  dispatched = false;
  /** The connection is not read while the HSM works (see the top of this file). */
  paused = false;
  /** Why the connection closed before the answer, when the client did not close it. */
  abortDetail: string | undefined;
  /** The answer of a refused request whose body is being read and thrown away. */
  refusal: XksError | undefined;
  drainTimer: NodeJS.Timeout | undefined;
  chunks: Buffer[] | undefined;
  size = 0;
  meta: RequestMetadata | undefined;
  constructor(
    readonly res: HttpResponse,
    readonly op: Operation,
    readonly store: KeyStoreRoute,
    readonly keyId: string,
    readonly started: number,
    readonly pending: PendingSignature | undefined,
    readonly metrics: RouteMetrics | undefined,
  ) {}
}

export function startServer(opts: ServerOptions, ctx: OpContext, log: Logger): Promise<RunningServer> {
  const uws = loadUws();
  const verifier = new SigV4Verifier({ region: opts.region, service: opts.service });
  const maxBody = opts.limits.max_plaintext_in_base64 + opts.limits.max_aad_in_base64 + BODY_OVERHEAD;
  const pong = `pong from xks-proxy v${opts.version}\n`;

  // uSockets refuses TLS < 1.2 by itself; ssl_ciphers limits TLS 1.2 to the spec's suites (TLS 1.3 suites
  // are OpenSSL's defaults: see the README, "Security").
  const makeApp = (): TemplatedApp =>
    opts.tls && opts.listenUnix === undefined
      ? uws.SSLApp({ cert_file_name: opts.tls.certFile, key_file_name: opts.tls.keyFile, ssl_ciphers: TLS12_CIPHER_LIST })
      : uws.App();

  /** The current routing/auth snapshot; replaced as a whole by apply(). */
  let routing: { stores: ReadonlyMap<string, KeyStoreRoute>; authorizer: Authorizer | undefined } = {
    stores: new Map(opts.keyStores.map((k) => [k.prefix, k])),
    authorizer: opts.authorizer,
  };

  let inFlight = 0;
  let draining = false;
  let onIdle: (() => void) | undefined;

  /** Per prefix, the metrics of each operation by name (no string building per request). */
  const routeMetrics = new Map<string, Record<string, RouteMetrics>>();
  function metricsOf(op: Operation, prefix: string): RouteMetrics | undefined {
    const m = opts.metrics;
    if (m === undefined) return undefined;
    let byOp = routeMetrics.get(prefix);
    if (byOp === undefined) {
      byOp = {};
      for (const o of OPERATIONS) byOp[o.name] = m.route(o.name, prefix);
      routeMetrics.set(prefix, byOp);
    }
    return byOp[op.name];
  }

  function finish(x: Exchange, status: number, body: string, outcome: string, detail?: string, closeConnection = false): void {
    if (x.done) return;
    x.done = true;
    wipeChunks(x);
    if (x.drainTimer !== undefined) clearTimeout(x.drainTimer);
    if (!x.aborted) {
      // While draining, every answer closes its connection: the client reconnects to a live instance.
      const close = closeConnection || draining;
      x.res.cork(() => {
        // Read the connection again (a pipelined request waits there), before end() may close it.
        if (x.paused) x.res.resume();
        x.res.writeStatus(STATUS_LINE[status] ?? `${status}`).writeHeader('content-type', JSON_TYPE).end(body, close);
      });
    } else if (x.abortDetail !== undefined) {
      detail = x.abortDetail;
    }
    const elapsed = performance.now() - x.started;
    const result = x.aborted ? 'aborted' : outcome;
    x.metrics?.record(result, elapsed / 1000);
    log.request({
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
    if (--inFlight === 0 && onIdle !== undefined) onIdle();
  }

  function fail(x: Exchange, e: unknown): void {
    const err =
      e instanceof XksError ? e : new XksError('InternalException', 'Internal error', e instanceof Error ? e.message : String(e));
    finish(x, err.status, err.toBody(), err.errorName, err.detail ?? (err.status >= 500 || err.status === 401 ? err.message : undefined));
  }

  function lookupIn(store: KeyStoreRoute) {
    return (accessKeyId: string): Credential | undefined => store.credentials.find((c) => c.accessKeyId === accessKeyId);
  }

  async function dispatch(x: Exchange, body: Buffer): Promise<string> {
    if (x.pending) {
      const result = verifier.finish(x.pending, body, lookupIn(x.store));
      if (!result.ok) throw new XksError('AuthenticationFailedException', 'Request signature is not valid', result.reason);
    }
    if (x.store.quota !== undefined && !x.store.quota.tryTake()) {
      throw new XksError('ThrottlingException', 'Request rate of this key store exceeds its quota');
    }
    const op = x.op;
    const shape = op.shape(parseJsonObject(body));
    const meta = op.metadata(shape);
    x.meta = meta;
    if (op.namesKey && !x.store.keyIds.has(x.keyId)) throw new XksError('KeyNotFoundException', 'Key id is not in this key store');
    const authorizer = routing.authorizer;
    if (op.policy.enforced && authorizer !== undefined) await authorizer.authorize(x.store.prefix, op.policy.action, meta);
    return op.run(ctx, x.keyId, op.decode(shape, opts.limits));
  }

  function complete(x: Exchange, body: Buffer): void {
    x.dispatched = true;
    // Hold back what the client sends next until this answer is written (pipelining, see the top).
    x.res.pause();
    x.paused = true;
    // The body holds the Base64 plaintext of an encrypt: wipe it once the request is answered.
    dispatch(x, body).then(
      (out) => {
        body.fill(0);
        finish(x, 200, out, 'ok');
      },
      (e: unknown) => {
        body.fill(0);
        fail(x, e);
      },
    );
  }

  /** Wipes the body's chunk copies (they may hold Base64 plaintext). */
  function wipeChunks(x: Exchange): void {
    if (x.chunks === undefined) return;
    for (const c of x.chunks) c.fill(0);
    x.chunks = undefined;
  }

  function api(op: Operation, prefix: string) {
    return (res: HttpResponse, req: HttpRequest): void => {
      const store = routing.stores.get(prefix);
      if (store === undefined) {
        notFound(res, req);
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
      if (opts.sigv4Enabled && problem === undefined) {
        const r = verifier.begin('POST', req.getUrl(), req.getQuery() ?? '', (name) => req.getHeader(name));
        if (r.ok) pending = r;
        else authError = r.reason;
      }
      const x = new Exchange(res, op, store, keyId, started, pending, metricsOf(op, prefix));
      inFlight++;
      if (problem !== undefined) {
        // The body's end is unknown: answer and close (RFC 9112 section 6.3).
        finish(x, 400, BAD_FRAMING, 'ValidationException', problem, true);
        return;
      }
      if (declared > maxBody) {
        refuse(x, new XksError('PayloadTooLargeException', `Request body exceeds ${maxBody} bytes`), declared);
        return;
      }
      if (authError !== undefined) {
        const err = new XksError('AuthenticationFailedException', 'Request signature is not valid', authError);
        // uWS skips a Content-Length body of at most maxBody by itself; a chunked one has no bound.
        if (chunked) refuse(x, err, 0);
        else fail(x, err);
        return;
      }
      res.onAborted(() => {
        x.aborted = true;
        // A paused connection is not read, so the client's leaving goes unseen: uWS itself closed it,
        // because another request arrived on it before this answer (or the proxy is stopping).
        if (x.paused) x.abortDetail = 'connection closed by uWS while waiting on the HSM: another request arrived on it (pipelining)';
        // The client left before its body arrived: nothing will finish this request otherwise.
        if (!x.dispatched) finish(x, 400, '', 'aborted');
      });
      res.onData((chunk, isLast) => {
        if (x.done) return;
        const n = chunk.byteLength;
        x.size += n;
        if (x.refusal !== undefined) {
          if (isLast || x.size > DRAIN_MAX_BYTES) answerRefusal(x);
          return;
        }
        if (x.size > maxBody) {
          wipeChunks(x);
          x.refusal = new XksError('PayloadTooLargeException', `Request body exceeds ${maxBody} bytes`);
          if (isLast) answerRefusal(x);
          else x.drainTimer = setTimeout(() => answerRefusal(x), DRAIN_MAX_MS);
          return;
        }
        if (isLast && x.chunks === undefined) {
          const body = plaintextCopy(Buffer.allocUnsafe(n));
          body.set(new Uint8Array(chunk));
          complete(x, body);
          return;
        }
        const copy = plaintextCopy(Buffer.allocUnsafe(n));
        copy.set(new Uint8Array(chunk));
        (x.chunks ??= []).push(copy);
        if (isLast) {
          const body = plaintextCopy(Buffer.concat(x.chunks, x.size));
          wipeChunks(x);
          complete(x, body);
        }
      });
    };
  }

  /**
   * Answers `err` after reading and throwing away the body (up to DRAIN_MAX_BYTES and DRAIN_MAX_MS),
   * then closes the connection: a client still sending would otherwise get a reset instead of the
   * answer. A declared body beyond the bound is not read: the answer goes out at once.
   */
  function refuse(x: Exchange, err: XksError, declared: number): void {
    x.refusal = err;
    if (declared > DRAIN_MAX_BYTES) {
      answerRefusal(x);
      return;
    }
    x.res.onAborted(() => {
      x.aborted = true;
      finish(x, err.status, '', 'aborted');
    });
    x.res.onData((chunk, isLast) => {
      if (x.done) return;
      x.size += chunk.byteLength;
      if (isLast || x.size > DRAIN_MAX_BYTES) answerRefusal(x);
    });
    x.drainTimer = setTimeout(() => answerRefusal(x), DRAIN_MAX_MS);
  }

  function answerRefusal(x: Exchange): void {
    const err = x.refusal!;
    finish(x, err.status, err.toBody(), err.errorName, err.detail, true);
  }

  /** /ping on the API listener (port_http_ping = port). A HEAD answer has the GET's headers and no body. */
  const ping = (res: HttpResponse): void => {
    if (draining) res.writeStatus(STATUS_LINE[503]!).writeHeader('content-type', 'text/plain').end('stopping\n');
    else res.writeHeader('content-type', 'text/plain').end(pong);
  };
  const pingHead = (res: HttpResponse): void => {
    // endWithoutBody(length) of this uWS never marks the answer done: the length goes in as a header.
    const body = draining ? 'stopping\n' : pong;
    if (draining) res.writeStatus(STATUS_LINE[503]!);
    res.writeHeader('content-type', 'text/plain').writeHeader('content-length', String(Buffer.byteLength(body))).endWithoutBody();
  };

  /** Ends with `body`, or for a HEAD request with its length only (a body after a HEAD answer would be read as the next answer). */
  const endFor = (res: HttpResponse, req: HttpRequest, body: string): void => {
    if (req.getMethod() === 'head') res.writeHeader('content-length', String(Buffer.byteLength(body))).endWithoutBody();
    else res.end(body);
  };

  const notFound = (res: HttpResponse, req: HttpRequest): void => {
    if (opts.metrics) opts.metrics.unmatched++;
    log.debug('no route', { method: req.getMethod(), path: req.getUrl().slice(0, 300) });
    res.onAborted(() => undefined);
    endFor(res.writeStatus(STATUS_LINE[404]!).writeHeader('content-type', JSON_TYPE), req, NOT_FOUND);
  };

  const notAllowed = (res: HttpResponse, req: HttpRequest): void => {
    endFor(res.writeStatus('405 Method Not Allowed').writeHeader('allow', 'POST').writeHeader('content-type', JSON_TYPE), req, NOT_ALLOWED);
  };

  const app = makeApp();
  const registered = new Set<string>();
  const registerPrefix = (prefix: string): void => {
    if (registered.has(prefix)) return;
    registered.add(prefix);
    const base = `${prefix}/kms/xks/v1`;
    for (const op of OPERATIONS) {
      const pattern = base + op.route;
      app.post(pattern, api(op, prefix));
      app.any(pattern, notAllowed);
    }
  };
  for (const store of opts.keyStores) registerPrefix(store.prefix);
  app.get('/ping', ping);
  app.head('/ping', pingHead);
  const separatePing = opts.pingPort !== opts.port;
  app.any('/*', notFound);

  const listeners: us_listen_socket[] = [];
  const sharing = opts.portSharing ?? 'exclusive';
  const listen = async (a: TemplatedApp, port: number): Promise<number> => {
    if (sharing === 'first') await probePort('server.port', opts.host, port);
    // LIBUS_LISTEN_EXCLUSIVE_PORT (the binary exports it; the types have it only in an enum): no SO_REUSEPORT.
    const flags = sharing === 'exclusive' ? (uws as unknown as { LIBUS_LISTEN_EXCLUSIVE_PORT: number }).LIBUS_LISTEN_EXCLUSIVE_PORT : 0;
    const socket = await new Promise<us_listen_socket | false>((resolve) => listenWithFlags(a, opts.host, port, flags, resolve));
    if (!socket) throw sharing === 'join' ? new Error(`cannot join the main thread's listener on port ${port}`) : await explainUwsFailure('server.port', opts.host, port);
    listeners.push(socket);
    return uws.us_socket_local_port(socket as unknown as Parameters<Uws['us_socket_local_port']>[0]);
  };

  const listenUnix = (a: TemplatedApp, file: string): Promise<void> =>
    new Promise((resolve, reject) => {
      a.listen_unix((socket) => {
        if (!socket) {
          reject(new Error(`cannot listen on the Unix socket ${file}`));
          return;
        }
        listeners.push(socket);
        resolve();
      }, file);
    });

  return (async () => {
    let port = opts.port;
    if (opts.listenUnix !== undefined) await listenUnix(app, opts.listenUnix);
    else port = await listen(app, opts.port);
    let pingPort = port;
    let pingListener: PingListener | undefined;
    if (separatePing && opts.pingListener !== false) {
      try {
        pingListener = await startPingListener({
          host: opts.host,
          port: opts.pingPort,
          pong,
          draining: () => draining,
          onUnmatched: opts.metrics ? () => opts.metrics!.unmatched++ : undefined,
        });
      } catch (e) {
        for (const l of listeners.splice(0)) uws.us_listen_socket_close(l);
        throw e;
      }
      pingPort = pingListener.port;
    } else if (separatePing) {
      pingPort = opts.pingPort;
    }
    return {
      port,
      pingPort,
      close() {
        for (const s of listeners.splice(0)) uws.us_listen_socket_close(s);
        pingListener?.close();
      },
      startDraining() {
        draining = true;
      },
      closeConnections() {
        // us_listen_socket_close on sockets app.close() closes too would be a double close.
        listeners.splice(0);
        closeApp(app);
        pingListener?.closeConnections();
      },
      drained(timeoutMs) {
        if (inFlight === 0) return Promise.resolve(true);
        return new Promise((resolve) => {
          const timer = setTimeout(() => {
            onIdle = undefined;
            resolve(false);
          }, timeoutMs);
          onIdle = () => {
            clearTimeout(timer);
            onIdle = undefined;
            resolve(true);
          };
        });
      },
      apply(keyStores, authorizer) {
        for (const k of keyStores) registerPrefix(k.prefix);
        routing = { stores: new Map(keyStores.map((k) => [k.prefix, k])), authorizer };
      },
    };
  })();
}

type Uws = ReturnType<typeof loadUws>;

/** TemplatedApp.listen(host, port, options, cb): in the binary, missing from the package's types. */
function listenWithFlags(app: TemplatedApp, host: string, port: number, flags: number, cb: (s: us_listen_socket | false) => void): void {
  (app as TemplatedApp & { listen(host: string, port: number, options: number, cb: (s: us_listen_socket | false) => void): TemplatedApp }).listen(
    host,
    port,
    flags,
    cb,
  );
}

/** TemplatedApp.close() (in the binary, missing from the package's types): closes its listen sockets and every connection. */
function closeApp(app: TemplatedApp): void {
  (app as TemplatedApp & { close(): void }).close();
}
