/**
 * The shape of the C++ addon (native/, built to build/Release/xks_pkcs11.node).
 * Only src/hsm/ imports this; everything above talks to the facade in src/hsm/hsm.ts.
 */
import { loadBuilt } from '../native-build.js';

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
  /**
   * A job that cannot get a session within this many ms of being submitted fails with
   * XKS_POOL_EXHAUSTED (session_pool_timeout_milli); so does a job that already waited
   * longer than this in the queue when a worker picks it up. 0 means: no waiting at all,
   * one attempt to take or open a session (the Rust proxy's behaviour), and no queue-age check.
   */
  poolTimeoutMs: number;
  /** Close the session after every job (session_eager_close). */
  eagerClose: boolean;
  /** Worker threads owned by the addon that run the PKCS#11 calls (1..256). */
  threads: number;
  /**
   * Absent or 0: all `threads` serve. Otherwise `threads` is a ceiling: the engine measures its
   * calls' CPU time against the time they block in the HSM and lets about
   * adaptCores x (cpu + blocked) / cpu threads serve (at least adaptCores); the rest park.
   */
  adaptCores?: number;
  ivMode: IvMode;
  /**
   * Deadline of every call, in ms from submission (0 or absent: none). A call still queued,
   * waiting for a session or inside the HSM at its deadline rejects with XKS_TIMEOUT at once
   * (within a few ms). A thread stuck inside the HSM is quarantined together with its
   * session: a replacement thread starts (at most max(threads, 2) stuck threads) and the
   * stuck session stops counting against poolMaxSize (at most poolMaxSize quarantined). When
   * the call returns, its session is closed and the thread rejoins (or exits if not needed).
   */
  operationTimeoutMs?: number;
  /**
   * Encrypt and decrypt with a session-object copy of each key, made inside the HSM with
   * C_CopyObject (CKA_TOKEN false) into one extra session that the engine keeps open (default
   * false). A module that refuses the copy is used through the token key.
   */
  keyCopies?: boolean;
  /**
   * Re-check a cached key at most this many ms after the last check (1..3600000, default 1000):
   * the token object behind a session copy (encrypt / decrypt), and the attributes key metadata
   * reports (keyInfo answers from the cache, without a PKCS#11 call, in between).
   */
  keyCheckMs?: number;
  /**
   * Called on the JS thread when the HSM refused a C_OpenSession with CKR_SESSION_COUNT and the
   * pool now keeps to `sessions` (the ones it has); once per new number. Jobs then wait for a
   * pooled session instead of failing; the pool tries to grow again a minute later.
   */
  onSessionLimit?: (sessions: number) => void;
  /** How long the pool keeps to a session cap the HSM imposed before it tries to grow again (1..3600000 ms, default 60000). */
  sessionRegrowMs?: number;
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

/** What open() found. */
export interface OpenResult {
  /**
   * False: the HSM was down or unreachable (a device-level code from C_Initialize, the slot
   * list, C_OpenSession or C_Login); calls fail fast with that code and retry the
   * initialization with backoff until it works (docs/hsm-failures.md, "Recovery").
   */
  ready: boolean;
  /** Why not ready (a CKR_ name) and in which function. */
  downCode?: string;
  downFn?: string;
  /**
   * The module refused OS locking (its answer to C_Initialize with CKF_OS_LOCKING_OK is
   * lockingCode) and was initialized with NULL arguments: the engine then makes one PKCS#11
   * call sequence at a time, across every engine of the process.
   */
  serialized: boolean;
  lockingCode?: string;
  /**
   * HSM-generated IV modes: 'passed' (two test encrypts with a temporary session key got
   * distinct, non-zero IVs) or 'skipped' (the HSM would not make or use that key: ivCheckFn,
   * ivCheckCode); absent in the 'random' mode and when not ready.
   */
  ivCheck?: 'passed' | 'skipped';
  ivCheckCode?: string;
  ivCheckFn?: string;
  /**
   * 'random' IV mode only: the IV buffer is off, and every encrypt makes its own
   * C_GenerateRandom, because this step of setting up its memory failed (`error`: an errno
   * name, or "unsupported"); `bytes` it needed; `memlockLimit`: RLIMIT_MEMLOCK's soft limit in
   * bytes (absent: unlimited). Absent: the buffer is in use (or another IV mode).
   */
  ivBufferOff?: { step: string; error: string; bytes: number; memlockLimit?: number };
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
  /** 16, 24 or 32 bytes to import (C_CreateObject); absent: C_GenerateKey CKM_AES_KEY_GEN, 32 bytes. */
  value?: Buffer;
  encrypt: boolean;
  decrypt: boolean;
  wrap?: boolean;
  unwrap?: boolean;
  /**
   * A CKK_GENERIC_SECRET key for CKM_SHA256_HMAC instead (CKA_SIGN, CKA_VERIFY true; generated
   * with CKM_GENERIC_SECRET_KEY_GEN, 32 bytes, or `value`, which must then be 32 bytes).
   */
  hmac?: boolean;
}

