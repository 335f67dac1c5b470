/**
 * The shape of the C++ addon (native/, built to build/Release/xks_pkcs11.node).
 * Only src/hsm/ imports this; everything above talks to the facade in src/hsm/hsm.ts.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

/** How the HSM gets its GCM IV ([hsm_capabilities] of settings.toml). */
export type IvMode =
  /** can_generate_iv = false: 12 bytes from C_GenerateRandom, passed in CK_GCM_PARAMS. */
  | 'random'
  /** can_generate_iv = true, is_zero_iv_required = false: the HSM appends its IV after the tag (Luna). */
  | 'hsm-appended'
  /** can_generate_iv = true, is_zero_iv_required = true: a zeroed 12-byte IV buffer the HSM fills (CloudHSM). */
  | 'hsm-zero-buffer';

export interface EngineOptions {
  /** Path of the PKCS#11 shared library. */
  modulePath: string;
  /** CKU_USER PIN. Never logged, never put in an error message. */
  userPin: string;
  /** Upper bound of open sessions (session_pool_max_size). */
  poolMaxSize: number;
  /** A job that cannot get a session within this many ms fails with XKS_POOL_EXHAUSTED (session_pool_timeout_milli). */
  poolTimeoutMs: number;
  /** Close the session after every job (session_eager_close). */
  eagerClose: boolean;
  /** Worker threads owned by the addon that run the PKCS#11 calls. */
  threads: number;
  ivMode: IvMode;
}

export interface KeyInfo {
  /** CKK_ name without the prefix, e.g. "AES". */
  keyType: string;
  /** CKA_VALUE_LEN * 8 (0 when the HSM does not say). */
  bits: number;
  encrypt: boolean;
  decrypt: boolean;
  sign: boolean;
  verify: boolean;
  wrap: boolean;
  unwrap: boolean;
}

export interface Version {
  major: number;
  minor: number;
}

export interface TokenInfo {
  label: string;
  manufacturerId: string;
  model: string;
  serialNumber: string;
  hardwareVersion: Version;
  firmwareVersion: Version;
}

export interface CreateKeyOptions {
  /** 32 bytes to import (C_CreateObject); absent: C_GenerateKey CKM_AES_KEY_GEN. */
  value?: Buffer;
  encrypt: boolean;
  decrypt: boolean;
  wrap?: boolean;
  unwrap?: boolean;
}

export interface EngineStats {
  /** Sessions currently open (idle + in use). */
  sessionsOpen: number;
  /** Sessions idle in the pool. */
  sessionsIdle: number;
  /** Jobs submitted and not yet settled. */
  inFlight: number;
  /** Times the module was finalized and re-initialized. */
  reinitializations: number;
}

/**
 * Rejections carry `code`: a PKCS#11 return value by name ("CKR_ENCRYPTED_DATA_INVALID")
 * or one of XKS_POOL_EXHAUSTED, XKS_KEY_NOT_FOUND, XKS_KEY_AMBIGUOUS, XKS_CLOSED,
 * XKS_BAD_ARGUMENT, XKS_LOAD_FAILED; and `fn`: the PKCS#11 function that failed, if any.
 */
export interface NativeError extends Error {
  code: string;
  fn?: string;
}

export interface NativeEngine {
  /** dlopen, C_GetFunctionList, C_Initialize (OS locking), first slot, one session logged in. */
  open(): Promise<void>;
  /** Resolves ciphertext || tag(16) || iv(12) in one buffer. `aad` is the complete AAD for the HSM. */
  encrypt(label: string, plaintext: Buffer, aad: Buffer): Promise<Buffer>;
  /** Resolves the plaintext. */
  decrypt(label: string, ciphertext: Buffer, tag: Buffer, iv: Buffer, aad: Buffer): Promise<Buffer>;
  keyInfo(label: string): Promise<KeyInfo>;
  tokenInfo(): Promise<TokenInfo>;
  random(length: number): Promise<Buffer>;
  /** Dev and test tooling: make a token AES-256 key with this label. */
  createKey(label: string, options: CreateKeyOptions): Promise<void>;
  stats(): EngineStats;
  /** Waits for running jobs, fails queued ones with XKS_CLOSED, closes sessions, C_Finalize. */
  close(): Promise<void>;
}

export interface NativeAddon {
  Engine: new (options: EngineOptions) => NativeEngine;
}

export function isNativeError(e: unknown): e is NativeError {
  return e instanceof Error && typeof (e as { code?: unknown }).code === 'string';
}

let addon: NativeAddon | undefined;

/** Loads build/Release/xks_pkcs11.node (relative to the package root, from src/ or dist/src/). */
export function loadAddon(): NativeAddon {
  if (addon) return addon;
  const here = path.dirname(fileURLToPath(import.meta.url));
  const require = createRequire(import.meta.url);
  const candidates = [path.resolve(here, '../../build/Release/xks_pkcs11.node'), path.resolve(here, '../../../build/Release/xks_pkcs11.node')];
  let lastError: unknown;
  for (const candidate of candidates) {
    try {
      addon = require(candidate) as NativeAddon;
      return addon;
    } catch (e) {
      lastError = e;
    }
  }
  throw new Error(`cannot load the native addon (run npm run build:native): ${String(lastError)}`);
}
