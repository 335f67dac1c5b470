/** A throw-away SoftHSM2 token with one AES-256 key, for the bench. */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadAddon, type EngineOptions, type NativeEngine } from '../../src/hsm/addon.js';

export const KEY_LABEL = 'xks-key';

const MODULES = ['/usr/lib/softhsm/libsofthsm2.so', '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so', '/usr/local/lib/softhsm/libsofthsm2.so'];

export interface BenchToken {
  dir: string;
  modulePath: string;
  pin: string;
  /** SOFTHSM2_CONF for this token. */
  conf: string;
  remove(): void;
}

export async function makeToken(): Promise<BenchToken> {
  const modulePath = MODULES.find((p) => existsSync(p));
  if (!modulePath) throw new Error('SoftHSM2 is not installed (apt-get install softhsm2)');
  const base = existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  const dir = mkdtempSync(path.join(base, 'xks-bench-'));
  const tokens = path.join(dir, 'tokens');
  mkdirSync(tokens, { mode: 0o700 });
  const conf = path.join(dir, 'softhsm2.conf');
  writeFileSync(conf, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
  const pin = randomBytes(6).toString('hex');
  execFileSync('softhsm2-util', ['--init-token', '--free', '--label', 'xks-bench', '--pin', pin, '--so-pin', randomBytes(6).toString('hex')], {
    env: { ...process.env, SOFTHSM2_CONF: conf },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  process.env.SOFTHSM2_CONF = conf;
  const engine = await openEngine({ modulePath, pin, threads: 1, poolMaxSize: 2 });
  try {
    await engine.createKey(KEY_LABEL, { encrypt: true, decrypt: true });
  } finally {
    await engine.close();
  }
  return { dir, modulePath, pin, conf, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Opens an addon engine on the bench token (SOFTHSM2_CONF must be set). */
export async function openEngine(o: { modulePath: string; pin: string; threads: number; poolMaxSize: number }): Promise<NativeEngine> {
  const { Engine } = loadAddon();
  const options: EngineOptions = {
    modulePath: o.modulePath,
    userPin: o.pin,
    poolMaxSize: o.poolMaxSize,
    poolTimeoutMs: 5000,
    eagerClose: false,
    threads: o.threads,
    ivMode: 'random',
  };
  const engine = new Engine(options);
  await engine.open();
  return engine;
}