export interface EngineStats {
  /** Sessions currently open (idle + in use + quarantined). */
  sessionsOpen: number;
  /** Sessions idle in the pool. */
  sessionsIdle: number;
  /** Jobs submitted and not yet settled. */
  inFlight: number;
  /** Times the module was finalized and re-initialized. */
  reinitializations: number;
  /** Sessions stuck in an overrunning call, not counted against poolMaxSize. */
  sessionsQuarantined: number;
  /** Threads stuck in an overrunning call. */
  workersStuck: number;
  /** Cached keys used through a session copy (keyCopies). */
  keyCopies: number;
  /** The session that holds the key copies is open (one more than sessionsOpen at the module). */
  keySessionOpen: boolean;
  /** Calls that failed with XKS_TIMEOUT. */
  timeouts: number;
  /** Sessions dropped because the HSM failed them (device- or session-level codes, see docs/hsm-failures.md). */
  sessionErrors: number;
  /** False while the module is down and being re-initialized (with backoff). */
  ready: boolean;
  /** 'random' IV mode with the IV buffer in use (false: see OpenResult.ivBufferOff; other modes). */
  ivBuffer: boolean;
  /** The session cap the HSM imposed (CKR_SESSION_COUNT) that the pool keeps to now; 0: none. */
  sessionLimit: number;
  /** C_OpenSession calls the HSM refused with CKR_SESSION_COUNT. */
  sessionCountRefused: number;
}

/**
 * Rejections carry `code`: a PKCS#11 return value by name ("CKR_ENCRYPTED_DATA_INVALID";
 * unknown values "CKR_0x%08lx") or one of
 *   XKS_POOL_EXHAUSTED  no session within poolTimeoutMs,
 *   XKS_TIMEOUT         operationTimeoutMs passed before the call completed,
 *   XKS_KEY_NOT_FOUND   no CKO_SECRET_KEY token object with the label (fn "C_FindObjects"),
 *   XKS_KEY_AMBIGUOUS   two or more such objects (fn "C_FindObjects"),
 *   XKS_CLOSED          the engine is not open (before open() resolved, after close()), or a
 *                       queued job was dropped by close(),
 *   XKS_LOAD_FAILED     dlopen / C_GetFunctionList failed (open() only; message has dlerror()),
 *   XKS_BAD_OUTPUT      the module returned output of an unexpected length (e.g. 'hsm-appended'
 *                       against a module that appends no IV; fn "C_Encrypt"),
 *   XKS_KEY_SPEC        encrypt / decrypt with a key that is not CKK_AES of 32 bytes (no HSM call),
 *   XKS_HMAC_KEY_SPEC   hmac / hmacVerify with a key that is not CKK_GENERIC_SECRET,
 *   XKS_IV_ZERO         HSM-generated IV modes: the IV came back all zero (fn "C_Encrypt"),
 *   XKS_IV_REPEATED     ... equal to the label's previous IV in this engine (fn "C_Encrypt");
 *                       both also fail open() when its test encrypt sees them,
 *   XKS_CDIV_MISMATCH   encrypt with `verify`: the new ciphertext decrypted to other bytes than
 *                       the plaintext (fn "C_Decrypt"),
 *   XKS_BAD_ARGUMENT    see below;
 * and `fn`: the PKCS#11 function that failed, if any. Messages are "<fn> failed: <code>" for
 * PKCS#11 failures and never contain the PIN, key bytes, plaintext or the label.
 *
 * Bad arguments (wrong types, empty label, tag not 16 bytes, ...) never reach a worker: the
 * method (or the constructor) throws a TypeError synchronously, with code XKS_BAD_ARGUMENT.
 * Limits: label 1..1024 UTF-8 bytes; plaintext, ciphertext and aad <= 1 MiB; iv 1..256 bytes;
 * random length 0..65536; poolMaxSize 1..4096; userPin <= 1024 bytes.
 */
