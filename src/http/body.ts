/**
 * Reading a request's body out of uWS: its chunks are copied (uWS reuses its receive buffer) up to
 * a hard size cap, then joined and handed on. A refused request's body is read and thrown away
 * (up to DRAIN_MAX_BYTES and DRAIN_MAX_MS) before its answer, so that the client reads the answer
 * instead of a reset. Every copy goes through plaintextCopy() and is wiped (see plaintext-copies.ts).
 */
import { XksError } from '../errors.js';
import type { Exchange } from './exchange.js';
import { wipeChunks } from './exchange.js';
import { plaintextCopy } from './plaintext-copies.js';
import type { Responder } from './respond.js';

/** A refused body is read and thrown away up to this many bytes before the answer and the close. */
export const DRAIN_MAX_BYTES = 8 * 1024 * 1024;
/** ... and for at most this long (uWS itself drops a connection idle for 10 s). */
export const DRAIN_MAX_MS = 5000;

/** Where a complete body goes; it owns `body` (and wipes it). */
export interface BodySink {
  complete(x: Exchange, body: Buffer): void;
}

/** Reads x's body (at most `maxBody` bytes, else 413 PayloadTooLargeException) into `sink`. */
export function readBody(x: Exchange, r: Responder, maxBody: number, sink: BodySink): void {
  x.res.onAborted(() => {
    x.aborted = true;
    // A paused connection is not read, so the client's leaving goes unseen: uWS itself closed it,
    // because another request arrived on it before this answer (or the proxy is stopping).
    if (x.paused) x.abortDetail = 'connection closed by uWS while waiting on the HSM: another request arrived on it (pipelining)';
    // The client left before its body arrived: nothing will finish this request otherwise.
    if (!x.dispatched) r.finish(x, 400, '', 'aborted');
  });
  x.res.onData((chunk, isLast) => {
    if (x.done) return;
    const n = chunk.byteLength;
    x.size += n;
    if (x.refusal !== undefined) {
      if (isLast || x.size > DRAIN_MAX_BYTES) r.answerRefusal(x);
      return;
    }
    if (x.size > maxBody) {
      wipeChunks(x);
      x.refusal = new XksError('PayloadTooLargeException', `Request body exceeds ${maxBody} bytes`);
      if (isLast) r.answerRefusal(x);
      else x.drainTimer = setTimeout(() => r.answerRefusal(x), DRAIN_MAX_MS);
      return;
    }
    if (isLast && x.chunks === undefined) {
      const body = plaintextCopy(Buffer.allocUnsafe(n));
      body.set(new Uint8Array(chunk));
      sink.complete(x, body);
      return;
    }
    const copy = plaintextCopy(Buffer.allocUnsafe(n));
    copy.set(new Uint8Array(chunk));
    (x.chunks ??= []).push(copy);
    if (isLast) {
      const body = plaintextCopy(Buffer.concat(x.chunks, x.size));
      wipeChunks(x);
      sink.complete(x, body);
    }
  });
}

/**
 * Answers `err` after reading and throwing away the body (up to DRAIN_MAX_BYTES and DRAIN_MAX_MS),
 * then closes the connection: a client still sending would otherwise get a reset instead of the
 * answer. A declared body beyond the bound is not read: the answer goes out at once.
 */
export function refuse(x: Exchange, r: Responder, err: XksError, declared: number): void {
  x.refusal = err;
  if (declared > DRAIN_MAX_BYTES) {
    r.answerRefusal(x);
    return;
  }
  x.res.onAborted(() => {
    x.aborted = true;
    r.finish(x, err.status, '', 'aborted');
  });
  x.res.onData((chunk, isLast) => {
    if (x.done) return;
    x.size += chunk.byteLength;
    if (isLast || x.size > DRAIN_MAX_BYTES) r.answerRefusal(x);
  });
  x.drainTimer = setTimeout(() => r.answerRefusal(x), DRAIN_MAX_MS);
}
