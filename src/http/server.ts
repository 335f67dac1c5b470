/**
 * The HTTP front end on uWebSockets.js, put together: routes for every keystore prefix
 * (routes.ts), one pipeline for every operation (pipeline.ts: SigV4, shape, key, policy, limits,
 * run; body.ts reads the body with a hard size cap; respond.ts answers with typed JSON errors and
 * one log line per request), listeners (api-listener.ts, ping.ts) and the graceful stop.
 * Handlers never block: HSM work returns through Promises settled by the addon's own threads.
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
 *   and DRAIN_MAX_MS of body.ts) before the 413 is written and the connection closed, so that the client reads
 *   the 413 instead of a reset. A request whose SigV4 header check failed is answered 401 at once;
 *   uWS then skips its body (at most the size limit: larger or chunked bodies are drained as above).
 */
import type { Authorizer } from '../auth/oso.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import type { OpContext } from '../ops/context.js';
import type { Credential } from '../sigv4.js';
import type { Limits } from '../validate.js';
import { ApiListener, makeApp, type PortSharing } from './api-listener.js';
import { startPingListener, type PingListener } from './ping.js';
import { Pipeline } from './pipeline.js';
import { Responder } from './respond.js';
import { addPing, notFoundHandler, PrefixRoutes } from './routes.js';
import { loadUws } from './uws.js';

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
  portSharing?: PortSharing | undefined;
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

export function startServer(opts: ServerOptions, ctx: OpContext, log: Logger): Promise<RunningServer> {
  const uws = loadUws();
  const pong = `pong from xks-proxy v${opts.version}\n`;
  const app = makeApp(uws, opts.tls, opts.listenUnix !== undefined);
  const responder = new Responder(log, opts.metrics, ctx.audit);
  const notFound = notFoundHandler(log, opts.metrics);
  const routing = (keyStores: readonly KeyStoreRoute[], authorizer: Authorizer | undefined) => ({
    stores: new Map(keyStores.map((k) => [k.prefix, k])),
    authorizer,
  });
  const pipeline = new Pipeline(opts, routing(opts.keyStores, opts.authorizer), ctx, responder, notFound);
  const routes = new PrefixRoutes(app, pipeline);
  for (const store of opts.keyStores) routes.register(store.prefix);
  addPing(app, pong, responder);
  app.any('/*', notFound);
  const separatePing = opts.pingPort !== opts.port;
  const listener = new ApiListener(uws, app, opts.host, opts.portSharing ?? 'exclusive');

  return (async () => {
    let port = opts.port;
    if (opts.listenUnix !== undefined) await listener.listenUnix(opts.listenUnix);
    else port = await listener.listenPort(opts.port);
    let pingPort = port;
    let pingListener: PingListener | undefined;
    if (separatePing && opts.pingListener !== false) {
      try {
        pingListener = await startPingListener({
          host: opts.host,
          port: opts.pingPort,
          pong,
          draining: () => responder.draining,
          onUnmatched: opts.metrics ? () => opts.metrics!.unmatched++ : undefined,
        });
      } catch (e) {
        listener.close();
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
        listener.close();
        pingListener?.close();
      },
      startDraining() {
        responder.draining = true;
      },
      closeConnections() {
        listener.closeConnections();
        pingListener?.closeConnections();
      },
      drained(timeoutMs) {
        return responder.drained(timeoutMs);
      },
      apply(keyStores, authorizer) {
        for (const k of keyStores) routes.register(k.prefix);
        pipeline.routing = routing(keyStores, authorizer);
      },
    };
  })();
}
