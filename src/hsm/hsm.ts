/**
 * The HSM boundary: intent-level calls over the native PKCS#11 engine. Nothing above
 * this file sees a PKCS#11 return code; failures come out as typed XksErrors whose
 * `detail` (for the operator's log only) names the CKR code and function.
 */
import { XksError } from '../errors.js';
import { isNativeError, loadAddon } from './addon.js';
import type { EngineOptions, EngineStats, IvMode, NativeEngine, NativeError, TokenInfo } from './addon.js';

export type { EngineStats, IvMode, TokenInfo };

export interface HsmSettings {
  modulePath: string;
  userPin: string;
  poolMaxSize: number;
  poolTimeoutMs: number;
  eagerClose: boolean;
  threads: number;
  canGenerateIv: boolean;
  isZeroIvRequired: boolean;
  /** Deadline of every HSM call in ms ([pkcs11] operation_timeout_milli); 0 = none. */
  operationTimeoutMs?: number;
  /** [pkcs11] session_key_copies / session_key_check_milli. */
  keyCopies?: boolean;
  keyCheckMs?: number;
}

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
    case 'XKS_CLOSED':
      return new XksError('InternalException', 'The HSM connection is shutting down', detail(e));
    default:
      return new XksError('InternalException', 'HSM failure', detail(e));
  }
}

/** Decrypt failures that mean "these inputs do not authenticate" (as the Rust proxy maps them). */
const BAD_CIPHERTEXT = new Set(['CKR_ENCRYPTED_DATA_INVALID', 'CKR_ENCRYPTED_DATA_LEN_RANGE', 'CKR_GENERAL_ERROR', 'CKR_FUNCTION_FAILED']);

function decryptError(e: unknown): XksError {
  if (isNativeError(e) && BAD_CIPHERTEXT.has(e.code)) {
    return new XksError('InvalidCiphertextException', 'The ciphertext, IV, AAD, metadata or tag is invalid', detail(e));
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

  private constructor(private readonly engine: NativeEngine) {}

  /** Installs (or removes) the deep health check whose verdict GetHealthStatus reports. */
  setHealthSource(source: HealthSource | undefined): void {
    this.health = source;
  }

  /** The deep health check, when one runs. */
  healthSource(): HealthSource | undefined {
    return this.health;
  }

  /** Loads the PKCS#11 module, initializes it and logs in one session. */
  static async open(settings: HsmSettings): Promise<Hsm> {
    const options: EngineOptions = {
      modulePath: settings.modulePath,
      userPin: settings.userPin,
      poolMaxSize: settings.poolMaxSize,
      poolTimeoutMs: settings.poolTimeoutMs,
      eagerClose: settings.eagerClose,
      threads: settings.threads,
      ivMode: ivMode(settings.canGenerateIv, settings.isZeroIvRequired),
      operationTimeoutMs: settings.operationTimeoutMs ?? 0,
      keyCopies: settings.keyCopies ?? false,
      ...(settings.keyCheckMs !== undefined ? { keyCheckMs: settings.keyCheckMs } : {}),
    };
    const { Engine } = loadAddon();
    const engine = new Engine(options);
    try {
      await engine.open();
    } catch (e) {
      await engine.close().catch(() => undefined);
      const why = isNativeError(e) ? detail(e) : e instanceof Error ? e.message : String(e);
      throw new Error(`cannot open the HSM module ${settings.modulePath}: ${why}`);
    }
    return new Hsm(engine);
  }

  /** AES-256-GCM in the HSM with the key labelled `keyId`; `aad` is the complete HSM AAD. */
  async encrypt(keyId: string, plaintext: Buffer, aad: Buffer): Promise<Sealed> {
    let out: Buffer;
    const t0 = performance.now();
    try {
      out = await this.engine.encrypt(keyId, plaintext, aad);
    } catch (e) {
      if (isNativeError(e) && e.code === 'CKR_ENCRYPTED_DATA_INVALID') {
        throw new XksError('InvalidCiphertextException', 'The HSM rejected the input', detail(e));
      }
      throw common(e);
    } finally {
      this.timers?.encrypt.observe((performance.now() - t0) / 1000);
    }
    const n = out.length - 28;
    return { ciphertext: out.subarray(0, n), tag: out.subarray(n, n + 16), iv: out.subarray(n + 16) };
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
      await this.engine.createKey(label, usage.value ? { value: usage.value, encrypt: usage.encrypt, decrypt: usage.decrypt } : { encrypt: usage.encrypt, decrypt: usage.decrypt });
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
