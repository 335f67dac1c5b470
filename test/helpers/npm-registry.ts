/**
 * A read-only npm registry on 127.0.0.1 serving this project's production dependencies, so a
 * test can run a real `npm install` of the packed tarball without leaving the machine. It serves
 * the exact tarballs the lockfile pins (read from npm's own cache, where `npm ci` put them, and
 * checked against the lockfile's integrity) with packuments made from their package.json files.
 */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';

interface LockEntry {
  version?: string;
  integrity?: string;
  dev?: boolean;
  link?: boolean;
}

interface Served {
  manifest: Record<string, unknown>;
  tarball: Buffer;
  integrity: string;
}

export interface LocalRegistry {
  url: string;
  /** Package names served, and how many tarballs were fetched. */
  served: readonly string[];
  tarballRequests(): number;
  close(): Promise<void>;
}

/** The bytes npm's content-addressed cache (cacache) holds for this integrity, checked. */
function cachedTarball(cacheDir: string, integrity: string): Buffer {
  const m = /^sha512-([A-Za-z0-9+/=]+)$/.exec(integrity);
  if (!m) throw new Error(`unsupported integrity ${integrity}`);
  const hex = Buffer.from(m[1]!, 'base64').toString('hex');
  const file = path.join(cacheDir, '_cacache', 'content-v2', 'sha512', hex.slice(0, 2), hex.slice(2, 4), hex.slice(4));
  if (!existsSync(file)) throw new Error(`${integrity} is not in npm's cache ${cacheDir} (run npm ci first)`);
  const bytes = readFileSync(file);
  if (createHash('sha512').update(bytes).digest('hex') !== hex) throw new Error(`cached ${file} does not match its integrity`);
  return bytes;
}

/** Every production package of package-lock.json under `root`, ready to serve. */
function productionPackages(root: string): Map<string, Served> {
  const lock = JSON.parse(readFileSync(path.join(root, 'package-lock.json'), 'utf8')) as { packages: Record<string, LockEntry> };
  const cacheDir = execFileSync('npm', ['config', 'get', 'cache'], { encoding: 'utf8' }).trim();
  const out = new Map<string, Served>();
  for (const [where, entry] of Object.entries(lock.packages)) {
    if (where === '' || entry.dev || entry.link || entry.integrity === undefined) continue;
    const manifest = JSON.parse(readFileSync(path.join(root, where, 'package.json'), 'utf8')) as Record<string, unknown>;
    const name = String(manifest.name);
    if (manifest.version !== entry.version) throw new Error(`${where} is ${String(manifest.version)}, the lockfile says ${entry.version}`);
    out.set(name, { manifest, tarball: cachedTarball(cacheDir, entry.integrity), integrity: entry.integrity });
  }
  return out;
}

export async function startLocalRegistry(root: string): Promise<LocalRegistry> {
  const packages = productionPackages(root);
  let tarballs = 0;
  let base = '';
  const server: Server = createServer((req, res) => {
    const url = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname).slice(1);
    const tgz = /^(.+)\/-\/[^/]+\.tgz$/.exec(url);
    const pkg = packages.get(tgz ? tgz[1]! : url);
    if (!pkg) {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"not found"}');
      return;
    }
    if (tgz) {
      tarballs++;
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': pkg.tarball.length }).end(pkg.tarball);
      return;
    }
    const name = String(pkg.manifest.name);
    const version = String(pkg.manifest.version);
    const file = `${name.split('/').pop()}-${version}.tgz`;
    const packument = {
      name,
      'dist-tags': { latest: version },
      versions: { [version]: { ...pkg.manifest, dist: { tarball: `${base}/${name}/-/${file}`, integrity: pkg.integrity } } },
    };
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(packument));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url: base,
    served: [...packages.keys()],
    tarballRequests: () => tarballs,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
