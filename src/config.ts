/**
 * settings.toml: reading, validation and a typed mirror of the file.
 *
 * The file format is the Rust xks-proxy's (aws-samples/aws-kms-xks-proxy, xks-axum/configuration/*.toml);
 * every file that works there loads here unchanged. Field names stay exactly as written in the TOML
 * (snake_case, and `PKCS11_HSM_MODULE` upper case), so `config.pkcs11.session_pool_max_size` is the
 * `[pkcs11] session_pool_max_size` key. A few derived values are added next to the keys they come from
 * (`server.ciphertext_metadata`, `pkcs11.module_path`, `pkcs11.worker_threads`'s default).
 *
 * Every problem is a ConfigError with a one-line message `<file>: <dotted.key>: <problem>`; secret values
 * (sigv4_secret_access_key, user_pin) never appear in a message, a warning or the redacted summary.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { resolve as resolvePath } from 'node:path';
import { parse, TomlError } from 'smol-toml';

/** Tracing levels, most verbose first. */
export type Level = 'TRACE' | 'DEBUG' | 'INFO' | 'WARN' | 'ERROR';
/** tracing-appender rotation kinds. */
export type RotationKind = 'MINUTELY' | 'HOURLY' | 'DAILY' | 'NEVER';

export interface TcpKeepaliveSection {
  /** Idle seconds before the first keepalive probe; absent = keepalive disabled. */
  tcp_keepalive_secs?: number;
  /** Probes sent before the peer is declared dead. */
  tcp_keepalive_retries?: number;
  /** Seconds between unanswered probes. */
  tcp_keepalive_interval_secs?: number;
}

export interface ServerSection {
  ip: string;
  port: number;
  /** Port of the plain-HTTP `GET /ping` listener; default 80; equal to `port` means one listener. */
  port_http_ping: number;
  region: string;
  service: string;
  /** As written in the file (canonical padded base64), when configured. */
  ciphertext_metadata_b64?: string;
  /** Decoded `ciphertext_metadata_b64` (<= 20 bytes), undefined when not configured. */
  ciphertext_metadata: Buffer | undefined;
  /** `[server.tcp_keepalive]`; an empty object when the table is absent. */
  tcp_keepalive: TcpKeepaliveSection;
  /** Event loops (threads) serving the port; absent = os.availableParallelism() (README, "All cores"). */
  workers?: number;
}

export interface TracingSection {
  is_stdout_writer_enabled: boolean;
  is_file_writer_enabled: boolean;
  /** Upper-cased; default INFO when absent. */
  level: Level;
  /** Required when is_file_writer_enabled. */
  directory?: string;
  /** Required when is_file_writer_enabled. */
  file_prefix?: string;
  /** Upper-cased; default HOURLY when absent. */
  rotation_kind: RotationKind;
  /**
   * Our extension (optional key `file_mode`, an octal string): permissions of the log files.
   * loadConfig always sets it (default DEFAULT_LOG_FILE_MODE); absent means that default.
   */
  file_mode?: number;
}

export interface OsoSection {
  polar_file_path: string;
}

export interface SecuritySection {
  is_sigv4_auth_enabled: boolean;
  is_tls_enabled: boolean;
  is_mtls_enabled: boolean;
  /** Only "Oso" exists. */
  secondary_auth?: 'Oso';
  /** `[security.oso]`; required when secondary_auth = "Oso". */
  oso?: OsoSection;
}

export interface TlsSection {
  tls_cert_pem: string;
  tls_key_pem: string;
  /** Required (non-empty) when is_mtls_enabled. */
  mtls_client_ca_pem?: string;
  /** Required (non-empty) when is_mtls_enabled: the client certificate must be valid for this DNS name. */
  mtls_client_dns_name?: string;
}

export interface KeyStore {
  /** "" or starting with "/" (checkPrefix: what KMS cannot send is a warning). */
  uri_path_prefix: string;
  /** The legacy pair; when the file has only `sigv4_credentials`, the first listed credential. */
  sigv4_access_key_id: string;
  /** Non-enumerable: left out of JSON.stringify / util.inspect of the config. */
  sigv4_secret_access_key: string;
  /**
   * Our extension (optional key, for rotation): every credential accepted for this prefix, the legacy
   * pair first (when present) then `sigv4_credentials = [{ access_key_id, secret_access_key }, ...]`,
   * without duplicates. An access key id belongs to one keystore only.
   */
  sigv4_credentials: readonly Sigv4Credential[];
  /** Key ids (PKCS#11 labels) this keystore may use; duplicates in the file are merged. */
  xks_key_id_set: ReadonlySet<string>;
  /** Our extension (optional key): request quota of this keystore (token bucket refill rate). */
  requests_per_second?: number;
  /** Our extension (optional key): token bucket size; defaults to requests_per_second. */
  burst?: number;
}

export interface Sigv4Credential {
  access_key_id: string;
  /** Non-enumerable: left out of JSON.stringify / util.inspect of the config. */
  secret_access_key: string;
}

export interface Pkcs11Section {
  session_pool_max_size: number;
  session_pool_timeout_milli: number;
  session_eager_close: boolean;
  /** Non-enumerable: left out of JSON.stringify / util.inspect of the config. */
  user_pin: string;
  /** As written in the file. */
  PKCS11_HSM_MODULE: string;
  context_read_timeout_milli: number;
  /** Our extension (optional key): threads running PKCS#11 calls; default min(session_pool_max_size, 32). */
  worker_threads: number;
  /**
   * Our extension (optional key): deadline of every HSM call in ms; a call that overruns answers 503
   * DependencyTimeoutException. Default DEFAULT_OPERATION_TIMEOUT_MILLI; 0 = no deadline.
   */
  operation_timeout_milli: number;
  /**
   * Our extension (optional key, default true): encrypt and decrypt with a session-object copy of
   * each key made inside the HSM (C_CopyObject with CKA_TOKEN false; never extracted). Modules that
   * refuse the copy are used through the token key.
   */
  session_key_copies: boolean;
  /**
   * Our extension (optional key): at most this many ms after the last check, the next call re-checks
   * that the label still names the same token key with the same CKA_ENCRYPT/CKA_DECRYPT, and drops a
   * copy that does not. Default DEFAULT_SESSION_KEY_CHECK_MILLI.
   */
  session_key_check_milli: number;
  /** Effective module path: env PKCS11_HSM_MODULE (when set and non-empty) else PKCS11_HSM_MODULE. */
  module_path: string;
}

export interface Pkcs11LoggerSection {
  PKCS11_LOGGER_LIBRARY_PATH: string;
  PKCS11_LOGGER_LOG_FILE_PATH: string;
  PKCS11_LOGGER_FLAGS: string;
}

