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

export function loadUws(): Uws {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const pkgDir = path.dirname(require.resolve('@trufflesuite/uws-js-unofficial/package.json'));
  const binary = path.join(pkgDir, 'binaries', `uws_${process.platform}_${process.arch}_${process.versions.modules}.node`);
  try {
    cached = require(binary) as Uws;
  } catch (e) {
    throw new Error(
      `uWebSockets.js native binary ${path.basename(binary)} did not load (${e instanceof Error ? e.message : String(e)}); ` +
        'refusing the slow pure-JavaScript fallback',
    );
  }
  // The binary prints a banner on load in some builds; nothing else to do.
  return cached;
}
