/**
 * The HSM boundary: intent-level calls over the native PKCS#11 engine. Nothing above
 * this file sees a PKCS#11 return code; failures come out as typed XksErrors whose
 * `detail` (for the operator's log only) names the CKR code and function.
 */
import { XksError } from '../errors.js';
import type { Logger } from '../log.js';
import { isNativeError, loadAddon } from './addon.js';
import type { EngineOptions, EngineStats, IvMode, NativeEngine, NativeError, OpenResult, TokenInfo } from './addon.js';

export type { EngineOptions, EngineStats, IvMode, OpenResult, TokenInfo };

/** A cached health verdict (the deep health check of src/health/); see Hsm.setHealthSource. */
export type HealthState = 'ACTIVE' | 'DEGRADED' | 'UNAVAILABLE';

export interface HealthVerdict {
  state: HealthState;
  /** Token info of the last successful check (undefined before one succeeded). */
  token: TokenInfo | undefined;
}

export interface HealthSource {
  /** The last verdict, at once (no HSM call). */
  current(): HealthVerdict;
  /** Stops background checks (called by Hsm.close()). */
  stop?(): void;
}

export interface Sealed {
  ciphertext: Buffer;
  tag: Buffer;
  iv: Buffer;
}

export interface KeyMetadata {
  keySpec: string;
  keyUsage: string[];
}

/** What a key label names in the token (doctor): how many secret-key objects, and the one's attributes. */
export type KeyDescription =
  | { objects: 0 }
  | { objects: 'several' }
  | { objects: 1; keyType: string; bits: number; encrypt: boolean; decrypt: boolean };

/**
 * Hsm.open() failed: `code` is the engine's (a CKR_ name, XKS_LOAD_FAILED, or XKS_IV_ZERO /
 * XKS_IV_REPEATED / XKS_BAD_OUTPUT for the start-up IV test), `fn` the PKCS#11 function.
 */
export class HsmOpenError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly fn: string | undefined,
    /** True when the start-up IV test failed ([hsm_capabilities] does not suit the HSM). */
    readonly ivTest: boolean,
  ) {
    super(message);
    this.name = 'HsmOpenError';
  }
}

export function ivMode(canGenerateIv: boolean, isZeroIvRequired: boolean): IvMode {
  if (!canGenerateIv) return 'random';
  return isZeroIvRequired ? 'hsm-zero-buffer' : 'hsm-appended';
}

function detail(e: NativeError): string {
  return e.fn ? `${e.fn}: ${e.code}` : e.code;
}

/** Errors every operation shares. */
function common(e: unknown): XksError {
  if (e instanceof XksError) return e;
  if (!isNativeError(e)) return new XksError('InternalException', 'HSM failure', e instanceof Error ? e.message : String(e));
  switch (e.code) {
    case 'XKS_KEY_NOT_FOUND':
      return new XksError('KeyNotFoundException', 'Key not found in the HSM', detail(e));
    case 'XKS_KEY_AMBIGUOUS':
      return new XksError('KeyNotFoundException', 'Key label is not unique in the HSM', detail(e));
    case 'XKS_POOL_EXHAUSTED':
      return new XksError('InternalException', 'Session pool exhaustion', detail(e));
    case 'XKS_TIMEOUT':
      return new XksError('DependencyTimeoutException', 'The HSM did not answer in time', detail(e));
    case 'CKR_KEY_FUNCTION_NOT_PERMITTED':
      return new XksError('InvalidKeyUsageException', 'The key does not support this operation', detail(e));
    case 'XKS_KEY_SPEC':
      // The spec: "the specified key does not support the requested operation" (XKS v1 is AES-256 only).
      return new XksError('InvalidKeyUsageException', 'The key is not an AES-256 key', detail(e));
    case 'XKS_CLOSED':
      return new XksError('InternalException', 'The HSM connection is shutting down', detail(e));
    default:
      return new XksError('InternalException', 'HSM failure', detail(e));
  }
}

/** Decrypt failures that mean "these inputs do not authenticate" (as the Rust proxy maps them). */
const BAD_CIPHERTEXT = new Set([
  'CKR_ENCRYPTED_DATA_INVALID',
  'CKR_ENCRYPTED_DATA_LEN_RANGE',
  'CKR_GENERAL_ERROR', // SoftHSM2's tag mismatch
  'CKR_FUNCTION_FAILED', // nShield's
  'CKR_AEAD_DECRYPT_FAILED', // PKCS#11 3.0's (0x42)
]);