export interface LimitsSection {
  max_plaintext_in_base64: number;
  max_aad_in_base64: number;
}

export interface HsmCapabilities {
  can_generate_iv: boolean;
  is_zero_iv_required: boolean;
}

/** Our extension (optional table): the deep health check (README, "HSM failures"). */
export interface HealthCheckSection {
  /** Label of the AES key the background encrypt + decrypt uses. */
  key_id: string;
  /** Seconds between checks (1..60; default 10); GetHealthStatus answers from the last one. */
  interval_secs: number;
  /** A check slower than this (ms) reports DEGRADED (default 100). */
  degraded_latency_milli: number;
}

export interface Config {
  server: ServerSection;
  tracing: TracingSection;
  security: SecuritySection;
  tls?: TlsSection;
  external_key_stores: KeyStore[];
  pkcs11: Pkcs11Section;
  pkcs11_logger?: Pkcs11LoggerSection;
  limits: LimitsSection;
  hsm_capabilities: HsmCapabilities;
  health_check?: HealthCheckSection;
  metrics: MetricsSection;
}

export interface LoadedConfig {
  config: Config;
  /** One line each, `<file>: <dotted.key>: <note>`: unknown keys and suspicious values. */
  warnings: string[];
  file: string;
}

export class ConfigError extends Error {
  readonly file: string;
  /** Dotted key path, e.g. `external_key_stores[1].uri_path_prefix`; undefined for file-level problems. */
  readonly key: string | undefined;
  readonly problem: string;

  constructor(file: string, key: string | undefined, problem: string) {
    super(oneLine(key === undefined ? `${file}: ${problem}` : `${file}: ${key}: ${problem}`));
    this.name = 'ConfigError';
    this.file = file;
    this.key = key;
    this.problem = problem;
  }
}

export const XKS_PROXY_SETTINGS_TOML = 'XKS_PROXY_SETTINGS_TOML';
export const PKCS11_HSM_MODULE = 'PKCS11_HSM_MODULE';
export const DEFAULT_BOOTSTRAP_TOML = 'configuration/bootstrap.toml';
export const CIPHERTEXT_METADATA_MAX_BYTES = 20;
/** Default port of the `GET /ping` listener (Rust: port_http_ping unwrap_or(80)). */
export const DEFAULT_PORT_HTTP_PING = 80;
/** Default [tracing] file_mode: owner read/write, group read (a log shipper in the proxy's group). */
export const DEFAULT_LOG_FILE_MODE = 0o640;
export const MAX_DEFAULT_WORKER_THREADS = 32;
/** The addon's bound on one engine's HSM threads (native/addon.cc): a larger value would only fail at start. */
export const MAX_WORKER_THREADS = 256;
/** Most sessions one engine holds (native/addon.cc poolMaxSize). */
export const MAX_SESSION_POOL = 4096;
/** Longest session wait the engine takes (native/addon.cc poolTimeoutMs: a signed 32-bit ms count, 24.8 days). */
export const MAX_POOL_TIMEOUT_MILLI = 0x7fffffff;
/** Default [pkcs11] operation_timeout_milli: an Encrypt with CDIV makes two HSM calls, and both must fit in KMS's 250 ms. */
export const DEFAULT_OPERATION_TIMEOUT_MILLI = 100;
/** Default [pkcs11] session_key_check_milli: a key deleted or disabled in the HSM stops working within this time. */
export const DEFAULT_SESSION_KEY_CHECK_MILLI = 1000;
export const DEFAULT_HEALTH_CHECK_INTERVAL_SECS = 10;
export const DEFAULT_HEALTH_CHECK_DEGRADED_MILLI = 100;
/** Spec: plaintext up to 4,300 bytes and AAD up to 8,192 bytes must work. */
const MIN_PLAINTEXT_B64 = b64Len(4300);
const MIN_AAD_B64 = b64Len(8192);
/** The AAD length travels as a u16. */
const MAX_AAD_B64 = b64Len(65535);

/** The characters KMS allows in XksProxyUriPath. */
const PREFIX_CHARS_RE = /^[A-Za-z0-9/_-]*$/;
/** KMS's limit on XksProxyUriPath (`{prefix}/kms/xks/v1`). */
const MAX_URI_PATH = 128;
const KEY_ID_RE = /^[A-Za-z0-9._-]{1,128}$/;
const ACCESS_KEY_ID_RE = /^[A-Z2-7]{20,30}$/;
const SECRET_RE = /^[A-Za-z0-9/+=]{43,64}$/;
const B64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * Where settings.toml is: env XKS_PROXY_SETTINGS_TOML when set and non-empty, else the
 * XKS_PROXY_SETTINGS_TOML key of `configuration/bootstrap.toml` under cwd (as the Rust proxy).
 * Relative paths are resolved against cwd.
 */
export function resolveSettingsPath(env: NodeJS.ProcessEnv = process.env, cwd: string = process.cwd()): string {
  const fromEnv = env[XKS_PROXY_SETTINGS_TOML];
  if (fromEnv !== undefined && fromEnv !== '') return resolvePath(cwd, fromEnv);
  const bootstrap = resolvePath(cwd, DEFAULT_BOOTSTRAP_TOML);
  let text: string;
  try {
    text = readFileSync(bootstrap, 'utf8');
  } catch (e) {
    throw new ConfigError(
      bootstrap,
      undefined,
      `env ${XKS_PROXY_SETTINGS_TOML} is not set and this bootstrap file cannot be read (${errCode(e)})`,
    );
  }
  const doc = parseToml(text, bootstrap);
  const v = doc[XKS_PROXY_SETTINGS_TOML];
  if (v === undefined) throw new ConfigError(bootstrap, XKS_PROXY_SETTINGS_TOML, 'missing key (and env XKS_PROXY_SETTINGS_TOML is not set)');
  if (typeof v !== 'string' || v === '') throw new ConfigError(bootstrap, XKS_PROXY_SETTINGS_TOML, `expected a non-empty string, got ${describe(v)}`);
  return resolvePath(cwd, v);
}

/** Reads and validates a settings file. */
export function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env): LoadedConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(file, undefined, `cannot read the settings file (${errCode(e)})`);
  }
  return parseConfig(text, file, env);
}

/** Validates settings text; `file` is only used in messages. */
export function parseConfig(text: string, file: string, env: NodeJS.ProcessEnv = process.env): LoadedConfig {
  const doc = parseToml(text, file);
  const r = new Reader(file);
  const config = readConfig(r, doc, env);
  return { config, warnings: r.warnings, file };
}

/**
 * The PKCS11_LOGGER_* variables to put into the environment before the PKCS#11 module is loaded, as the
 * Rust proxy does when `[pkcs11_logger]` is present: an already-set (non-empty) environment variable wins
 * over the file's value. Empty object when the section is absent.
 */
