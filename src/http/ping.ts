/**
 * The separate `port_http_ping` listener, on node:http: GET and HEAD /ping for load balancers.
 *
 * Health checkers such as HAProxy's `option httpchk` and keepalived send HTTP/1.0, often without a
 * Host header. uWebSockets.js accepts only "HTTP/1.1" request lines (anything else waits for more
 * bytes until its 10 s timeout) and closes HTTP/1.1 requests without Host, so this listener is
 * node:http (plain HTTP, little traffic): HTTP/1.0 and 1.1, Host optional, keep-alive as the
 * client asks. Everything but /ping is 404 InvalidUriPathException, as on the API port.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { XksError } from '../errors.js';
import { listenNode } from './listen.js';

export interface PingOptions {
  host: string;
  port: number;
  /** The 200 body ("pong from xks-proxy vX\n"). */
  pong: string;
  /** True once the proxy is stopping: /ping answers 503. */
  draining(): boolean;
  /** Called for each request that matched no route (the unmatched-requests counter). */
  onUnmatched?: (() => void) | undefined;
}

export interface PingListener {
  port: number;
  /** Stops accepting; idle keep-alive connections close. */
  close(): void;
  /** Closes every connection now. */
  closeConnections(): void;
}

const NOT_FOUND = new XksError('InvalidUriPathException', 'No such URI path').toBody();

/** The path of a request target without its query ("/ping?x" is /ping, as in the Rust proxy's router). */
function pathOf(url: string | undefined): string {
  if (url === undefined) return '';
  const q = url.indexOf('?');
  return q < 0 ? url : url.slice(0, q);
}

export async function startPingListener(o: PingOptions): Promise<PingListener> {
  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    if (pathOf(req.url) === '/ping' && (req.method === 'GET' || req.method === 'HEAD')) {
      const stopping = o.draining();
      const body = stopping ? 'stopping\n' : o.pong;
      res.writeHead(stopping ? 503 : 200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
      res.end(req.method === 'HEAD' ? undefined : body);
      return;
    }
    o.onUnmatched?.();
    res.writeHead(404, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(NOT_FOUND) });
    res.end(req.method === 'HEAD' ? undefined : NOT_FOUND);
  };
  const server: Server = createServer({ requireHostHeader: false }, handler);
  // Health checks are small: a request that does not arrive within 10 s is dropped.
  server.requestTimeout = 10_000;
  server.headersTimeout = 10_000;
  const port = await listenNode(server, 'server.port_http_ping', o.host, o.port);
  return {
    port,
    close() {
      server.close();
      server.closeIdleConnections();
    },
    closeConnections() {
      server.closeAllConnections();
    },
  };
}
