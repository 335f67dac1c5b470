import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

function readVersion(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const candidate of ['../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(path.resolve(here, candidate), 'utf8')) as { name?: unknown; version?: unknown };
      if (pkg.name === 'xks-proxy' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // try the next location (src/ when run by vitest, dist/src/ when built)
    }
  }
  return '0.0.0';
}

/** This product's version, from package.json. */
export const VERSION = readVersion();