/** Encrypt failures that mean the HSM did not generate the IV ([hsm_capabilities] can_generate_iv = true). */
const IV_NOT_GENERATED = new Set(['XKS_IV_ZERO', 'XKS_IV_REPEATED']);
const IV_LOG_INTERVAL_MS = 60_000;

/** The [hsm_capabilities] line an IV failure names. */
function capabilities(mode: IvMode): string {
  return `[hsm_capabilities] can_generate_iv = true, is_zero_iv_required = ${mode === 'hsm-zero-buffer'}`;
}

function decryptError(e: unknown): XksError {
  if (isNativeError(e) && BAD_CIPHERTEXT.has(e.code)) {
    return new XksError('InvalidCiphertextException', 'The ciphertext, IV, AAD, metadata or tag is invalid', detail(e));
  }
  return common(e);
}

const VERIFY_FAILED = 'The verifying decrypt of the new ciphertext failed';

/**
 * The CDIV's verifying decrypt failed: a key that cannot decrypt cannot vouch for its
 * ciphertext (the Rust proxy and the AWS test client expect InvalidKeyUsageException); any
 * other failure means the fresh ciphertext is not safe to hand out.
 */
function verifyError(e: NativeError): XksError {
  if (e.code === 'XKS_CDIV_MISMATCH') {
    return new XksError('InternalException', VERIFY_FAILED, 'CDIV: the decrypted ciphertext differs from the plaintext');
  }
  const x = decryptError(e);
  if (x.errorName === 'InvalidKeyUsageException' || x.errorName === 'KeyNotFoundException') return x;
  return new XksError('InternalException', VERIFY_FAILED, x.detail ?? x.errorName);
}

function hmacError(e: unknown): XksError {
  if (isNativeError(e) && e.code === 'XKS_HMAC_KEY_SPEC') {
    return new XksError('InternalException', 'The audit HMAC key is not a generic secret key', detail(e));
  }
  return common(e);
}

/** Where the duration of each HSM call goes (metrics); seconds, submit to settle. */
export interface HsmCallTimers {
  encrypt: { observe(seconds: number): void };
  decrypt: { observe(seconds: number): void };
  keyInfo: { observe(seconds: number): void };
  tokenInfo: { observe(seconds: number): void };
}

export class Hsm {
  private timers: HsmCallTimers | undefined;

  /** Records the duration of every later call (the HSM part of each request, for /metrics). */
  timeCalls(timers: HsmCallTimers): void {
    this.timers = timers;
  }

  private health: HealthSource | undefined;
  private ivLoggedAt = Number.NEGATIVE_INFINITY;

  private constructor(
    private readonly engine: NativeEngine,
    private readonly mode: IvMode,
    private readonly log: Logger | undefined,
    /** What open() found (HSM down, serialized calls, the IV test). */
    readonly opened: OpenResult,
  ) {}

  /**
   * Operator lines about how the HSM was found at start-up: [level, message] pairs for the
   * caller's logger (empty when all is well). Never secrets.
   */
  startupNotes(): [level: 'warn' | 'info', message: string][] {
    const o = this.opened;
    const notes: ['warn' | 'info', string][] = [];
    if (!o.ready) {
      notes.push([
        'warn',
        `HSM unavailable at start-up (${o.downFn ?? 'C_Initialize'}: ${o.downCode ?? 'unknown'}): serving anyway; key operations answer 500 and health UNAVAILABLE until the HSM answers, retried with backoff`,
      ]);
    }
    if (o.serialized) {
      notes.push([
        'warn',
        `the PKCS#11 module refused OS locking (C_Initialize: ${o.lockingCode ?? 'error'}) and was initialized for single-threaded use: every HSM call of this process now runs one at a time`,
      ]);
    }
    if (o.ivCheck === 'passed') notes.push(['info', `${capabilities(this.mode)}: test encryptions got HSM-generated IVs`]);
    const b = o.ivBufferOff;
    if (b !== undefined) {
      const limit = b.memlockLimit === undefined ? 'unlimited' : `${b.memlockLimit} bytes`;
      notes.push([
        'warn',
        `the IV buffer is off: ${b.step} of its ${b.bytes} bytes failed (${b.error}; RLIMIT_MEMLOCK is ${limit}) and IVs are buffered only in memory that is never swapped or dumped; instead every Encrypt generates its own IV with C_GenerateRandom (one more HSM round trip each). Allow at least ${b.bytes} bytes of locked memory per event loop (systemd LimitMEMLOCK=, ulimit -l) to turn it on`,
      ]);
    }
    if (o.ivCheck === 'skipped') {
      notes.push([
        'warn',
        `${capabilities(this.mode)}: the start-up IV test was skipped (${o.ivCheckFn ?? 'PKCS#11'}: ${o.ivCheckCode ?? 'error'}); every encryption's IV is still checked`,
      ]);
    }
    return notes;
  }

