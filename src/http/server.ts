/**
 * The HTTP front end on uWebSockets.js: routes for every keystore prefix, SigV4, body
 * reading with a hard size cap, dispatch to one operation per file, typed JSON errors,
 * one log line per request. Handlers never block: HSM work returns through Promises
 * settled by the addon's own threads.
 */
import { performance } from 'node:perf_hooks';
import { XksError, STATUS_LINE } from '../errors.js';
import type { Logger } from '../log.js';
import { decrypt } from '../ops/decrypt.js';
import { encrypt } from '../ops/encrypt.js';
import { getHealthStatus } from '../ops/health.js';
import { getKeyMetadata } from '../ops/metadata.js';
import type { OpContext } from '../ops/context.js';
import { SigV4Verifier } from '../sigv4.js';
import type { Credential, PendingSignature } from '../sigv4.js';
import {
  decryptInput,
  decryptShape,
  encryptInput,
  encryptShape,
  healthShape,
  metadataShape,
  parseJsonObject,
  type Limits,
  type RequestMetadata,
} from '../validate.js';
import type { Authorizer } from '../auth/oso.js';
import type { Metrics, RouteMetrics } from '../metrics.js';
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
  /** Separate listener for GET /ping; equal to `port` means none. */
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
  /** Prometheus metrics, served at GET /metrics on the ping listener; none when undefined. */
  metrics?: Metrics | undefined;
  /**
   * The /metrics text when it is not `metrics.render()`: with several event loops, the sum over all
   * of them (src/workers/). Requests are still counted in `metrics`.
   */
  metricsText?: (() => Promise<string>) | undefined;
  /**
   * Open the separate ping listener when `pingPort` differs from `port` (default true). Worker
   * threads pass false: the main thread owns that listener.
   */
  pingListener?: boolean | undefined;
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

type OpName = 'GetHealthStatus' | 'GetKeyMetadata' | 'Encrypt' | 'Decrypt';

const JSON_TYPE = 'application/json';
/** Room for requestMetadata (three ARNs of up to 2048 characters) and JSON framing. */
const BODY_OVERHEAD = 16 * 1024;