export interface NativeError extends Error {
  code: string;
  fn?: string;
  /** encrypt with `verify`: the failure (or the timeout) came in the verifying decrypt. */
  verifying?: boolean;
}

export interface NativeEngine {
  /**
   * dlopen, C_GetFunctionList, C_Initialize (OS locking), first slot, one session logged in,
   * all on an addon thread. Resolves at once when already open; may be retried after a failure.
   * C_Initialize/C_Finalize are reference counted per module path across the engines of one
   * process. PKCS#11 login state is per process: while another engine of the same process is
   * logged in to the token, C_Login answers CKR_USER_ALREADY_LOGGED_IN even for a wrong PIN.
   * An HSM that is down (see OpenResult.ready) does not fail open(); a wrong PIN, a library that
   * cannot be loaded or any other code does. In the HSM-generated IV modes open() also runs a
   * test encrypt (see OpenResult.ivCheck) and fails when its IV was not generated.
   */
  open(): Promise<OpenResult>;
  /**
   * Resolves ciphertext || tag(16) || iv(12) in one buffer. `aad` is the complete AAD for the HSM.
   * `verify` (the CDIV): the same job, in the same session with the same key, decrypts the new
   * ciphertext and compares it with the plaintext in constant time; it resolves only when they
   * match (else no ciphertext leaves the engine: XKS_CDIV_MISMATCH, or the decrypt's failure,
   * with `verifying` set).
   */
  encrypt(label: string, plaintext: Buffer, aad: Buffer, verify?: boolean): Promise<Buffer>;
  /** Resolves the plaintext. `tag` must be 16 bytes; `iv` 1..256 bytes (XKS uses 12). */
  decrypt(label: string, ciphertext: Buffer, tag: Buffer, iv: Buffer, aad: Buffer): Promise<Buffer>;
  keyInfo(label: string): Promise<KeyInfo>;
  tokenInfo(): Promise<TokenInfo>;
  random(length: number): Promise<Buffer>;
  /**
   * Dev and test tooling: make a token AES key with this label (CKA_TOKEN, CKA_PRIVATE,
   * CKA_SENSITIVE true; CKA_EXTRACTABLE, CKA_SIGN, CKA_VERIFY false; wrap/unwrap default false).
   */
  createKey(label: string, options: CreateKeyOptions): Promise<void>;
  /** HMAC-SHA256 (CKM_SHA256_HMAC, C_Sign) of `data` with the generic secret key labelled `label`: 32 bytes. */
  hmac(label: string, data: Buffer): Promise<Buffer>;
  /** C_Verify of `mac` over `data`: false when the HSM answers CKR_SIGNATURE_INVALID or _LEN_RANGE. */
  hmacVerify(label: string, data: Buffer, mac: Buffer): Promise<boolean>;
  stats(): EngineStats;
  /**
   * Waits for running jobs, fails queued ones with XKS_CLOSED, closes sessions, C_Finalize
   * (when no other engine of the process uses the module). Idempotent; an engine cannot be
   * reopened. An open engine with no job in flight does not keep the process alive.
   */
  close(): Promise<void>;
}

/** The integer options the engine bounds, and their bounds (native/limits.h, the one source of them). */
export type BoundedOption = 'poolMaxSize' | 'poolTimeoutMs' | 'threads' | 'operationTimeoutMs' | 'keyCheckMs';
export type EngineLimits = Readonly<Record<BoundedOption, Readonly<{ min: number; max: number }>>>;

export interface NativeAddon {
  Engine: new (options: EngineOptions) => NativeEngine;
  /** Inclusive bounds of the integer options; the constructor throws a TypeError outside them. */
  limits: EngineLimits;
}

export function isNativeError(e: unknown): e is NativeError {
  return e instanceof Error && typeof (e as { code?: unknown }).code === 'string';
}

let addon: NativeAddon | undefined;

/** Loads build/Release/xks_pkcs11.node (relative to the package root, from src/ or dist/src/). */
export function loadAddon(): NativeAddon {
  addon ??= loadBuilt<NativeAddon>('xks_pkcs11.node', 'the native addon');
  return addon;
}