  /** Installs (or removes) the deep health check whose verdict GetHealthStatus reports. */
  setHealthSource(source: HealthSource | undefined): void {
    this.health = source;
  }

  /** The deep health check, when one runs. */
  healthSource(): HealthSource | undefined {
    return this.health;
  }

  /**
   * Loads the PKCS#11 module, initializes it and logs in one session. An HSM that is down
   * does not fail this (see startupNotes); `log` gets the rate-limited IV errors.
   */
  static async open(options: EngineOptions, log?: Logger): Promise<Hsm> {
    const { Engine } = loadAddon();
    const engine = new Engine({
      ...options,
      onSessionLimit: (sessions) =>
        log?.warn(
          `the HSM refused a new session (C_OpenSession: CKR_SESSION_COUNT) with ${sessions} of this event loop's sessions open: the session pool stays at ${sessions} (requests wait for one of them, up to session_pool_timeout_milli) and tries to grow again in a minute`,
          { sessions },
        ),
    });
    let opened: OpenResult;
    try {
      opened = await engine.open();
    } catch (e) {
      await engine.close().catch(() => undefined);
      if (isNativeError(e) && (IV_NOT_GENERATED.has(e.code) || (e.code === 'XKS_BAD_OUTPUT' && options.ivMode !== 'random'))) {
        throw new HsmOpenError(
          `${capabilities(options.ivMode)} cannot work with this HSM: a test encryption ${e.code === 'XKS_BAD_OUTPUT' ? 'returned no IV where this mode expects one' : e.code === 'XKS_IV_ZERO' ? 'got an all-zero IV (the HSM did not generate one)' : 'got the same IV twice'}; set can_generate_iv = false (the proxy then makes the IV with C_GenerateRandom) or fix the HSM's IV generation`,
          e.code,
          e.fn,
          true,
        );
      }
      const why = isNativeError(e) ? detail(e) : e instanceof Error ? e.message : String(e);
      throw new HsmOpenError(
        `cannot open the HSM module ${options.modulePath}: ${why}`,
        isNativeError(e) ? e.code : 'XKS_LOAD_FAILED',
        isNativeError(e) ? e.fn : undefined,
        false,
      );
    }
    return new Hsm(engine, options.ivMode, log, opened);
  }

  /**
   * AES-256-GCM in the HSM with the key labelled `keyId`; `aad` is the complete HSM AAD.
   * `verify` (the CDIV): the ciphertext is returned only after it decrypted, in the same HSM
   * job, to the plaintext.
   */
  async encrypt(keyId: string, plaintext: Buffer, aad: Buffer, verify = false): Promise<Sealed> {
    let out: Buffer;
    const t0 = performance.now();
    try {
      out = await this.engine.encrypt(keyId, plaintext, aad, verify);
    } catch (e) {
      if (isNativeError(e) && e.verifying === true) throw verifyError(e);
      if (isNativeError(e) && e.code === 'CKR_ENCRYPTED_DATA_INVALID') {
        throw new XksError('InvalidCiphertextException', 'The HSM rejected the input', detail(e));
      }
      if (isNativeError(e) && IV_NOT_GENERATED.has(e.code)) this.ivFailure(e);
      throw common(e);
    } finally {
      this.timers?.encrypt.observe((performance.now() - t0) / 1000);
    }
    const n = out.length - 28;
    return { ciphertext: out.subarray(0, n), tag: out.subarray(n, n + 16), iv: out.subarray(n + 16) };
  }

  /** An encrypt whose IV the HSM did not generate: ERROR, at most once a minute (no IV, no key bytes). */
  private ivFailure(e: NativeError): void {
    const now = performance.now();
    if (now - this.ivLoggedAt < IV_LOG_INTERVAL_MS) return;
    this.ivLoggedAt = now;
    this.log?.error(
      `the HSM returned ${e.code === 'XKS_IV_ZERO' ? 'an all-zero' : 'a repeated'} GCM IV: encryptions fail (500) so that no nonce is reused; ${capabilities(this.mode)} is the likely cause (can_generate_iv = false makes the proxy generate the IV)`,
      { code: e.code },
    );
  }

