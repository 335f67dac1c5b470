/**
 * The API listener's routes: each key store prefix gets every operation's route (POST; any other
 * method 405), /ping (when port_http_ping = port), and 404 InvalidUriPathException for the rest.
 */
import { XksError, STATUS_LINE } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { OPERATIONS } from '../ops/index.js';
import type { Handler, Pipeline } from './pipeline.js';
import { JSON_TYPE, type Responder } from './respond.js';
import type { HttpRequest, HttpResponse, TemplatedApp } from './uws.js';

const NOT_FOUND = new XksError('InvalidUriPathException', 'No such URI path').toBody();
const NOT_ALLOWED = new XksError('ValidationException', 'Method not allowed; use POST').toBody();

/** Ends with `body`, or for a HEAD request with its length only (a body after a HEAD answer would be read as the next answer). */
function endFor(res: HttpResponse, req: HttpRequest, body: string): void {
  if (req.getMethod() === 'head') res.writeHeader('content-length', String(Buffer.byteLength(body))).endWithoutBody();
  else res.end(body);
}

/** 404 InvalidUriPathException, counted in xks_unmatched_requests_total. */
export function notFoundHandler(log: Logger, metrics: Metrics | undefined): Handler {
  return (res, req) => {
    if (metrics) metrics.unmatched++;
    log.debug('no route', { method: req.getMethod(), path: req.getUrl().slice(0, 300) });
    res.onAborted(() => undefined);
    endFor(res.writeStatus(STATUS_LINE[404]!).writeHeader('content-type', JSON_TYPE), req, NOT_FOUND);
  };
}

function notAllowed(res: HttpResponse, req: HttpRequest): void {
  endFor(res.writeStatus('405 Method Not Allowed').writeHeader('allow', 'POST').writeHeader('content-type', JSON_TYPE), req, NOT_ALLOWED);
}

/** Registers each prefix's routes once (routes of uWS cannot be removed: a removed prefix answers 404 in the pipeline). */
export class PrefixRoutes {
  private readonly registered = new Set<string>();
  constructor(
    private readonly app: TemplatedApp,
    private readonly pipeline: Pipeline,
  ) {}

  register(prefix: string): void {
    if (this.registered.has(prefix)) return;
    this.registered.add(prefix);
    const base = `${prefix}/kms/xks/v1`;
    for (const op of OPERATIONS) {
      const pattern = base + op.route;
      this.app.post(pattern, this.pipeline.handler(op, prefix));
      this.app.any(pattern, notAllowed);
    }
  }
}

/** GET and HEAD /ping on the API listener. A HEAD answer has the GET's headers and no body. */
export function addPing(app: TemplatedApp, pong: string, r: Responder): void {
  app.get('/ping', (res) => {
    if (r.draining) res.writeStatus(STATUS_LINE[503]!).writeHeader('content-type', 'text/plain').end('stopping\n');
    else res.writeHeader('content-type', 'text/plain').end(pong);
  });
  app.head('/ping', (res) => {
    // endWithoutBody(length) of this uWS never marks the answer done: the length goes in as a header.
    const body = r.draining ? 'stopping\n' : pong;
    if (r.draining) res.writeStatus(STATUS_LINE[503]!);
    res
      .writeHeader('content-type', 'text/plain')
      .writeHeader('content-length', String(Buffer.byteLength(body)))
      .endWithoutBody();
  });
}
