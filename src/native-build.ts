/**
 * Loading the project's own native builds (build/Release/*.node, made by node-gyp from binding.gyp):
 * the PKCS#11 engine (src/hsm/addon.ts) and the mTLS terminator (src/http/mtls-addon.ts).
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));

/** Loads build/Release/<file> relative to the package root, from src/ or dist/src/; `what` names it in the error. */
export function loadBuilt<T>(file: string, what: string): T {
  const candidates = [path.resolve(here, '../build/Release', file), path.resolve(here, '../../build/Release', file)];
  let lastError: unknown;
  for (const candidate of candidates) {
    try {
      return require(candidate) as T;
    } catch (e) {
      lastError = e;
    }
  }
  throw new Error(`cannot load ${what} (run npm run build:native): ${String(lastError)}`);
}
