/**
 * Loads uWebSockets.js's native binary directly. The npm package we use falls back to a
 * slow pure-JavaScript server when its binary does not load; we refuse that fallback.
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import type * as UWS from '@trufflesuite/uws-js-unofficial';

export type { HttpRequest, HttpResponse, TemplatedApp, us_listen_socket } from '@trufflesuite/uws-js-unofficial';
export type Uws = typeof UWS;

let cached: Uws | undefined;

/** The binary's module, once per thread (each worker thread has its own event loop and its own copy). */
export function loadUws(): Uws {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const pkgDir = path.dirname(require.resolve('@trufflesuite/uws-js-unofficial/package.json'));
  const binary = path.join(pkgDir, 'binaries', `uws_${process.platform}_${process.arch}_${process.versions.modules}.node`);
  let loaded: Uws;
  try {
    loaded = require(binary) as Uws;
  } catch (e) {
    throw new Error(
      `uWebSockets.js native binary ${path.basename(binary)} did not load (${e instanceof Error ? e.message : String(e)}); ` +
        'refusing the slow pure-JavaScript fallback',
    );
  }
  // Every response would carry a "uWebSockets: 20" header naming our HTTP library. The binary's
  // _cfg("silent") (its only setting) turns that off for this thread's loop (uWS Loop::setSilent).
  loaded._cfg('silent');
  cached = loaded;
  return cached;
}
