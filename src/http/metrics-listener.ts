/**
 * The `[metrics]` listener: GET /metrics (Prometheus text) on its own address, only when the
 * operator enables it. /metrics names every key store prefix and its traffic and has no
 * authentication, so it is never served on the API or ping ports (which face the load balancer).
 * node:http: scrapes are rare, and a node:http server never shares its port (no SO_REUSEPORT).
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Logger } from '../log.js';
import { listenNode } from './listen.js';

export interface MetricsListenerOptions {
  host: string;
  port: number;
  /** The exposition text: this loop's, or the sum over every event loop ([server] workers). */
  text(): Promise<string>;
}

export interface MetricsListener {
  port: number;
  close(): void;
}

const PROMETHEUS_TYPE = 'text/plain; version=0.0.4';

export async function startMetricsListener(o: MetricsListenerOptions, log: Logger): Promise<MetricsListener> {
  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    const path = req.url === undefined ? '' : req.url.split('?', 1)[0];
    if (path !== '/metrics' || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    o.text().then(
      (text) => {
        res.writeHead(200, { 'content-type': PROMETHEUS_TYPE, 'content-length': Buffer.byteLength(text) });
        res.end(req.method === 'HEAD' ? undefined : text);
      },
      (e: unknown) => {
        log.warn('metrics: cannot collect', { error: e instanceof Error ? e.message : String(e) });
        res.writeHead(503, { 'content-type': 'text/plain' }).end('metrics unavailable\n');
      },
    );
  };
  const server = createServer({ requireHostHeader: false }, handler);
  server.requestTimeout = 10_000;
  server.headersTimeout = 10_000;
  const port = await listenNode(server, 'metrics.port', o.host, o.port);
  return {
    port,
    close() {
      server.close();
      server.closeAllConnections();
    },
  };
}
