/** Child processes of the bench: the proxy (CLI) and the empty uWebSockets.js server. */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { settingsToml as renderSettings } from '../../src/dev/settings-toml.js';
import type { BenchToken } from './token.js';
import { REGION, SERVICE } from './sign.js';

const here = path.dirname(fileURLToPath(import.meta.url));
/** Package root (dist/bench/lib -> ../../..). */
export const ROOT = path.resolve(here, '..', '..', '..');

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

export interface Store {
  prefix: string;
  accessKeyId: string;
  secretAccessKey: string;
  keys: string[];
}

export interface ProxySettings {
  token: BenchToken;
  port: number;
  store: Store;
  poolMaxSize: number;
  /** [pkcs11] worker_threads; undefined: unset, the engine adapts (the proxy's default). */
  workerThreads: number | undefined;
  level: string;
  /** [server] workers (event loops); default: the proxy's (all cores). */
  workers?: number;
  /** [pkcs11] session_key_copies; default: the proxy's default (true). */
  keyCopies?: boolean;
  /** [pkcs11] session_key_check_milli; default: the proxy's (1 s). */
  keyCheckMs?: number;
  /** [health_check]: the deep health check on this key, every intervalSecs; default: none. */
  healthCheck?: { keyId: string; intervalSecs: number };
  /** The PKCS#11 module; default the token's (SoftHSM2), e.g. the fault module in front of it. */
  modulePath?: string;
  /** More environment for the proxy process (e.g. FAULTY_PKCS11_*). */
  env?: Record<string, string>;
  /** [audit] (bench/audit.ts); absent: no trail. */
  audit?: { directory: string; hmacKeyId: string; durability: string };
}

/** settings.toml in the Rust proxy's format. */
export function settingsToml(s: ProxySettings): string {
  return renderSettings({
    port: s.port,
    workers: s.workers,
    region: REGION,
    service: SERVICE,
    tracing: { stdout: true, level: s.level, directory: `${s.token.dir}/logs`, rotation: 'NEVER' },
    stores: [s.store],
    pkcs11: {
      pin: s.token.pin,
      modulePath: s.modulePath ?? s.token.modulePath,
      poolMaxSize: s.poolMaxSize,
      poolTimeoutMs: 1000,
      workerThreads: s.workerThreads,
      keyCopies: s.keyCopies,
      keyCheckMs: s.keyCheckMs,
    },
    healthCheck: s.healthCheck,
    audit: s.audit,
  });
}

export interface Child {
  proc: ChildProcess;
  port: number;
  /** Why it is gone, or undefined while it runs. */
  exited(): string | undefined;
  stop(): Promise<number | null>;
}

function stopper(proc: ChildProcess): () => Promise<number | null> {
  return () =>
    new Promise((resolve) => {
      if (proc.exitCode !== null || proc.signalCode !== null) {
        resolve(proc.exitCode);
        return;
      }
      const t = setTimeout(() => proc.kill('SIGKILL'), 10000);
      proc.once('exit', (code) => {
        clearTimeout(t);
        resolve(code);
      });
      proc.kill('SIGTERM');
    });
}

function exitedFn(proc: ChildProcess, stderr: () => string): () => string | undefined {
  return () =>
    proc.exitCode !== null || proc.signalCode !== null
      ? `exited with ${proc.signalCode ?? `code ${proc.exitCode}`}${stderr() ? `; stderr: ${stderr().slice(-1500)}` : ''}`
      : undefined;
}

async function waitFor(proc: ChildProcess, ready: () => boolean, what: string, stderr: () => string): Promise<void> {
  const deadline = Date.now() + 20000;
  while (!ready()) {
    if (proc.exitCode !== null || proc.signalCode !== null)
      throw new Error(`${what} exited (${proc.exitCode ?? proc.signalCode}): ${stderr().slice(-2000)}`);
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`${what} did not start within 20 s: ${stderr().slice(-2000)}`);
    }
    await new Promise((r) => setTimeout(r, 30));
  }
}

/**
 * Starts `node bin/xks-proxy.js` with its own settings.toml. Its stdout (one log line
 * per request at INFO) goes to a file in the token dir, not through a pipe we would
 * have to drain. `nodeArgs` e.g. ['--cpu-prof', '--cpu-prof-dir', dir].
 */
export async function startProxyProcess(s: ProxySettings, nodeArgs: string[] = []): Promise<Child & { logFile: string }> {
  const settingsPath = path.join(s.token.dir, `settings-${s.port}.toml`);
  writeFileSync(settingsPath, settingsToml(s), { mode: 0o600 });
  const logFile = path.join(s.token.dir, `proxy-${s.port}.log`);
  const fd = openSync(logFile, 'w');
  const proc = spawn(process.execPath, [...nodeArgs, path.join(ROOT, 'bin', 'xks-proxy.js')], {
    cwd: ROOT,
    env: { ...process.env, ...s.env, XKS_PROXY_SETTINGS_TOML: settingsPath, SOFTHSM2_CONF: s.token.conf },
    stdio: ['ignore', fd, 'pipe'],
  });
  closeSync(fd);
  let err = '';
  proc.stderr!.on('data', (c: Buffer) => (err += c.toString('utf8')));
  await waitFor(
    proc,
    () => readFileSync(logFile, 'utf8').includes('listening'),
    'the proxy',
    () => err + readFileSync(logFile, 'utf8'),
  );
  return { proc, port: s.port, logFile, stop: stopper(proc), exited: exitedFn(proc, () => err) };
}

/** Starts the empty uWebSockets.js server (bench/uws-empty.js). */
export async function startUwsEmpty(): Promise<Child> {
  const port = await freePort();
  const proc = spawn(process.execPath, [path.join(ROOT, 'dist', 'bench', 'uws-empty.js'), '--port', String(port)], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  proc.stdout!.on('data', (c: Buffer) => (out += c.toString('utf8')));
  proc.stderr!.on('data', (c: Buffer) => (err += c.toString('utf8')));
  await waitFor(
    proc,
    () => out.includes('listening'),
    'the empty uWebSockets.js server',
    () => err,
  );
  return { proc, port, stop: stopper(proc), exited: exitedFn(proc, () => err) };
}
