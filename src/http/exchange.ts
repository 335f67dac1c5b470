/**
 * One request in flight (an Exchange), from its headers to its answer, and the scan of its
 * headers for how its body is framed.
 */
import type { ClientAddress } from '../audit/record.js';
import type { XksError } from '../errors.js';
import type { Operation } from '../ops/operation.js';
import type { RouteMetrics } from '../metrics.js';
import type { PendingSignature } from '../sigv4.js';
import type { RequestMetadata } from '../validate.js';
import type { KeyStoreRoute } from './server.js';
import type { HttpRequest, HttpResponse } from './uws.js';

/** Per-request state kept across onData and the HSM round trip. */
export class Exchange {
  aborted = false;
  done = false;
  /** The body is complete and the request handed to the pipeline's dispatch, which always finishes it. */
  dispatched = false;
  /** The connection is not read while the HSM works (see src/http/server.ts). */
  paused = false;
  /** Why the connection closed before the answer, when the client did not close it. */
  abortDetail: string | undefined;
  /** The answer of a refused request whose body is being read and thrown away. */
  refusal: XksError | undefined;
  drainTimer: NodeJS.Timeout | undefined;
  chunks: Buffer[] | undefined;
  size = 0;
  meta: RequestMetadata | undefined;
  /** The peer's address, read at the request's start when there is an audit trail. */
  client: ClientAddress = '';
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

/** Wipes the body's chunk copies (they may hold Base64 plaintext). */
export function wipeChunks(x: Exchange): void {
  if (x.chunks === undefined) return;
  for (const c of x.chunks) c.fill(0);
  x.chunks = undefined;
}

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
    if (framing.contentLength !== undefined && value !== framing.contentLength)
      framing.problem = 'Content-Length headers with different values';
    framing.contentLength = value;
  } else if (name === 'transfer-encoding') {
    // uWS takes any Transfer-Encoding for chunked: only a single "chunked" (any case, RFC 9112 section 7) means that.
    if (++framing.codings > 1 || value.toLowerCase() !== 'chunked') framing.problem = 'Transfer-Encoding other than chunked';
  }
}

/** Scans the request's headers once (req.forEach, no closure per request); valid until the next scan. */
export function scanFraming(req: HttpRequest): typeof framing {
  framing.problem = undefined;
  framing.contentLength = undefined;
  framing.codings = 0;
  req.forEach(scanHeader);
  return framing;
}