export function pkcs11LoggerEnv(config: Config, env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const lg = config.pkcs11_logger;
  if (lg === undefined) return {};
  const out: Record<string, string> = {};
  for (const k of ['PKCS11_LOGGER_LIBRARY_PATH', 'PKCS11_LOGGER_LOG_FILE_PATH', 'PKCS11_LOGGER_FLAGS'] as const) {
    const e = env[k];
    out[k] = e !== undefined && e !== '' ? e : lg[k];
  }
  return out;
}

/** A printable summary of the settings: no secret, no PIN (only whether they are set). */
export function redactedSummary(config: Config): object {
  const s = config.server;
  return {
    server: {
      ip: s.ip,
      port: s.port,
      port_http_ping: s.port_http_ping,
      region: s.region,
      service: s.service,
      ciphertext_metadata_b64: s.ciphertext_metadata_b64,
      ciphertext_metadata_bytes: s.ciphertext_metadata?.length,
      tcp_keepalive: { ...s.tcp_keepalive },
      workers: s.workers,
    },
    tracing: { ...config.tracing, file_mode: `0${(config.tracing.file_mode ?? DEFAULT_LOG_FILE_MODE).toString(8)}` },
    security: { ...config.security, oso: config.security.oso ? { ...config.security.oso } : undefined },
    tls: config.tls ? { ...config.tls } : undefined,
    external_key_stores: config.external_key_stores.map((ks) => ({
      uri_path_prefix: ks.uri_path_prefix,
      sigv4_access_key_id: ks.sigv4_access_key_id,
      sigv4_secret_access_key: ks.sigv4_secret_access_key === '' ? '<empty>' : '<redacted>',
      sigv4_credentials: ks.sigv4_credentials.map((c) => ({ access_key_id: c.access_key_id, secret_access_key: '<redacted>' })),
      xks_key_id_set: [...ks.xks_key_id_set].sort(),
      requests_per_second: ks.requests_per_second,
      burst: ks.burst,
    })),
    pkcs11: {
      session_pool_max_size: config.pkcs11.session_pool_max_size,
      session_pool_timeout_milli: config.pkcs11.session_pool_timeout_milli,
      session_eager_close: config.pkcs11.session_eager_close,
      user_pin: config.pkcs11.user_pin === '' ? '<empty>' : '<redacted>',
      PKCS11_HSM_MODULE: config.pkcs11.PKCS11_HSM_MODULE,
      module_path: config.pkcs11.module_path,
      context_read_timeout_milli: config.pkcs11.context_read_timeout_milli,
      worker_threads: config.pkcs11.worker_threads,
      operation_timeout_milli: config.pkcs11.operation_timeout_milli,
      session_key_copies: config.pkcs11.session_key_copies,
      session_key_check_milli: config.pkcs11.session_key_check_milli,
    },
    pkcs11_logger: config.pkcs11_logger ? { ...config.pkcs11_logger } : undefined,
    limits: { ...config.limits },
    hsm_capabilities: { ...config.hsm_capabilities },
    health_check: config.health_check ? { ...config.health_check } : undefined,
    metrics: { ...config.metrics },
  };
}

// ---------------------------------------------------------------------------------------------------------

type Table = { [key: string]: unknown };