  async decrypt(keyId: string, ciphertext: Buffer, tag: Buffer, iv: Buffer, aad: Buffer): Promise<Buffer> {
    const t0 = performance.now();
    try {
      return await this.engine.decrypt(keyId, ciphertext, tag, iv, aad);
    } catch (e) {
      throw decryptError(e);
    } finally {
      this.timers?.decrypt.observe((performance.now() - t0) / 1000);
    }
  }

  /** keySpec and keyUsage as GetKeyMetadata reports them. */
  async keyMetadata(keyId: string): Promise<KeyMetadata> {
    const t0 = performance.now();
    try {
      const info = await this.engine.keyInfo(keyId).finally(() => this.timers?.keyInfo.observe((performance.now() - t0) / 1000));
      const usage: string[] = [];
      if (info.encrypt) usage.push('ENCRYPT');
      if (info.decrypt) usage.push('DECRYPT');
      if (info.sign) usage.push('SIGN');
      if (info.verify) usage.push('VERIFY');
      if (info.wrap) usage.push('WRAP');
      if (info.unwrap) usage.push('UNWRAP');
      return { keySpec: `${info.keyType}_${info.bits}`, keyUsage: usage };
    } catch (e) {
      throw common(e);
    }
  }

  /**
   * What `label` names in the token: no secret-key object, several, or one with its type, length
   * and CKA_ENCRYPT / CKA_DECRYPT (doctor; KMS needs exactly one AES-256 key that does both).
   */
  async describeKey(label: string): Promise<KeyDescription> {
    try {
      const info = await this.engine.keyInfo(label);
      return { objects: 1, keyType: info.keyType, bits: info.bits, encrypt: info.encrypt, decrypt: info.decrypt };
    } catch (e) {
      if (isNativeError(e) && e.code === 'XKS_KEY_NOT_FOUND') return { objects: 0 };
      if (isNativeError(e) && e.code === 'XKS_KEY_AMBIGUOUS') return { objects: 'several' };
      throw common(e);
    }
  }

  async tokenInfo(): Promise<TokenInfo> {
    const t0 = performance.now();
    try {
      return await this.engine.tokenInfo();
    } catch (e) {
      throw common(e);
    } finally {
      this.timers?.tokenInfo.observe((performance.now() - t0) / 1000);
    }
  }

  /**
   * Dev and test tooling only (init-dev): makes a token AES-256 key labelled `label`,
   * generated in the HSM or imported from `value`.
   */
  async createKey(label: string, usage: { encrypt: boolean; decrypt: boolean; value?: Buffer }): Promise<void> {
    try {
      await this.engine.createKey(
        label,
        usage.value
          ? { value: usage.value, encrypt: usage.encrypt, decrypt: usage.decrypt }
          : { encrypt: usage.encrypt, decrypt: usage.decrypt },
      );
    } catch (e) {
      throw common(e);
    }
  }

  /**
   * HMAC-SHA256 computed in the HSM with the CKK_GENERIC_SECRET key labelled `keyId`
   * (the audit trail's checkpoints): 32 bytes. `data` is not secret.
   */
  async hmacSign(keyId: string, data: Buffer): Promise<Buffer> {
    try {
      return await this.engine.hmac(keyId, data);
    } catch (e) {
      throw hmacError(e);
    }
  }

  /** Whether the HSM accepts `mac` as the HMAC-SHA256 of `data` with the key labelled `keyId`. */
  async hmacVerify(keyId: string, data: Buffer, mac: Buffer): Promise<boolean> {
    try {
      return await this.engine.hmacVerify(keyId, data, mac);
    } catch (e) {
      throw hmacError(e);
    }
  }

  /** Dev and test tooling only (init-dev): makes a token HMAC key (CKK_GENERIC_SECRET, 32 bytes). */
  async createHmacKey(label: string, value?: Buffer): Promise<void> {
    try {
      await this.engine.createKey(
        label,
        value ? { value, encrypt: false, decrypt: false, hmac: true } : { encrypt: false, decrypt: false, hmac: true },
      );
    } catch (e) {
      throw common(e);
    }
  }

  stats(): EngineStats {
    return this.engine.stats();
  }

  close(): Promise<void> {
    this.health?.stop?.();
    return this.engine.close();
  }
}
