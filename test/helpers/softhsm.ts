/**
 * SoftHSM2 test tokens for tests that need a real PKCS#11 module.
 *
 * SoftHSM2 reads SOFTHSM2_CONF when C_Initialize runs, so a test process sets
 * `process.env.SOFTHSM2_CONF = token.confPath` before the first engine.open(), and uses
 * one token per process (vitest runs every test file in its own forked process).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { initSoftHsmToken } from '../../src/dev/softhsm.js';
import { isNativeError, type NativeEngine, type NativeError } from '../../src/hsm/addon.js';

export interface TestToken {
  /** Temporary directory holding the configuration and the token store. */
  dir: string;
  /** softhsm2.conf for SOFTHSM2_CONF. */
  confPath: string;
  modulePath: string;
  /** CKU_USER PIN. */
  pin: string;
  /** Token label. */
  label: string;
  /** Environment for a child process: { SOFTHSM2_CONF }. */
  env: Record<string, string>;
  /** Removes the directory. */
  cleanup(): void;
}

const USER_PIN = 'pin-8Qz3Tw-test';
const SO_PIN = '12345678';

/** A fresh, initialized SoftHSM2 token in its own temporary directory. */
export function makeToken(label = 'xks-test'): TestToken {
  const dir = mkdtempSync(path.join(tmpdir(), 'xks-softhsm-'));
  let token;
  try {
    token = initSoftHsmToken(dir, label, USER_PIN, SO_PIN);
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const confPath = token.confPath;
  const env = { SOFTHSM2_CONF: confPath };
  return {
    dir,
    confPath,
    modulePath: token.modulePath,
    pin: USER_PIN,
    label,
    env,
    cleanup() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The "known value" AES-256 key: bytes 0..31. */
export const KNOWN_KEY: Buffer = Buffer.from(Array.from({ length: 32 }, (_, i) => i));

export const TEST_KEYS = {
  ordinary: 'xks-key',
  encryptOnly: 'xks-enc-only',
  decryptOnly: 'xks-dec-only',
  impotent: 'xks-impotent',
  duplicate: 'xks-dup',
  known: 'xks-known',
} as const;

/**
 * Creates the test keys on an open engine: ordinary (encrypt+decrypt), encrypt-only,
 * decrypt-only, neither, two objects labelled xks-dup, and xks-known holding KNOWN_KEY.
 */
export async function createTestKeys(engine: NativeEngine): Promise<void> {
  await engine.createKey(TEST_KEYS.ordinary, { encrypt: true, decrypt: true });
  await engine.createKey(TEST_KEYS.encryptOnly, { encrypt: true, decrypt: false });
  await engine.createKey(TEST_KEYS.decryptOnly, { encrypt: false, decrypt: true });
  await engine.createKey(TEST_KEYS.impotent, { encrypt: false, decrypt: false });
  await engine.createKey(TEST_KEYS.duplicate, { encrypt: true, decrypt: true });
  await engine.createKey(TEST_KEYS.duplicate, { encrypt: true, decrypt: true });
  await engine.createKey(TEST_KEYS.known, { value: KNOWN_KEY, encrypt: true, decrypt: true });
}

/** The NativeError a call rejects with (fails the test when it resolves or throws something else). */
export async function rejection(p: Promise<unknown>): Promise<NativeError> {
  try {
    await p;
  } catch (e) {
    if (isNativeError(e)) return e;
    throw e;
  }
  throw new Error('expected a rejection');
}

/** The addon's encrypt output (ciphertext, 16-byte tag, 12-byte IV) in its three parts. */
export function splitSealed(out: Buffer): { ct: Buffer; tag: Buffer; iv: Buffer } {
  return { ct: out.subarray(0, out.length - 28), tag: out.subarray(out.length - 28, out.length - 12), iv: out.subarray(out.length - 12) };
}