function isTable(v: unknown): v is Table {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const proto: unknown = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

function parseToml(text: string, file: string): Table {
  try {
    return parse(text, { unsafeKeyBehaviour: 'throw' }) as Table;
  } catch (e) {
    if (e instanceof TomlError) {
      // First line of the message only: the rest is a code excerpt that may contain a secret.
      const reason = (e.message.split('\n')[0] ?? 'syntax error').replace(/^Invalid TOML document:\s*/, '');
      throw new ConfigError(`${file}:${e.line}:${e.column}`, undefined, `TOML syntax error: ${reason}`);
    }
    throw new ConfigError(file, undefined, 'TOML syntax error');
  }
}

interface StrOpts {
  secret?: boolean;
  nonEmpty?: boolean;
}

interface IntOpts {
  min: number;
  max: number;
  what: string;
}

const U16 = 65535;
const U32 = 4294967295;
const SAFE = Number.MAX_SAFE_INTEGER;

/** Typed accessors that throw ConfigError naming the key and collect unknown-key warnings. */
class Reader {
  readonly warnings: string[] = [];
  constructor(readonly file: string) {}

  fail(key: string, problem: string): never {
    throw new ConfigError(this.file, key, problem);
  }

  warn(key: string, note: string): void {
    this.warnings.push(oneLine(`${this.file}: ${key}: ${note}`));
  }

  /** Warns about keys of `t` not in `known`. */
  unknown(t: Table, path: string, known: readonly string[]): void {
    for (const k of Object.keys(t)) if (!known.includes(k)) this.warn(join(path, k), 'unknown key (ignored)');
  }

  table(t: Table, path: string, key: string, required: true): Table;
  table(t: Table, path: string, key: string, required: false): Table | undefined;
  table(t: Table, path: string, key: string, required: boolean): Table | undefined;
  table(t: Table, path: string, key: string, required: boolean): Table | undefined {
    const v = t[key];
    const p = join(path, key);
    if (v === undefined) {
      if (required) this.fail(p, 'missing table');
      return undefined;
    }
    if (!isTable(v)) this.fail(p, `expected a table, got ${describe(v)}`);
    return v;
  }

  str(t: Table, path: string, key: string, required: true, o?: StrOpts): string;
  str(t: Table, path: string, key: string, required: false, o?: StrOpts): string | undefined;
  str(t: Table, path: string, key: string, required: boolean, o?: StrOpts): string | undefined;
  str(t: Table, path: string, key: string, required: boolean, o: StrOpts = {}): string | undefined {
    const v = t[key];
    const p = join(path, key);
    if (v === undefined) {
      if (required) this.fail(p, 'missing key');
      return undefined;
    }
    if (typeof v !== 'string') this.fail(p, `expected a string, got ${o.secret ? typeName(v) : describe(v)}`);
    if (o.nonEmpty && v === '') this.fail(p, 'must not be empty');
    return v;
  }

  bool(t: Table, path: string, key: string, required: true): boolean;
  bool(t: Table, path: string, key: string, required: false): boolean | undefined;
  bool(t: Table, path: string, key: string, required: boolean): boolean | undefined;
  bool(t: Table, path: string, key: string, required: boolean): boolean | undefined {
    const v = t[key];
    const p = join(path, key);
    if (v === undefined) {
      if (required) this.fail(p, 'missing key');
      return undefined;
    }
    if (typeof v !== 'boolean') this.fail(p, `expected a boolean (true or false), got ${describe(v)}`);
    return v;
  }

  int(t: Table, path: string, key: string, required: true, o: IntOpts): number;
  int(t: Table, path: string, key: string, required: false, o: IntOpts): number | undefined;
  int(t: Table, path: string, key: string, required: boolean, o: IntOpts): number | undefined {
    const v = t[key];
    const p = join(path, key);
    if (v === undefined) {
      if (required) this.fail(p, 'missing key');
      return undefined;
    }
    if (typeof v !== 'number' || !Number.isInteger(v) || v < o.min || v > o.max) this.fail(p, `expected ${o.what}, got ${describe(v)}`);
    return v;
  }
}

const POSITIVE: IntOpts = { min: 1, max: SAFE, what: 'a positive integer' };
const NON_NEGATIVE: IntOpts = { min: 0, max: SAFE, what: 'a non-negative integer' };
const PORT: IntOpts = { min: 0, max: U16, what: 'a port number (0..65535; 0 picks a free port)' };

function readConfig(r: Reader, doc: Table, env: NodeJS.ProcessEnv): Config {
  r.unknown(doc, '', ['server', 'tracing', 'security', 'tls', 'external_key_stores', 'pkcs11', 'pkcs11_logger', 'limits', 'hsm_capabilities', 'health_check', 'metrics']);
  const security = readSecurity(r, doc);
  const config: Config = {
    server: readServer(r, doc),
    tracing: readTracing(r, doc),
    security,
    tls: readTls(r, doc, security),
    external_key_stores: readKeyStores(r, doc, security),
    pkcs11: readPkcs11(r, doc, env),
    limits: readLimits(r, doc),
    hsm_capabilities: readHsmCapabilities(r, doc),
    metrics: METRICS_OFF,
  };
  const logger = readPkcs11Logger(r, doc);
  if (logger !== undefined) config.pkcs11_logger = logger;
  const health = readHealthCheck(r, doc, config.external_key_stores);
  if (health !== undefined) config.health_check = health;
  config.metrics = readMetrics(r, doc, config.server);
  return config;
}

function readServer(r: Reader, doc: Table): ServerSection {
  const P = 'server';
  const t = r.table(doc, '', P, true);
  r.unknown(t, P, ['ip', 'port', 'port_http_ping', 'region', 'service', 'ciphertext_metadata_b64', 'tcp_keepalive', 'workers']);
  const ip = r.str(t, P, 'ip', true);
  if (isIP(ip) === 0) r.fail(`${P}.ip`, `expected an IPv4 or IPv6 address, got ${describe(ip)}`);
  const port = r.int(t, P, 'port', true, PORT);
  const port_http_ping = r.int(t, P, 'port_http_ping', false, PORT) ?? DEFAULT_PORT_HTTP_PING;
  const region = r.str(t, P, 'region', true);
  if (region === '') r.warn(`${P}.region`, 'empty: no signed request can verify (KMS signs with its AWS region)');
  const service = r.str(t, P, 'service', true);
  if (service !== 'kms-xks-proxy') r.warn(`${P}.service`, `is ${describe(service)}; AWS KMS signs with service "kms-xks-proxy"`);
  const ciphertext_metadata_b64 = r.str(t, P, 'ciphertext_metadata_b64', false);
  let ciphertext_metadata: Buffer | undefined;
  if (ciphertext_metadata_b64 !== undefined) {
    const key = `${P}.ciphertext_metadata_b64`;
    if (!B64_RE.test(ciphertext_metadata_b64)) r.fail(key, 'expected canonical padded base64 (A-Z a-z 0-9 + / =)');
    ciphertext_metadata = Buffer.from(ciphertext_metadata_b64, 'base64');
    if (ciphertext_metadata.toString('base64') !== ciphertext_metadata_b64) r.fail(key, 'expected canonical padded base64 (non-zero trailing bits)');
    if (ciphertext_metadata.length > CIPHERTEXT_METADATA_MAX_BYTES) {
      r.fail(key, `decodes to ${ciphertext_metadata.length} bytes, at most ${CIPHERTEXT_METADATA_MAX_BYTES} allowed`);
    }
  }
  const tcp_keepalive: TcpKeepaliveSection = {};
  const ka = r.table(t, P, 'tcp_keepalive', false);
  if (ka !== undefined) {
    const KP = `${P}.tcp_keepalive`;
    r.unknown(ka, KP, ['tcp_keepalive_secs', 'tcp_keepalive_retries', 'tcp_keepalive_interval_secs']);
    const secs = r.int(ka, KP, 'tcp_keepalive_secs', false, NON_NEGATIVE);
    const retries = r.int(ka, KP, 'tcp_keepalive_retries', false, { min: 0, max: U32, what: 'a non-negative 32-bit integer' });
    const interval = r.int(ka, KP, 'tcp_keepalive_interval_secs', false, NON_NEGATIVE);
    if (secs !== undefined) tcp_keepalive.tcp_keepalive_secs = secs;
    if (retries !== undefined) tcp_keepalive.tcp_keepalive_retries = retries;
    if (interval !== undefined) tcp_keepalive.tcp_keepalive_interval_secs = interval;
  }
  const server: ServerSection = { ip, port, port_http_ping, region, service, ciphertext_metadata, tcp_keepalive };
  if (ciphertext_metadata_b64 !== undefined) server.ciphertext_metadata_b64 = ciphertext_metadata_b64;
  const workers = r.int(t, P, 'workers', false, { min: 1, max: 1024, what: 'an integer in 1..1024' });
  if (workers !== undefined) server.workers = workers;
  return server;
}

const LEVELS: readonly Level[] = ['TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR'];
/** Rust's tracing::Level::from_str also takes 1 (ERROR) .. 5 (TRACE). */
const LEVEL_BY_NUMBER: Record<string, Level> = { '1': 'ERROR', '2': 'WARN', '3': 'INFO', '4': 'DEBUG', '5': 'TRACE' };
const ROTATIONS: readonly RotationKind[] = ['MINUTELY', 'HOURLY', 'DAILY', 'NEVER'];

function readTracing(r: Reader, doc: Table): TracingSection {
  const P = 'tracing';
  const t = r.table(doc, '', P, true);
  r.unknown(t, P, ['is_stdout_writer_enabled', 'is_file_writer_enabled', 'level', 'directory', 'file_prefix', 'rotation_kind', 'file_mode']);
  const is_stdout_writer_enabled = r.bool(t, P, 'is_stdout_writer_enabled', true);
  const is_file_writer_enabled = r.bool(t, P, 'is_file_writer_enabled', true);
  const anyWriter = is_stdout_writer_enabled || is_file_writer_enabled;
  const levelRaw = r.str(t, P, 'level', false);
  let level: Level = 'INFO';
  if (levelRaw !== undefined) {
    const up = levelRaw.toUpperCase();
    const found = LEVEL_BY_NUMBER[levelRaw] ?? LEVELS.find((l) => l === up);
    const problem = `expected one of TRACE, DEBUG, INFO, WARN, ERROR, got ${describe(levelRaw)}`;
    // The Rust proxy reads the level only when a writer is enabled.
    if (found === undefined && anyWriter) r.fail(`${P}.level`, problem);
    if (found === undefined) r.warn(`${P}.level`, `${problem} (ignored: no writer is enabled)`);
    else level = found;
  }
  const directory = r.str(t, P, 'directory', is_file_writer_enabled);
  if (is_file_writer_enabled && directory === '') r.warn(`${P}.directory`, 'empty: log files are written to the working directory');
  const file_prefix = r.str(t, P, 'file_prefix', is_file_writer_enabled);
  if (is_file_writer_enabled && file_prefix === '') r.warn(`${P}.file_prefix`, 'empty: log file names are only the date (e.g. ".2026-01-31-23")');
  const file_mode = readFileMode(r, t, P);
  const rotRaw = r.str(t, P, 'rotation_kind', false);
  let rotation_kind: RotationKind = 'HOURLY';
  if (rotRaw !== undefined) {
    const up = rotRaw.toUpperCase();
    const found = ROTATIONS.find((k) => k === up);
    const problem = `expected one of MINUTELY, HOURLY, DAILY, NEVER, got ${describe(rotRaw)}`;
    // The Rust proxy parses it only when the file writer is enabled.
    if (found === undefined && is_file_writer_enabled) r.fail(`${P}.rotation_kind`, problem);
    if (found === undefined) r.warn(`${P}.rotation_kind`, `${problem} (ignored: the file writer is disabled)`);
    else rotation_kind = found;
  }
  if (!is_stdout_writer_enabled && !is_file_writer_enabled) r.warn(P, 'both the stdout and the file writer are disabled: nothing will be logged');
  const out: TracingSection = { is_stdout_writer_enabled, is_file_writer_enabled, level, rotation_kind, file_mode };
  if (directory !== undefined) out.directory = directory;
  if (file_prefix !== undefined) out.file_prefix = file_prefix;
  return out;
}

/**
 * `[tracing] file_mode` (our extension): permissions of the log files, an octal string such as
 * "0640" (the default) or "0644" (a log shipper running as another user, not in the group).
 * Applied to every file the logger opens, whatever the umask. Refused: bits beyond 0777, write
 * for group or others (anyone could forge lines), no read and write for the owner.
 */
function readFileMode(r: Reader, t: Table, P: string): number {
  const raw = r.str(t, P, 'file_mode', false);
  if (raw === undefined) return DEFAULT_LOG_FILE_MODE;
  const key = `${P}.file_mode`;
  if (!/^0?[0-7]{3}$/.test(raw)) r.fail(key, `expected an octal mode such as "0640" or "0644", got ${describe(raw)}`);
  const mode = parseInt(raw, 8);
  if ((mode & 0o022) !== 0) r.fail(key, `${describe(raw)} lets group or others write the log: anyone could forge lines (use "0640" or "0644")`);
  if ((mode & 0o600) !== 0o600) r.fail(key, `${describe(raw)}: the owner (the proxy) must be able to read and write its log files`);
  if ((mode & 0o111) !== 0) r.warn(key, `${describe(raw)} makes log files executable`);
  return mode;
}

function readSecurity(r: Reader, doc: Table): SecuritySection {
  const P = 'security';
  const t = r.table(doc, '', P, true);
  r.unknown(t, P, ['is_sigv4_auth_enabled', 'is_tls_enabled', 'is_mtls_enabled', 'secondary_auth', 'oso']);
  const out: SecuritySection = {
    is_sigv4_auth_enabled: r.bool(t, P, 'is_sigv4_auth_enabled', true),
    is_tls_enabled: r.bool(t, P, 'is_tls_enabled', true),
    is_mtls_enabled: r.bool(t, P, 'is_mtls_enabled', true),
  };
  const sa = r.str(t, P, 'secondary_auth', false);
  if (sa !== undefined) {
    if (sa !== 'Oso') r.fail(`${P}.secondary_auth`, `expected "Oso" (or no key), got ${describe(sa)}`);
    out.secondary_auth = 'Oso';
  }
  const oso = r.table(t, P, 'oso', out.secondary_auth === 'Oso');
  if (oso !== undefined) {
    const OP = `${P}.oso`;
    r.unknown(oso, OP, ['polar_file_path']);
    out.oso = { polar_file_path: r.str(oso, OP, 'polar_file_path', true, { nonEmpty: out.secondary_auth === 'Oso' }) };
  }
  if (!out.is_sigv4_auth_enabled) r.warn(`${P}.is_sigv4_auth_enabled`, 'false: requests are not authenticated (testing only)');
  if (out.is_mtls_enabled && !out.is_tls_enabled) r.warn(`${P}.is_mtls_enabled`, 'has no effect while is_tls_enabled = false');
  return out;
}

function readTls(r: Reader, doc: Table, sec: SecuritySection): TlsSection | undefined {
  const P = 'tls';
  const t = r.table(doc, '', P, sec.is_tls_enabled);
  if (t === undefined) return undefined;
  r.unknown(t, P, ['tls_cert_pem', 'tls_key_pem', 'mtls_client_ca_pem', 'mtls_client_dns_name']);
  const tls = sec.is_tls_enabled;
  const mtls = tls && sec.is_mtls_enabled;
  const out: TlsSection = {
    tls_cert_pem: r.str(t, P, 'tls_cert_pem', true, { nonEmpty: tls }),
    tls_key_pem: r.str(t, P, 'tls_key_pem', true, { nonEmpty: tls }),
  };
  const ca = r.str(t, P, 'mtls_client_ca_pem', mtls, { nonEmpty: mtls });
  const dns = r.str(t, P, 'mtls_client_dns_name', mtls, { nonEmpty: mtls });
  if (ca !== undefined) out.mtls_client_ca_pem = ca;
  if (dns !== undefined) out.mtls_client_dns_name = dns;
  return out;
}

function readKeyStores(r: Reader, doc: Table, sec: SecuritySection): KeyStore[] {
  const P = 'external_key_stores';
  const arr = doc[P];
  if (arr === undefined) r.fail(P, 'missing: at least one [[external_key_stores]] table is required');
  if (!Array.isArray(arr)) r.fail(P, `expected an array of tables ([[external_key_stores]]), got ${describe(arr)}`);
  if (arr.length === 0) r.warn(P, 'empty: no key store, every XKS request is answered 404 (the Rust proxy starts with it too)');
  const seen = new Map<string, number>();
  /** access key id -> index of the keystore that owns it */
  const akidOwner = new Map<string, number>();
  const out: KeyStore[] = [];
  arr.forEach((item: unknown, i: number) => {
    const IP = `${P}[${i}]`;
    if (!isTable(item)) r.fail(IP, `expected a table, got ${describe(item)}`);
    r.unknown(item, IP, ['uri_path_prefix', 'sigv4_access_key_id', 'sigv4_secret_access_key', 'xks_key_id_set', 'sigv4_credentials', 'requests_per_second', 'burst']);

    const prefix = r.str(item, IP, 'uri_path_prefix', true);
    checkPrefix(r, `${IP}.uri_path_prefix`, prefix);
    const pk = `${IP}.uri_path_prefix`;
    const prev = seen.get(prefix);
    if (prev !== undefined) r.fail(pk, `duplicate prefix ${describe(prefix)} (also external_key_stores[${prev}])`);
    seen.set(prefix, i);

    const listed = readCredentialList(r, item, IP, sec);
    const legacyRequired = listed.length === 0;
    const legacyId = r.str(item, IP, 'sigv4_access_key_id', legacyRequired);
    const legacySecret = r.str(item, IP, 'sigv4_secret_access_key', legacyRequired || legacyId !== undefined, { secret: true });
    if (legacyId === undefined && legacySecret !== undefined) r.fail(`${IP}.sigv4_access_key_id`, 'missing key (sigv4_secret_access_key is set)');
    const creds: Sigv4Credential[] = [];
    if (legacyId !== undefined && legacySecret !== undefined) {
      if (sec.is_sigv4_auth_enabled) {
        if (!ACCESS_KEY_ID_RE.test(legacyId)) r.warn(`${IP}.sigv4_access_key_id`, 'KMS requires 20..30 characters of A-Z and 2-7');
        if (!SECRET_RE.test(legacySecret)) r.warn(`${IP}.sigv4_secret_access_key`, 'KMS requires 43..64 characters of a-z A-Z 0-9 / + =');
      }
      creds.push(withHidden({ access_key_id: legacyId }, 'secret_access_key', legacySecret));
    }
    listed.forEach((c, j) => {
      const same = creds.find((o) => o.access_key_id === c.access_key_id);
      if (same === undefined) creds.push(c);
      else if (same.secret_access_key !== c.secret_access_key) {
        r.fail(`${IP}.sigv4_credentials[${j}].access_key_id`, `access key id ${describe(c.access_key_id)} is listed twice with different secrets`);
      }
    });
    for (const c of creds) {
      if (c.access_key_id === '') continue; // the Rust samples' placeholders; such a credential never verifies
      const owner = akidOwner.get(c.access_key_id);
      if (owner !== undefined && owner !== i) {
        r.fail(`${IP}.sigv4_credentials`, `access key id ${describe(c.access_key_id)} is also used by external_key_stores[${owner}]`);
      }
      akidOwner.set(c.access_key_id, i);
    }
    const first = creds[0]!;
    const akid = first.access_key_id;
    const secret = first.secret_access_key;
    const rps = r.int(item, IP, 'requests_per_second', false, { min: 1, max: 1_000_000_000, what: 'a positive integer' });
    const burst = r.int(item, IP, 'burst', false, { min: 1, max: 1_000_000_000, what: 'a positive integer' });
    if (burst !== undefined && rps === undefined) r.warn(`${IP}.burst`, 'has no effect without requests_per_second');

    const ids = item['xks_key_id_set'];
    const ik = `${IP}.xks_key_id_set`;
    if (ids === undefined) r.fail(ik, 'missing key');
    if (!Array.isArray(ids)) r.fail(ik, `expected an array of key id strings, got ${describe(ids)}`);
    const set = new Set<string>();
    ids.forEach((id: unknown, j: number) => {
      if (typeof id !== 'string') r.fail(`${ik}[${j}]`, `expected a string, got ${describe(id)}`);
      if (!KEY_ID_RE.test(id)) r.warn(`${ik}[${j}]`, `key id ${describe(id)} can never be used: KMS key ids are 1..128 characters of A-Z a-z 0-9 - . _`);
      if (set.has(id)) r.warn(`${ik}[${j}]`, `duplicate key id ${describe(id)}`);
      set.add(id);
    });
    if (set.size === 0) r.warn(ik, 'empty: every key operation on this keystore will fail with KeyNotFoundException');

    const ks = withHidden(
      { uri_path_prefix: prefix, sigv4_access_key_id: akid, sigv4_credentials: creds, xks_key_id_set: set } as Omit<KeyStore, 'sigv4_secret_access_key'>,
      'sigv4_secret_access_key',
      secret,
    );
    if (rps !== undefined) {
      ks.requests_per_second = rps;
      ks.burst = burst ?? rps;
    }
    out.push(ks);
  });
  return out;
}

/**
 * `uri_path_prefix`: the Rust proxy only requires prefixes to be unique, so only what cannot be
 * routed is refused: a non-empty prefix not starting with "/" (the Rust router panics on it), a
 * segment starting with ":" or "*" (uWebSockets.js reads it as a parameter or a wildcard: "/:t"
 * would take every one-segment prefix and hand that segment over as the key id), "?" (the
 * query starts there) and white space or control characters (no request line carries them).
 * What KMS cannot send is only a warning.
 */
function checkPrefix(r: Reader, key: string, prefix: string): void {
  if (prefix === '') return;
  if (!prefix.startsWith('/')) r.fail(key, `must be empty or start with "/", got ${describe(prefix)}`);
  if (prefix.includes('?')) r.fail(key, `cannot be routed: "?" starts the query string, got ${describe(prefix)}`);
  if (/[\s\x00-\x1f\x7f]/.test(prefix)) r.fail(key, `cannot be routed: no request path contains white space or control characters, got ${describe(prefix)}`);
  if (prefix.split('/').some((seg) => seg.startsWith(':') || seg.startsWith('*'))) {
    r.fail(key, `cannot be routed: a path segment starting with ":" or "*" is a route pattern, got ${describe(prefix)}`);
  }
  if (!PREFIX_CHARS_RE.test(prefix)) r.warn(key, `${describe(prefix)} has characters KMS does not allow in a URI path (only a-z A-Z 0-9 / - _)`);
  const uriPath = `${prefix}/kms/xks/v1`;
  if (uriPath.length > MAX_URI_PATH) {
    r.warn(key, `KMS allows at most ${MAX_URI_PATH} characters in the URI path ${describe(uriPath)}, this one has ${uriPath.length}`);
  }
  if (prefix.endsWith('/') || prefix.includes('//')) r.warn(key, `${describe(prefix)} makes URIs with "//"`);
}

/** `sigv4_credentials = [{ access_key_id = "...", secret_access_key = "..." }, ...]` (our extension; optional). */
function readCredentialList(r: Reader, item: Table, IP: string, sec: SecuritySection): Sigv4Credential[] {
  const CK = `${IP}.sigv4_credentials`;
  const list = item['sigv4_credentials'];
  if (list === undefined) return [];
  if (!Array.isArray(list)) r.fail(CK, `expected an array of { access_key_id, secret_access_key } tables, got ${typeName(list)}`);
  return list.map((c: unknown, j: number) => {
    const EP = `${CK}[${j}]`;
    if (!isTable(c)) r.fail(EP, `expected a table { access_key_id = "...", secret_access_key = "..." }, got ${typeName(c)}`);
    r.unknown(c, EP, ['access_key_id', 'secret_access_key']);
    const id = r.str(c, EP, 'access_key_id', true, { nonEmpty: true });
    const secret = r.str(c, EP, 'secret_access_key', true, { secret: true, nonEmpty: true });
    if (sec.is_sigv4_auth_enabled) {
      if (!ACCESS_KEY_ID_RE.test(id)) r.warn(`${EP}.access_key_id`, 'KMS requires 20..30 characters of A-Z and 2-7');
      if (!SECRET_RE.test(secret)) r.warn(`${EP}.secret_access_key`, 'KMS requires 43..64 characters of a-z A-Z 0-9 / + =');
    }
    return withHidden({ access_key_id: id }, 'secret_access_key', secret);
  });
}

function readPkcs11(r: Reader, doc: Table, env: NodeJS.ProcessEnv): Pkcs11Section {
  const P = 'pkcs11';
  const t = r.table(doc, '', P, true);
  r.unknown(t, P, [
    'session_pool_max_size', 'session_pool_timeout_milli', 'session_eager_close', 'user_pin',
    PKCS11_HSM_MODULE, 'context_read_timeout_milli', 'worker_threads', 'operation_timeout_milli',
    'session_key_copies', 'session_key_check_milli',
  ]);
  // The Rust proxy takes any usize / u64 here; the engine holds at most MAX_SESSION_POOL sessions
  // and waits at most MAX_POOL_TIMEOUT_MILLI: larger values are used as those, with a warning.
  const session_pool_max_size = atMost(r, `${P}.session_pool_max_size`, r.int(t, P, 'session_pool_max_size', true, POSITIVE), MAX_SESSION_POOL);
  const session_pool_timeout_milli = atMost(
    r,
    `${P}.session_pool_timeout_milli`,
    r.int(t, P, 'session_pool_timeout_milli', true, NON_NEGATIVE),
    MAX_POOL_TIMEOUT_MILLI,
  );
  const session_eager_close = r.bool(t, P, 'session_eager_close', true);
  const user_pin = r.str(t, P, 'user_pin', true, { secret: true });
  const hsmModule = r.str(t, P, PKCS11_HSM_MODULE, true);
  const context_read_timeout_milli = r.int(t, P, 'context_read_timeout_milli', true, NON_NEGATIVE);
  const worker_threads =
    r.int(t, P, 'worker_threads', false, { min: 1, max: MAX_WORKER_THREADS, what: `an integer in 1..${MAX_WORKER_THREADS}` }) ??
    Math.min(session_pool_max_size, MAX_DEFAULT_WORKER_THREADS);
  const operation_timeout_milli =
    r.int(t, P, 'operation_timeout_milli', false, { min: 0, max: 60000, what: 'an integer in 0..60000 (0 = no deadline)' }) ??
    DEFAULT_OPERATION_TIMEOUT_MILLI;
  if (operation_timeout_milli >= 250) {
    r.warn(`${P}.operation_timeout_milli`, `${operation_timeout_milli} ms: KMS gives up after 250 ms, so a stuck HSM call is reported late`);
  }
  if (operation_timeout_milli === 0) r.warn(`${P}.operation_timeout_milli`, '0: HSM calls have no deadline; a stuck HSM hangs requests');
  const session_key_copies = r.bool(t, P, 'session_key_copies', false) ?? true;
  const session_key_check_milli =
    r.int(t, P, 'session_key_check_milli', false, { min: 1, max: 3600000, what: 'an integer in 1..3600000' }) ??
    DEFAULT_SESSION_KEY_CHECK_MILLI;
  const fromEnv = env[PKCS11_HSM_MODULE];
  const module_path = fromEnv !== undefined && fromEnv !== '' ? fromEnv : hsmModule;
  if (module_path === '') r.fail(`${P}.${PKCS11_HSM_MODULE}`, 'empty, and env PKCS11_HSM_MODULE is not set');
  const out = {
    session_pool_max_size,
    session_pool_timeout_milli,
    session_eager_close,
    PKCS11_HSM_MODULE: hsmModule,
    context_read_timeout_milli,
    worker_threads,
    operation_timeout_milli,
    session_key_copies,
    session_key_check_milli,
    module_path,
  };
  return withHidden(out, 'user_pin', user_pin);
}

/** `value`, or `max` with a warning when it is above. */
function atMost(r: Reader, key: string, value: number, max: number): number {
  if (value <= max) return value;
  r.warn(key, `${value} is above ${max}, the most this proxy supports: ${max} is used`);
  return max;
}

function readPkcs11Logger(r: Reader, doc: Table): Pkcs11LoggerSection | undefined {
  const P = 'pkcs11_logger';
  const t = r.table(doc, '', P, false);
  if (t === undefined) return undefined;
  r.unknown(t, P, ['PKCS11_LOGGER_LIBRARY_PATH', 'PKCS11_LOGGER_LOG_FILE_PATH', 'PKCS11_LOGGER_FLAGS']);
  return {
    PKCS11_LOGGER_LIBRARY_PATH: r.str(t, P, 'PKCS11_LOGGER_LIBRARY_PATH', true),
    PKCS11_LOGGER_LOG_FILE_PATH: r.str(t, P, 'PKCS11_LOGGER_LOG_FILE_PATH', true),
    PKCS11_LOGGER_FLAGS: r.str(t, P, 'PKCS11_LOGGER_FLAGS', true),
  };
}

function readLimits(r: Reader, doc: Table): LimitsSection {
  const P = 'limits';
  const t = r.table(doc, '', P, true);
  r.unknown(t, P, ['max_plaintext_in_base64', 'max_aad_in_base64']);
  const max_plaintext_in_base64 = r.int(t, P, 'max_plaintext_in_base64', true, NON_NEGATIVE);
  const max_aad_in_base64 = r.int(t, P, 'max_aad_in_base64', true, NON_NEGATIVE);
  if (max_plaintext_in_base64 < MIN_PLAINTEXT_B64) {
    r.warn(`${P}.max_plaintext_in_base64`, `${max_plaintext_in_base64} is below ${MIN_PLAINTEXT_B64} (4,300 bytes of plaintext, which KMS may send)`);
  }
  if (max_aad_in_base64 < MIN_AAD_B64) {
    r.warn(`${P}.max_aad_in_base64`, `${max_aad_in_base64} is below ${MIN_AAD_B64} (8,192 bytes of AAD, which KMS may send)`);
  }
  if (max_aad_in_base64 > MAX_AAD_B64) {
    r.warn(`${P}.max_aad_in_base64`, `${max_aad_in_base64} is above ${MAX_AAD_B64}: AAD beyond 65,535 bytes cannot be encoded`);
  }
  return { max_plaintext_in_base64, max_aad_in_base64 };
}

function readHealthCheck(r: Reader, doc: Table, stores: readonly KeyStore[]): HealthCheckSection | undefined {
  const P = 'health_check';
  const t = r.table(doc, '', P, false);
  if (t === undefined) return undefined;
  r.unknown(t, P, ['key_id', 'interval_secs', 'degraded_latency_milli']);
  const key_id = r.str(t, P, 'key_id', true);
  if (!KEY_ID_RE.test(key_id)) r.fail(`${P}.key_id`, `key ids are 1..128 characters of A-Z a-z 0-9 - . _, got ${describe(key_id)}`);
  const interval_secs =
    r.int(t, P, 'interval_secs', false, { min: 1, max: 60, what: 'an integer in 1..60 (the spec caches health for at most 60 s)' }) ??
    DEFAULT_HEALTH_CHECK_INTERVAL_SECS;
  const degraded_latency_milli =
    r.int(t, P, 'degraded_latency_milli', false, { min: 1, max: 60000, what: 'an integer in 1..60000' }) ?? DEFAULT_HEALTH_CHECK_DEGRADED_MILLI;
  const users = stores.filter((s) => s.xks_key_id_set.has(key_id)).map((s) => describe(s.uri_path_prefix));
  if (users.length > 0) {
    r.warn(`${P}.key_id`, `${describe(key_id)} is also in the xks_key_id_set of ${users.join(', ')}: use a key reserved for health checks`);
  }
  return { key_id, interval_secs, degraded_latency_milli };
}

function readHsmCapabilities(r: Reader, doc: Table): HsmCapabilities {
  const P = 'hsm_capabilities';
  const t = r.table(doc, '', P, true);
  r.unknown(t, P, ['can_generate_iv', 'is_zero_iv_required']);
  const out = {
    can_generate_iv: r.bool(t, P, 'can_generate_iv', true),
    is_zero_iv_required: r.bool(t, P, 'is_zero_iv_required', true),
  };
  if (out.is_zero_iv_required && !out.can_generate_iv) r.warn(`${P}.is_zero_iv_required`, 'has no effect while can_generate_iv = false');
  return out;
}

// [metrics] (ours, optional) ------------------------------------------------------------------------------

/** Our extension (optional table): Prometheus /metrics on its own listener, off unless enabled. */
export interface MetricsSection {
  /** Serve GET /metrics (default false: the Rust proxy has no such endpoint). */
  enabled: boolean;
  /** Address of the metrics listener (default 127.0.0.1: only this host can scrape). */
  ip: string;
  /** Port of the metrics listener (default 9464; 0 picks a free port). */
  port: number;
}

export const DEFAULT_METRICS_IP = '127.0.0.1';
export const DEFAULT_METRICS_PORT = 9464;
const METRICS_OFF: Readonly<MetricsSection> = Object.freeze({ enabled: false, ip: DEFAULT_METRICS_IP, port: DEFAULT_METRICS_PORT });

/** True when two listen addresses can collide (equal, or either one a wildcard address). */
function addressesOverlap(a: string, b: string): boolean {
  const wildcard = (ip: string): boolean => ip === '0.0.0.0' || ip === '::';
  return a === b || wildcard(a) || wildcard(b);
}

function readMetrics(r: Reader, doc: Table, server: ServerSection): MetricsSection {
  const P = 'metrics';
  const t = r.table(doc, '', P, false);
  if (t === undefined) return { ...METRICS_OFF };
  r.unknown(t, P, ['enabled', 'ip', 'port']);
  const enabled = r.bool(t, P, 'enabled', false) ?? false;
  const ip = r.str(t, P, 'ip', false) ?? DEFAULT_METRICS_IP;
  if (isIP(ip) === 0) r.fail(`${P}.ip`, `expected an IPv4 or IPv6 address, got ${describe(ip)}`);
  const port = r.int(t, P, 'port', false, PORT) ?? DEFAULT_METRICS_PORT;
  if (!enabled) {
    if (t.ip !== undefined || t.port !== undefined) r.warn(`${P}.enabled`, 'is not true: /metrics is not served (ip and port are ignored)');
    return { enabled, ip, port };
  }
  if (port !== 0 && addressesOverlap(ip, server.ip) && (port === server.port || port === server.port_http_ping)) {
    r.fail(`${P}.port`, `${port} is also ${port === server.port ? 'server.port' : 'server.port_http_ping'}: /metrics needs its own port`);
  }
  if (!isLoopback(ip)) {
    r.warn(`${P}.ip`, `${describe(ip)} is not a loopback address: anyone who reaches it reads every key store prefix and its traffic (no authentication)`);
  }
  return { enabled, ip, port };
}

function isLoopback(ip: string): boolean {
  return ip === '::1' || ip.startsWith('127.');
}

// ---------------------------------------------------------------------------------------------------------

/** Adds a read-only, non-enumerable property: kept out of JSON.stringify, util.inspect and spreads. */
function withHidden<T extends object, K extends string>(obj: T, key: K, value: string): T & Record<K, string> {
  Object.defineProperty(obj, key, { value, enumerable: false, writable: false });
  return obj as T & Record<K, string>;
}

function join(path: string, key: string): string {
  return path === '' ? key : `${path}.${key}`;
}

function b64Len(bytes: number): number {
  return Math.ceil(bytes / 3) * 4;
}

function typeName(v: unknown): string {
  if (Array.isArray(v)) return 'an array';
  if (v instanceof Date) return 'a date';
  if (isTable(v)) return 'a table';
  if (typeof v === 'number') return Number.isInteger(v) ? 'an integer' : 'a float';
  if (typeof v === 'string') return 'a string';
  if (typeof v === 'boolean') return 'a boolean';
  return 'a TOML date';
}

/** A short, printable rendering of a (non-secret) value for messages. */
function describe(v: unknown): string {
  if (typeof v === 'string') {
    const s = JSON.stringify(v.length > 60 ? `${v.slice(0, 60)}...` : v);
    return s.replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  }
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  return typeName(v);
}

function oneLine(s: string): string {
  return s.replace(/[\x00-\x1f\x7f\u2028\u2029]/g, ' ');
}

function errCode(e: unknown): string {
  if (typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'string') return e.code;
  return 'error';
}
