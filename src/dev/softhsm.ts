/**
 * SoftHSM2 tokens for trials, tests and benchmarks: the library's location and a fresh,
 * initialized token in a directory of its own (softhsm2.conf + token store).
 * SoftHSM2 reads SOFTHSM2_CONF at C_Initialize: point it at `confPath` before opening.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

const MODULE_CANDIDATES = [
  '/usr/lib/softhsm/libsofthsm2.so',
  '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/local/lib/softhsm/libsofthsm2.so',
];

/** Path of the SoftHSM2 PKCS#11 library; throws a clear error when SoftHSM2 is not installed. */
export function softHsmModule(): string {
  const found = MODULE_CANDIDATES.find((p) => existsSync(p));
  if (found === undefined) throw new Error('SoftHSM2 is not installed (apt-get install softhsm2)');
  return found;
}

export interface SoftHsmToken {
  /** softhsm2.conf, for SOFTHSM2_CONF. */
  confPath: string;
  modulePath: string;
}

/** Writes `dir`/softhsm2.conf and `dir`/tokens, and initializes a token there (softhsm2-util). */
export function initSoftHsmToken(dir: string, label: string, pin: string, soPin: string): SoftHsmToken {
  const modulePath = softHsmModule();
  const tokens = path.join(dir, 'tokens');
  mkdirSync(tokens, { recursive: true, mode: 0o700 });
  const confPath = path.join(dir, 'softhsm2.conf');
  writeFileSync(confPath, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`, {
    mode: 0o600,
  });
  try {
    execFileSync('softhsm2-util', ['--init-token', '--free', '--label', label, '--pin', pin, '--so-pin', soPin], {
      env: { ...process.env, SOFTHSM2_CONF: confPath },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  } catch (e) {
    const stderr = (e as { stderr?: Buffer }).stderr?.toString().trim() ?? '';
    throw new Error(`softhsm2-util --init-token failed: ${stderr || (e instanceof Error ? e.message : String(e))}`);
  }
  return { confPath, modulePath };
}