/** Per-request state kept across onData and the HSM round trip. */
class Exchange {
  aborted = false;
  done = false;
  /** The body is complete and the request handed to dispatch(), which always finishes it. */
  dispatched = false;
  chunks: Buffer[] | undefined;
  size = 0;
  meta: RequestMetadata | undefined;
  constructor(
    readonly res: HttpResponse,
    readonly op: OpName,
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

  /** Per prefix, the metrics of each operation (no string building per request). */
  const routeMetrics = new Map<string, Record<OpName, RouteMetrics>>();
  function metricsOf(op: OpName, prefix: string): RouteMetrics | undefined {
    const m = opts.metrics;
    if (m === undefined) return undefined;
    let byOp = routeMetrics.get(prefix);
    if (byOp === undefined) {
      byOp = {
        GetHealthStatus: m.route('GetHealthStatus', prefix),
        GetKeyMetadata: m.route('GetKeyMetadata', prefix),
        Encrypt: m.route('Encrypt', prefix),
        Decrypt: m.route('Decrypt', prefix),
      };
      routeMetrics.set(prefix, byOp);
    }
    return byOp[op];
  }

  function finish(x: Exchange, status: number, body: string, outcome: string, detail?: string, closeConnection = false): void {
    if (x.done) return;
    x.done = true;
    if (!x.aborted) {
      // While draining, every answer closes its connection: the client reconnects to a live instance.
      const close = closeConnection || draining;
      x.res.cork(() => {
        x.res.writeStatus(STATUS_LINE[status] ?? `${status}`).writeHeader('content-type', JSON_TYPE).end(body, close);
      });
    }
    const elapsed = performance.now() - x.started;
    const result = x.aborted ? 'aborted' : outcome;
    x.metrics?.record(result, elapsed / 1000);
    log.request({
      op: x.op,
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
    const json = parseJsonObject(body);
    let meta: RequestMetadata;
    switch (x.op) {
      case 'GetHealthStatus':
        meta = healthShape(json);
        x.meta = meta;
        return getHealthStatus(ctx);
      case 'GetKeyMetadata':
        meta = metadataShape(json);
        x.meta = meta;
        checkKey(x);
        if (routing.authorizer !== undefined) await routing.authorizer.authorize(x.store.prefix, 'metadata', meta);
        return getKeyMetadata(ctx, x.keyId);
      case 'Encrypt': {
        const shape = encryptShape(json);
        x.meta = shape.requestMetadata;
        checkKey(x);
        if (routing.authorizer !== undefined) await routing.authorizer.authorize(x.store.prefix, 'encrypt', shape.requestMetadata);
        return encrypt(ctx, x.keyId, encryptInput(shape, opts.limits));
      }
      case 'Decrypt': {
        const shape = decryptShape(json);
        x.meta = shape.requestMetadata;
        checkKey(x);
        if (routing.authorizer !== undefined) await routing.authorizer.authorize(x.store.prefix, 'decrypt', shape.requestMetadata);
        return decrypt(ctx, x.keyId, decryptInput(shape, opts.limits));
      }
    }
  }

  function checkKey(x: Exchange): void {
    if (!x.store.keyIds.has(x.keyId)) throw new XksError('KeyNotFoundException', 'Key id is not in this key store');
  }

  function complete(x: Exchange, body: Buffer): void {
    x.dispatched = true;
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

  function api(op: OpName, prefix: string, withKey: boolean) {
    return (res: HttpResponse, req: HttpRequest): void => {
      const store = routing.stores.get(prefix);
      if (store === undefined) {
        notFound(res, req);
        return;
      }
      const started = performance.now();
      const keyId = withKey ? req.getParameter(0) : '';
      let pending: PendingSignature | undefined;
      let authError: string | undefined;
      if (opts.sigv4Enabled) {
        const r = verifier.begin('POST', req.getUrl(), req.getQuery() ?? '', (name) => req.getHeader(name));
        if (r.ok) pending = r;
        else authError = r.reason;
      }
      const x = new Exchange(res, op, store, keyId, started, pending, metricsOf(op, prefix));
      inFlight++;
      res.onAborted(() => {
        x.aborted = true;
        // The client left before its body arrived: nothing will finish this request otherwise.
        if (!x.dispatched) finish(x, 400, '', 'aborted');
      });
      const declared = Number(req.getHeader('content-length') || '0');
      if (declared > maxBody) {
        tooLarge(x);
        return;
      }
      res.onData((chunk, isLast) => {
        if (x.done) return;
        const n = chunk.byteLength;
        x.size += n;
        if (x.size > maxBody) {
          tooLarge(x);
          return;
        }
        if (isLast && x.chunks === undefined) {
          const body = Buffer.allocUnsafe(n);
          body.set(new Uint8Array(chunk));
          if (authError !== undefined) fail(x, new XksError('AuthenticationFailedException', 'Request signature is not valid', authError));
          else complete(x, body);
          return;
        }
        const copy = Buffer.allocUnsafe(n);
        copy.set(new Uint8Array(chunk));
        (x.chunks ??= []).push(copy);
        if (isLast) {
          const body = Buffer.concat(x.chunks, x.size);
          x.chunks = undefined;
          if (authError !== undefined) fail(x, new XksError('AuthenticationFailedException', 'Request signature is not valid', authError));
          else complete(x, body);
        }
      });
    };
  }

  /** Answers 413 and closes the connection: the rest of the body is never read. */
  function tooLarge(x: Exchange): void {
    const err = new XksError('PayloadTooLargeException', `Request body exceeds ${maxBody} bytes`);
    finish(x, 413, err.toBody(), err.errorName, undefined, true);
  }

  const ping = (res: HttpResponse): void => {
    if (draining) res.writeStatus(STATUS_LINE[503]!).writeHeader('content-type', 'text/plain').end('stopping\n');
    else res.writeHeader('content-type', 'text/plain').end(pong);
  };

  const metricsText = opts.metricsText;
  const metricsRoute =
    metricsText === undefined
      ? (res: HttpResponse): void => {
          res.writeHeader('content-type', 'text/plain; version=0.0.4').end(opts.metrics!.render());
        }
      : (res: HttpResponse): void => {
          let aborted = false;
          res.onAborted(() => (aborted = true));
          metricsText().then(
            (text) => {
              if (!aborted) res.cork(() => res.writeHeader('content-type', 'text/plain; version=0.0.4').end(text));
            },
            (e: unknown) => {
              log.warn('metrics: cannot collect', { error: e instanceof Error ? e.message : String(e) });
              if (!aborted) res.cork(() => res.writeStatus(STATUS_LINE[503] ?? '503').writeHeader('content-type', 'text/plain').end('metrics unavailable\n'));
            },
          );
        };
  const serveMetrics = opts.metrics !== undefined || metricsText !== undefined;

  const notFound = (res: HttpResponse, req: HttpRequest): void => {
    if (opts.metrics) opts.metrics.unmatched++;
    const err = new XksError('InvalidUriPathException', 'No such URI path');
    log.debug('no route', { method: req.getMethod(), path: req.getUrl().slice(0, 300) });
    res.onAborted(() => undefined);
    res.writeStatus(STATUS_LINE[404]!).writeHeader('content-type', JSON_TYPE).end(err.toBody());
  };

  const notAllowed = (res: HttpResponse): void => {
    res
      .writeStatus('405 Method Not Allowed')
      .writeHeader('allow', 'POST')
      .writeHeader('content-type', JSON_TYPE)
      .end('{"errorName":"ValidationException","errorMessage":"Method not allowed; use POST"}');
  };

  const app = makeApp();
  const registered = new Set<string>();
  const registerPrefix = (prefix: string): void => {
    if (registered.has(prefix)) return;
    registered.add(prefix);
    const base = `${prefix}/kms/xks/v1`;
    const routes: [string, OpName, boolean][] = [
      [`${base}/health`, 'GetHealthStatus', false],
      [`${base}/keys/:keyId/metadata`, 'GetKeyMetadata', true],
      [`${base}/keys/:keyId/encrypt`, 'Encrypt', true],
      [`${base}/keys/:keyId/decrypt`, 'Decrypt', true],
    ];
    for (const [pattern, op, withKey] of routes) {
      app.post(pattern, api(op, prefix, withKey));
      app.any(pattern, notAllowed);
    }
  };
  for (const store of opts.keyStores) registerPrefix(store.prefix);
  app.get('/ping', ping);
  const separatePing = opts.pingPort !== opts.port;
  if (serveMetrics && !separatePing) app.get('/metrics', metricsRoute);
  app.any('/*', notFound);

  const listeners: us_listen_socket[] = [];
  const listen = (a: TemplatedApp, port: number): Promise<number> =>
    new Promise((resolve, reject) => {
      a.listen(opts.host, port, (socket) => {
        if (!socket) {
          reject(new Error(`cannot listen on ${opts.host}:${port}`));
          return;
        }
        listeners.push(socket);
        resolve(uws.us_socket_local_port(socket as unknown as Parameters<Uws['us_socket_local_port']>[0]));
      });
    });

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
    let pingApp: TemplatedApp | undefined;
    if (separatePing && opts.pingListener !== false) {
      pingApp = uws.App();
      pingApp.get('/ping', ping);
      if (serveMetrics) pingApp.get('/metrics', metricsRoute);
      pingApp.any('/*', notFound);
      pingPort = await listen(pingApp, opts.pingPort);
    } else if (separatePing) {
      pingPort = opts.pingPort;
    }
    return {
      port,
      pingPort,
      close() {
        for (const s of listeners.splice(0)) uws.us_listen_socket_close(s);
      },
      startDraining() {
        draining = true;
      },
      closeConnections() {
        // us_listen_socket_close on sockets app.close() closes too would be a double close.
        listeners.splice(0);
        closeApp(app);
        if (pingApp) closeApp(pingApp);
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

/** TemplatedApp.close() (in the binary, missing from the package's types): closes its listen sockets and every connection. */
function closeApp(app: TemplatedApp): void {
  (app as TemplatedApp & { close(): void }).close();
}
