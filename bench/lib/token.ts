/** A throw-away SoftHSM2 token with one AES-256 key, for the bench. */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initSoftHsmToken } from '../../src/dev/softhsm.js';
import { loadAddon, type EngineOptions, type NativeEngine } from '../../src/hsm/addon.js';

export const KEY_LABEL = 'xks-key';

export interface BenchToken {
  dir: string;
  modulePath: string;
  pin: string;
  /** SOFTHSM2_CONF for this token. */
  conf: string;
  remove(): void;
}

export async function makeToken(): Promise<BenchToken> {
  const base = existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  const dir = mkdtempSync(path.join(base, 'xks-bench-'));
  const pin = randomBytes(6).toString('hex');
  const { confPath: conf, modulePath } = initSoftHsmToken(dir, 'xks-bench', pin, randomBytes(6).toString('hex'));
  process.env.SOFTHSM2_CONF = conf;
  const engine = await openEngine({ modulePath, pin, threads: 1, poolMaxSize: 2, keyCopies: false });
  try {
    await engine.createKey(KEY_LABEL, { encrypt: true, decrypt: true });
  } finally {
    await engine.close();
  }
  return { dir, modulePath, pin, conf, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Opens an addon engine on the bench token (SOFTHSM2_CONF must be set). */
export async function openEngine(o: {
  modulePath: string;
  pin: string;
  threads: number;
  poolMaxSize: number;
  keyCopies: boolean;
}): Promise<NativeEngine> {
  const { Engine } = loadAddon();
  const options: EngineOptions = {
    modulePath: o.modulePath,
    userPin: o.pin,
    poolMaxSize: o.poolMaxSize,
    poolTimeoutMs: 5000,
    eagerClose: false,
    threads: o.threads,
    ivMode: 'random',
    keyCopies: o.keyCopies,
  };
  const engine = new Engine(options);
  await engine.open();
  return engine;
}
