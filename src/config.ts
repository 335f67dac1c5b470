/**
 * settings.toml: reading, validation and a typed mirror of the file.
 *
 * The file format is the Rust xks-proxy's (aws-samples/aws-kms-xks-proxy, xks-axum/configuration/*.toml);
 * every file that works there loads here unchanged. Field names stay exactly as written in the TOML
 * (snake_case, and `PKCS11_HSM_MODULE` upper case), so `config.pkcs11.session_pool_max_size` is the
 * `[pkcs11] session_pool_max_size` key. A few derived values are added next to the keys they come from
 * (`server.ciphertext_metadata`, `pkcs11.module_path`, `pkcs11.worker_threads`'s default).
 *
 * Each section has one table (below the interfaces) that lists its keys with type, range, default,
 * secret-ness, required-ness and checks; reading, unknown-key warnings and the redacted summary all
 * come from it (machinery: src/config-table.ts). [pkcs11]'s bounds are the engine's (native/limits.h,
 * read from the addon), so a file check-config accepts never fails at engine construction.
 *
 * Every problem is a ConfigError with a one-line message `<file>: <dotted.key>: <problem>`; secret values
 * (sigv4_secret_access_key, user_pin) never appear in a message, a warning or the redacted summary.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { resolve as resolvePath } from 'node:path';
import { parse, TomlError } from 'smol-toml';
import { base64Refusal, decodeBase64Strict } from './codec.js';
import { loadAddon } from './hsm/addon.js';
import {
  ConfigError,
  describe,
  isTable,
  NON_NEGATIVE,
  PORT,
  POSITIVE,
  Reader,
  readField,
  readFields,
  summarize,
  typeName,
  U32,
  withHidden,
  type AnyField,
  type At,
  type Fields,
  type IntOpts,
  type Seen,
  type Table,
} from './config-table.js';

export { ConfigError };

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
  /** Event loops (threads) serving the port; absent = os.availableParallelism() (docs/operating.md, "All cores"). */
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
  /**
   * Our extension (optional key): threads running PKCS#11 calls. Set: exactly that many. Absent:
   * at most min(session_pool_max_size, 32), of which the engine lets serve as many as the calls'
   * cost asks for (about one per CPU while they are CPU-bound, more while they block in the HSM).
   */
  worker_threads: number;
  /** Not a key: true when worker_threads was absent (the engine adapts the count below it). */
  worker_threads_adaptive: boolean;
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

/** Our extension (optional table): the deep health check (docs/hsm-failures.md). */
export interface HealthCheckSection {
  /** Label of the AES key the background encrypt + decrypt uses. */
  key_id: string;
  /** Seconds between checks (1..60; default 10); GetHealthStatus answers from the last one. */
  interval_secs: number;
  /** A check slower than this (ms) reports DEGRADED (default 100). */
  degraded_latency_milli: number;
}

/** Our extension (optional table): the tamper-evident audit trail (docs/audit.md); absent = no trail. */
export interface AuditSection {
  /** Where the trail's files go (created 0750 when missing). */
  directory: string;
  /** File names `<file_prefix>.<period>.<n>.jsonl` (default "xks-audit"). */
  file_prefix: string;
  /** As [tracing]'s (default HOURLY). */
  rotation_kind: RotationKind;
  /** Label of the HSM's CKK_GENERIC_SECRET key the checkpoints' HMAC-SHA256 uses. */
  hmac_key_id: string;
  /** A checkpoint after this many records (default 1000). */
  checkpoint_every: number;
  /** ... or this many seconds after the first record since the last one (default 60). */
  checkpoint_secs: number;
  /** before-response: a 200 waits until its record is on disk; batched: synced at most every 100 ms. */
  durability: AuditDurability;
  /** fail-closed: key use answers 500 while the trail cannot be written; fail-open: served, logged. */
  on_failure: AuditOnFailure;
  /** Also every record to stdout, one JSON line (journald, log shippers). Default false. */
  stdout: boolean;
}

export type AuditDurability = 'before-response' | 'batched';
export type AuditOnFailure = 'fail-closed' | 'fail-open';

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
  audit?: AuditSection;
}

export interface LoadedConfig {
  config: Config;
  /** One line each, `<file>: <dotted.key>: <note>`: unknown keys and suspicious values. */
  warnings: string[];
  file: string;
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
/** Longest [pkcs11] operation_timeout_milli (the engine would take up to an hour; KMS waits 250 ms). */
export const MAX_OPERATION_TIMEOUT_MILLI = 60000;
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
export const MAX_URI_PATH = 128;
const KEY_ID_RE = /^[A-Za-z0-9._-]{1,128}$/;
export const ACCESS_KEY_ID_RE = /^[A-Z2-7]{20,30}$/;
export const SECRET_RE = /^[A-Za-z0-9/+=]{43,64}$/;

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
  if (v === undefined)
    throw new ConfigError(bootstrap, XKS_PROXY_SETTINGS_TOML, 'missing key (and env XKS_PROXY_SETTINGS_TOML is not set)');
  if (typeof v !== 'string' || v === '')
    throw new ConfigError(bootstrap, XKS_PROXY_SETTINGS_TOML, `expected a non-empty string, got ${describe(v)}`);
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

/** A printable summary of the settings: no secret, no PIN (only whether they are set). Shaped by the tables below. */
export function redactedSummary(config: Config): object {
  return summarize(config, configFields());
}

// ---------------------------------------------------------------------------------------------------------

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

// The tables: one per section, each key written once (its interface above is checked against it) ------------

const IP_ADDRESS = (ip: string, at: At): void => {
  if (isIP(ip) === 0) at.fail(`expected an IPv4 or IPv6 address, got ${describe(ip)}`);
};

// [server] --------------------------------------------------------------------------------------------------

const TCP_KEEPALIVE: Fields<TcpKeepaliveSection> = {
  tcp_keepalive_secs: { kind: 'int', range: NON_NEGATIVE },
  tcp_keepalive_retries: { kind: 'int', range: { min: 0, max: U32, what: 'a non-negative 32-bit integer' } },
  tcp_keepalive_interval_secs: { kind: 'int', range: NON_NEGATIVE },
};

const SERVER: Fields<Omit<ServerSection, 'ciphertext_metadata'>> = {
  ip: { kind: 'str', required: true, check: IP_ADDRESS },
  port: { kind: 'int', required: true, range: PORT },
  port_http_ping: { kind: 'int', range: PORT, default: DEFAULT_PORT_HTTP_PING },
  region: {
    kind: 'str',
    required: true,
    check: (v, at) => {
      if (v === '') at.warn('empty: no signed request can verify (KMS signs with its AWS region)');
    },
  },
  service: {
    kind: 'str',
    required: true,
    check: (v, at) => {
      if (v !== 'kms-xks-proxy') at.warn(`is ${describe(v)}; AWS KMS signs with service "kms-xks-proxy"`);
    },
  },
  ciphertext_metadata_b64: {
    kind: 'str',
    check: (v, at) => {
      const md = decodeBase64Strict(v);
      if (md === undefined)
        return at.fail(
          `expected canonical padded base64 (${base64Refusal(v) === 'alphabet' ? 'A-Z a-z 0-9 + / =' : 'non-zero trailing bits'})`,
        );
      if (md.length > CIPHERTEXT_METADATA_MAX_BYTES)
        at.fail(`decodes to ${md.length} bytes, at most ${CIPHERTEXT_METADATA_MAX_BYTES} allowed`);
    },
    summary: (v, s) => ({ ciphertext_metadata_b64: v, ciphertext_metadata_bytes: (s.ciphertext_metadata as Buffer | undefined)?.length }),
  },
  tcp_keepalive: { kind: 'table', fields: TCP_KEEPALIVE, default: () => ({}) },
  workers: { kind: 'int', range: { min: 1, max: 1024, what: 'an integer in 1..1024' } },
};

function readServer(r: Reader, doc: Table): ServerSection {
  const s = readFields(r, r.table(doc, '', 'server', true), 'server', SERVER) as ServerSection;
  // Checked above: canonical, at most CIPHERTEXT_METADATA_MAX_BYTES.
  s.ciphertext_metadata = s.ciphertext_metadata_b64 === undefined ? undefined : decodeBase64Strict(s.ciphertext_metadata_b64);
  return s;
}

// [tracing] -------------------------------------------------------------------------------------------------

const LEVELS: readonly Level[] = ['TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR'];
/** Rust's tracing::Level::from_str also takes 1 (ERROR) .. 5 (TRACE). */
const LEVEL_BY_NUMBER: Record<string, Level> = { '1': 'ERROR', '2': 'WARN', '3': 'INFO', '4': 'DEBUG', '5': 'TRACE' };
const ROTATIONS: readonly RotationKind[] = ['MINUTELY', 'HOURLY', 'DAILY', 'NEVER'];
const fileWriter = (seen: Seen): boolean => seen.is_file_writer_enabled === true;

const TRACING: Fields<TracingSection> = {
  is_stdout_writer_enabled: { kind: 'bool', required: true },
  is_file_writer_enabled: { kind: 'bool', required: true },
  level: {
    kind: 'str',
    default: 'INFO',
    parse: (raw, at, seen) => {
      const up = raw.toUpperCase();
      const found = LEVEL_BY_NUMBER[raw] ?? LEVELS.find((l) => l === up);
      if (found !== undefined) return found;
      const problem = `expected one of TRACE, DEBUG, INFO, WARN, ERROR, got ${describe(raw)}`;
      // The Rust proxy reads the level only when a writer is enabled.
      if (seen.is_stdout_writer_enabled === true || fileWriter(seen)) at.fail(problem);
      at.warn(`${problem} (ignored: no writer is enabled)`);
      return undefined;
    },
  },
  rotation_kind: {
    kind: 'str',
    default: 'HOURLY',
    parse: (raw, at, seen) => {
      const up = raw.toUpperCase();
      const found = ROTATIONS.find((k) => k === up);
      if (found !== undefined) return found;
      const problem = `expected one of MINUTELY, HOURLY, DAILY, NEVER, got ${describe(raw)}`;
      // The Rust proxy parses it only when the file writer is enabled.
      if (fileWriter(seen)) at.fail(problem);
      at.warn(`${problem} (ignored: the file writer is disabled)`);
      return undefined;
    },
  },
  file_mode: {
    kind: 'str',
    default: DEFAULT_LOG_FILE_MODE,
    parse: fileMode,
    summary: (v) => ({ file_mode: `0${(v ?? DEFAULT_LOG_FILE_MODE).toString(8)}` }),
  },
  directory: {
    kind: 'str',
    required: fileWriter,
    check: (v, at, seen) => {
      if (fileWriter(seen) && v === '') at.warn('empty: log files are written to the working directory');
    },
  },
  file_prefix: {
    kind: 'str',
    required: fileWriter,
    check: (v, at, seen) => {
      if (fileWriter(seen) && v === '') at.warn('empty: log file names are only the date (e.g. ".2026-01-31-23")');
    },
  },
};

function readTracing(r: Reader, doc: Table): TracingSection {
  const out = readFields(r, r.table(doc, '', 'tracing', true), 'tracing', TRACING);
  if (!out.is_stdout_writer_enabled && !out.is_file_writer_enabled)
    r.warn('tracing', 'both the stdout and the file writer are disabled: nothing will be logged');
  return out;
}

/**
 * `[tracing] file_mode` (our extension): permissions of the log files, an octal string such as
 * "0640" (the default) or "0644" (a log shipper running as another user, not in the group).
 * Applied to every file the logger opens, whatever the umask. Refused: bits beyond 0777, write
 * for group or others (anyone could forge lines), no read and write for the owner.
 */
function fileMode(raw: string, at: At): number {
  if (!/^0?[0-7]{3}$/.test(raw)) at.fail(`expected an octal mode such as "0640" or "0644", got ${describe(raw)}`);
  const mode = parseInt(raw, 8);
  if ((mode & 0o022) !== 0) at.fail(`${describe(raw)} lets group or others write the log: anyone could forge lines (use "0640" or "0644")`);
  if ((mode & 0o600) !== 0o600) at.fail(`${describe(raw)}: the owner (the proxy) must be able to read and write its log files`);
  if ((mode & 0o111) !== 0) at.warn(`${describe(raw)} makes log files executable`);
  return mode;
}

// [security], [tls] -----------------------------------------------------------------------------------------

const osoChosen = (seen: Seen): boolean => seen.secondary_auth === 'Oso';

const SECURITY: Fields<SecuritySection> = {
  is_sigv4_auth_enabled: { kind: 'bool', required: true },
  is_tls_enabled: { kind: 'bool', required: true },
  is_mtls_enabled: { kind: 'bool', required: true },
  secondary_auth: {
    kind: 'str',
    parse: (raw, at) => {
      if (raw !== 'Oso') at.fail(`expected "Oso" (or no key), got ${describe(raw)}`);
      return 'Oso';
    },
  },
  oso: {
    kind: 'table',
    required: osoChosen,
    fields: { polar_file_path: { kind: 'str', required: true, nonEmpty: (_seen, security) => osoChosen(security) } },
  },
};

function readSecurity(r: Reader, doc: Table): SecuritySection {
  const P = 'security';
  const out = readFields(r, r.table(doc, '', P, true), P, SECURITY);
  if (!out.is_sigv4_auth_enabled) r.warn(`${P}.is_sigv4_auth_enabled`, 'false: requests are not authenticated (testing only)');
  if (out.is_mtls_enabled && !out.is_tls_enabled) r.warn(`${P}.is_mtls_enabled`, 'has no effect while is_tls_enabled = false');
  return out;
}

const tlsOn = (_seen: Seen, security: Seen): boolean => security.is_tls_enabled === true;
const mtlsOn = (_seen: Seen, security: Seen): boolean => security.is_tls_enabled === true && security.is_mtls_enabled === true;

/** `ctx`: the [security] section. */
const TLS: Fields<TlsSection> = {
  tls_cert_pem: { kind: 'str', required: true, nonEmpty: tlsOn },
  tls_key_pem: { kind: 'str', required: true, nonEmpty: tlsOn },
  mtls_client_ca_pem: { kind: 'str', required: mtlsOn, nonEmpty: mtlsOn },
  mtls_client_dns_name: { kind: 'str', required: mtlsOn, nonEmpty: mtlsOn },
};

function readTls(r: Reader, doc: Table, sec: SecuritySection): TlsSection | undefined {
  const t = r.table(doc, '', 'tls', sec.is_tls_enabled);
  return t === undefined ? undefined : readFields(r, t, 'tls', TLS, sec as unknown as Seen);
}

// [[external_key_stores]] -----------------------------------------------------------------------------------

const sigv4On = (security: Seen): boolean => security.is_sigv4_auth_enabled === true;
export const ACCESS_KEY_ID_NOTE = 'KMS requires 20..30 characters of A-Z and 2-7';
export const SECRET_NOTE = 'KMS requires 43..64 characters of a-z A-Z 0-9 / + =';

/** `ctx`: the [security] section. */
const CREDENTIAL: Fields<Sigv4Credential> = {
  access_key_id: {
    kind: 'str',
    required: true,
    nonEmpty: true,
    check: (v, at, _seen, security) => {
      if (sigv4On(security) && !ACCESS_KEY_ID_RE.test(v)) at.warn(ACCESS_KEY_ID_NOTE);
    },
  },
  secret_access_key: {
    kind: 'str',
    required: true,
    secret: true,
    nonEmpty: true,
    check: (v, at, _seen, security) => {
      if (sigv4On(security) && !SECRET_RE.test(v)) at.warn(SECRET_NOTE);
    },
  },
};

const QUOTA: IntOpts = { min: 1, max: 1_000_000_000, what: 'a positive integer' };

/** Read by readKeyStores (the legacy pair and the credential list depend on each other). */
const KEY_STORE: Fields<KeyStore> = {
  uri_path_prefix: { kind: 'str', required: true, byHand: true },
  sigv4_access_key_id: { kind: 'str', byHand: true },
  sigv4_secret_access_key: { kind: 'str', secret: true, byHand: true },
  sigv4_credentials: {
    kind: 'custom',
    summary: (v) => ({
      sigv4_credentials: (v as Sigv4Credential[]).map((c) => ({ access_key_id: c.access_key_id, secret_access_key: '<redacted>' })),
    }),
  },
  xks_key_id_set: { kind: 'custom', summary: (v) => ({ xks_key_id_set: [...(v as ReadonlySet<string>)].sort() }) },
  requests_per_second: { kind: 'int', range: QUOTA, byHand: true },
  burst: { kind: 'int', range: QUOTA, byHand: true },
};

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
    r.unknown(item, IP, Object.keys(KEY_STORE));
    const field = (key: keyof KeyStore): unknown => readField(r, item, IP, key, KEY_STORE[key] as AnyField, {}, {});

    const prefix = field('uri_path_prefix') as string;
    const pk = `${IP}.uri_path_prefix`;
    checkPrefix(r, pk, prefix);
    const prev = seen.get(prefix);
    if (prev !== undefined) r.fail(pk, `duplicate prefix ${describe(prefix)} (also external_key_stores[${prev}])`);
    seen.set(prefix, i);

    const listed = readCredentialList(r, item, IP, sec);
    const legacyRequired = listed.length === 0;
    const legacyId = r.str(item, IP, 'sigv4_access_key_id', legacyRequired);
    const legacySecret = r.str(item, IP, 'sigv4_secret_access_key', legacyRequired || legacyId !== undefined, { secret: true });
    if (legacyId === undefined && legacySecret !== undefined)
      r.fail(`${IP}.sigv4_access_key_id`, 'missing key (sigv4_secret_access_key is set)');
    const creds: Sigv4Credential[] = [];
    if (legacyId !== undefined && legacySecret !== undefined) {
      if (sec.is_sigv4_auth_enabled) {
        if (!ACCESS_KEY_ID_RE.test(legacyId)) r.warn(`${IP}.sigv4_access_key_id`, ACCESS_KEY_ID_NOTE);
        if (!SECRET_RE.test(legacySecret)) r.warn(`${IP}.sigv4_secret_access_key`, SECRET_NOTE);
      }
      creds.push(withHidden({ access_key_id: legacyId }, 'secret_access_key', legacySecret));
    }
    listed.forEach((c, j) => {
      const same = creds.find((o) => o.access_key_id === c.access_key_id);
      if (same === undefined) creds.push(c);
      else if (same.secret_access_key !== c.secret_access_key) {
        r.fail(
          `${IP}.sigv4_credentials[${j}].access_key_id`,
          `access key id ${describe(c.access_key_id)} is listed twice with different secrets`,
        );
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
    const rps = field('requests_per_second') as number | undefined;
    const burst = field('burst') as number | undefined;
    if (burst !== undefined && rps === undefined) r.warn(`${IP}.burst`, 'has no effect without requests_per_second');

    const ids = item['xks_key_id_set'];
    const ik = `${IP}.xks_key_id_set`;
    if (ids === undefined) r.fail(ik, 'missing key');
    if (!Array.isArray(ids)) r.fail(ik, `expected an array of key id strings, got ${describe(ids)}`);
    const set = new Set<string>();
    ids.forEach((id: unknown, j: number) => {
      if (typeof id !== 'string') r.fail(`${ik}[${j}]`, `expected a string, got ${describe(id)}`);
      if (!KEY_ID_RE.test(id))
        r.warn(`${ik}[${j}]`, `key id ${describe(id)} can never be used: KMS key ids are 1..128 characters of A-Z a-z 0-9 - . _`);
      if (set.has(id)) r.warn(`${ik}[${j}]`, `duplicate key id ${describe(id)}`);
      set.add(id);
    });
    if (set.size === 0) r.warn(ik, 'empty: every key operation on this keystore will fail with KeyNotFoundException');

    const ks = withHidden(
      { uri_path_prefix: prefix, sigv4_access_key_id: first.access_key_id, sigv4_credentials: creds, xks_key_id_set: set } as Omit<
        KeyStore,
        'sigv4_secret_access_key'
      >,
      'sigv4_secret_access_key',
      first.secret_access_key,
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
  if (/[\s\x00-\x1f\x7f]/.test(prefix))
    r.fail(key, `cannot be routed: no request path contains white space or control characters, got ${describe(prefix)}`);
  if (prefix.split('/').some((seg) => seg.startsWith(':') || seg.startsWith('*'))) {
    r.fail(key, `cannot be routed: a path segment starting with ":" or "*" is a route pattern, got ${describe(prefix)}`);
  }
  if (!PREFIX_CHARS_RE.test(prefix))
    r.warn(key, `${describe(prefix)} has characters KMS does not allow in a URI path (only a-z A-Z 0-9 / - _)`);
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
    return readFields(r, c, EP, CREDENTIAL, sec as unknown as Seen);
  });
}

// [pkcs11] --------------------------------------------------------------------------------------------------

/** The engine's bounds (native/limits.h, exported by the addon): what check-config accepts, the engine takes. */
let pkcs11Table: Fields<Omit<Pkcs11Section, 'module_path' | 'worker_threads_adaptive'>> | undefined;

function PKCS11(): Fields<Omit<Pkcs11Section, 'module_path' | 'worker_threads_adaptive'>> {
  if (pkcs11Table !== undefined) return pkcs11Table;
  const L = loadAddon().limits;
  const opTimeoutMax = Math.min(MAX_OPERATION_TIMEOUT_MILLI, L.operationTimeoutMs.max);
  const inRange = (min: number, max: number, note = ''): IntOpts => ({ min, max, what: `an integer in ${min}..${max}${note}` });
  pkcs11Table = {
    // The Rust proxy takes any usize / u64 for these two; larger values than the engine's are used as its, with a warning.
    session_pool_max_size: { kind: 'int', required: true, range: POSITIVE, atMost: L.poolMaxSize.max },
    session_pool_timeout_milli: { kind: 'int', required: true, range: NON_NEGATIVE, atMost: L.poolTimeoutMs.max },
    session_eager_close: { kind: 'bool', required: true },
    user_pin: { kind: 'str', required: true, secret: true },
    PKCS11_HSM_MODULE: { kind: 'str', required: true, summary: (v, s) => ({ PKCS11_HSM_MODULE: v, module_path: s.module_path }) },
    context_read_timeout_milli: { kind: 'int', required: true, range: NON_NEGATIVE },
    worker_threads: {
      kind: 'int',
      range: inRange(L.threads.min, L.threads.max),
      default: (seen) => Math.min(seen.session_pool_max_size as number, MAX_DEFAULT_WORKER_THREADS),
    },
    operation_timeout_milli: {
      kind: 'int',
      range: inRange(L.operationTimeoutMs.min, opTimeoutMax, ' (0 = no deadline)'),
      default: DEFAULT_OPERATION_TIMEOUT_MILLI,
      check: (v, at) => {
        if (v >= 250) at.warn(`${v} ms: KMS gives up after 250 ms, so a stuck HSM call is reported late`);
        if (v === 0) at.warn('0: HSM calls have no deadline; a stuck HSM hangs requests');
      },
    },
    session_key_copies: { kind: 'bool', default: true },
    session_key_check_milli: { kind: 'int', range: inRange(L.keyCheckMs.min, L.keyCheckMs.max), default: DEFAULT_SESSION_KEY_CHECK_MILLI },
  };
  return pkcs11Table;
}

function readPkcs11(r: Reader, doc: Table, env: NodeJS.ProcessEnv): Pkcs11Section {
  const P = 'pkcs11';
  const table = r.table(doc, '', P, true);
  const out = readFields(r, table, P, PKCS11()) as Pkcs11Section;
  out.worker_threads_adaptive = table.worker_threads === undefined;
  const fromEnv = env[PKCS11_HSM_MODULE];
  out.module_path = fromEnv !== undefined && fromEnv !== '' ? fromEnv : out.PKCS11_HSM_MODULE;
  if (out.module_path === '') r.fail(`${P}.${PKCS11_HSM_MODULE}`, 'empty, and env PKCS11_HSM_MODULE is not set');
  return out;
}

// [pkcs11_logger], [limits], [hsm_capabilities], [health_check] ---------------------------------------------

const PKCS11_LOGGER: Fields<Pkcs11LoggerSection> = {
  PKCS11_LOGGER_LIBRARY_PATH: { kind: 'str', required: true },
  PKCS11_LOGGER_LOG_FILE_PATH: { kind: 'str', required: true },
  PKCS11_LOGGER_FLAGS: { kind: 'str', required: true },
};

const LIMITS: Fields<LimitsSection> = {
  max_plaintext_in_base64: {
    kind: 'int',
    required: true,
    range: NON_NEGATIVE,
    check: (v, at) => {
      if (v < MIN_PLAINTEXT_B64) at.warn(`${v} is below ${MIN_PLAINTEXT_B64} (4,300 bytes of plaintext, which KMS may send)`);
    },
  },
  max_aad_in_base64: {
    kind: 'int',
    required: true,
    range: NON_NEGATIVE,
    check: (v, at) => {
      if (v < MIN_AAD_B64) at.warn(`${v} is below ${MIN_AAD_B64} (8,192 bytes of AAD, which KMS may send)`);
      if (v > MAX_AAD_B64) at.warn(`${v} is above ${MAX_AAD_B64}: AAD beyond 65,535 bytes cannot be encoded`);
    },
  },
};

const HSM_CAPABILITIES: Fields<HsmCapabilities> = {
  can_generate_iv: { kind: 'bool', required: true },
  is_zero_iv_required: {
    kind: 'bool',
    required: true,
    check: (v, at, seen) => {
      if (v && seen.can_generate_iv !== true) at.warn('has no effect while can_generate_iv = false');
    },
  },
};

/** A label the proxy looks up in the HSM itself (not one KMS sends): refused unless KMS's key id form. */
function mustBeKeyId(v: string, at: At): void {
  if (!KEY_ID_RE.test(v)) at.fail(`key ids are 1..128 characters of A-Z a-z 0-9 - . _, got ${describe(v)}`);
}

const HEALTH_CHECK: Fields<HealthCheckSection> = {
  key_id: {
    kind: 'str',
    required: true,
    check: mustBeKeyId,
  },
  interval_secs: {
    kind: 'int',
    range: { min: 1, max: 60, what: 'an integer in 1..60 (the spec caches health for at most 60 s)' },
    default: DEFAULT_HEALTH_CHECK_INTERVAL_SECS,
  },
  degraded_latency_milli: {
    kind: 'int',
    range: { min: 1, max: 60000, what: 'an integer in 1..60000' },
    default: DEFAULT_HEALTH_CHECK_DEGRADED_MILLI,
  },
};

function readHealthCheck(r: Reader, doc: Table, stores: readonly KeyStore[]): HealthCheckSection | undefined {
  const P = 'health_check';
  const t = r.table(doc, '', P, false);
  if (t === undefined) return undefined;
  const out = readFields(r, t, P, HEALTH_CHECK);
  const users = stores.filter((s) => s.xks_key_id_set.has(out.key_id)).map((s) => describe(s.uri_path_prefix));
  if (users.length > 0) {
    r.warn(
      `${P}.key_id`,
      `${describe(out.key_id)} is also in the xks_key_id_set of ${users.join(', ')}: use a key reserved for health checks`,
    );
  }
  return out;
}

// [audit] (ours, optional) -------------------------------------------------------------------------------

export const DEFAULT_AUDIT_FILE_PREFIX = 'xks-audit';
export const DEFAULT_AUDIT_CHECKPOINT_EVERY = 1000;
export const DEFAULT_AUDIT_CHECKPOINT_SECS = 60;
const DURABILITIES: readonly AuditDurability[] = ['before-response', 'batched'];
const ON_FAILURES: readonly AuditOnFailure[] = ['fail-closed', 'fail-open'];

function oneOf<T extends string>(choices: readonly T[]): (raw: string, at: At) => T {
  return (raw, at) => {
    const found = choices.find((c) => c === raw);
    if (found === undefined) return at.fail(`expected one of ${choices.map((c) => `"${c}"`).join(', ')}, got ${describe(raw)}`);
    return found;
  };
}

const AUDIT: Fields<AuditSection> = {
  directory: { kind: 'str', required: true, nonEmpty: true },
  file_prefix: {
    kind: 'str',
    default: DEFAULT_AUDIT_FILE_PREFIX,
    check: (v, at) => {
      if (!/^[A-Za-z0-9_-]{1,64}$/.test(v)) at.fail(`expected 1..64 characters of A-Z a-z 0-9 _ -, got ${describe(v)}`);
    },
  },
  rotation_kind: {
    kind: 'str',
    default: 'HOURLY',
    parse: (raw, at) => {
      const found = ROTATIONS.find((k) => k === raw.toUpperCase());
      if (found === undefined) at.fail(`expected one of MINUTELY, HOURLY, DAILY, NEVER, got ${describe(raw)}`);
      return found;
    },
  },
  hmac_key_id: {
    kind: 'str',
    required: true,
    check: mustBeKeyId,
  },
  checkpoint_every: {
    kind: 'int',
    range: { min: 1, max: 1_000_000, what: 'an integer in 1..1000000' },
    default: DEFAULT_AUDIT_CHECKPOINT_EVERY,
  },
  checkpoint_secs: {
    kind: 'int',
    range: { min: 1, max: 86_400, what: 'an integer in 1..86400' },
    default: DEFAULT_AUDIT_CHECKPOINT_SECS,
  },
  durability: { kind: 'str', default: 'before-response', parse: oneOf(DURABILITIES) },
  on_failure: { kind: 'str', default: 'fail-closed', parse: oneOf(ON_FAILURES) },
  stdout: { kind: 'bool', default: false },
};

function readAudit(r: Reader, doc: Table, stores: readonly KeyStore[], health: HealthCheckSection | undefined): AuditSection | undefined {
  const P = 'audit';
  const t = r.table(doc, '', P, false);
  if (t === undefined) return undefined;
  const out = readFields(r, t, P, AUDIT);
  const users = stores.filter((s) => s.xks_key_id_set.has(out.hmac_key_id)).map((s) => describe(s.uri_path_prefix));
  if (users.length > 0 || health?.key_id === out.hmac_key_id) {
    r.fail(
      `${P}.hmac_key_id`,
      `${describe(out.hmac_key_id)} is also a key for XKS or the health check: the audit HMAC key must be its own`,
    );
  }
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

const METRICS: Fields<MetricsSection> = {
  enabled: { kind: 'bool', default: false },
  ip: { kind: 'str', default: DEFAULT_METRICS_IP, check: IP_ADDRESS },
  port: { kind: 'int', range: PORT, default: DEFAULT_METRICS_PORT },
};

/** True when two listen addresses can collide (equal, or either one a wildcard address). */
function addressesOverlap(a: string, b: string): boolean {
  const wildcard = (ip: string): boolean => ip === '0.0.0.0' || ip === '::';
  return a === b || wildcard(a) || wildcard(b);
}

function readMetrics(r: Reader, doc: Table, server: ServerSection): MetricsSection {
  const P = 'metrics';
  const t = r.table(doc, '', P, false);
  if (t === undefined) return { ...METRICS_OFF };
  const { enabled, ip, port } = readFields(r, t, P, METRICS);
  if (!enabled) {
    if (t.ip !== undefined || t.port !== undefined) r.warn(`${P}.enabled`, 'is not true: /metrics is not served (ip and port are ignored)');
    return { enabled, ip, port };
  }
  if (port !== 0 && addressesOverlap(ip, server.ip) && (port === server.port || port === server.port_http_ping)) {
    r.fail(`${P}.port`, `${port} is also ${port === server.port ? 'server.port' : 'server.port_http_ping'}: /metrics needs its own port`);
  }
  if (!isLoopback(ip)) {
    r.warn(
      `${P}.ip`,
      `${describe(ip)} is not a loopback address: anyone who reaches it reads every key store prefix and its traffic (no authentication)`,
    );
  }
  return { enabled, ip, port };
}

function isLoopback(ip: string): boolean {
  return ip === '::1' || ip.startsWith('127.');
}

// The file --------------------------------------------------------------------------------------------------

/** The sections (summary order); readConfig reads them in dependency order. */
function configFields(): Fields<Config> {
  return {
    server: { kind: 'table', fields: SERVER as unknown as Fields<ServerSection> },
    tracing: { kind: 'table', fields: TRACING },
    security: { kind: 'table', fields: SECURITY },
    tls: { kind: 'table', fields: TLS },
    external_key_stores: {
      kind: 'custom',
      summary: (v) => ({ external_key_stores: (v as KeyStore[]).map((ks) => summarize(ks, KEY_STORE)) }),
    },
    pkcs11: { kind: 'table', fields: PKCS11() as unknown as Fields<Pkcs11Section> },
    pkcs11_logger: { kind: 'table', fields: PKCS11_LOGGER },
    limits: { kind: 'table', fields: LIMITS },
    hsm_capabilities: { kind: 'table', fields: HSM_CAPABILITIES },
    health_check: { kind: 'table', fields: HEALTH_CHECK },
    metrics: { kind: 'table', fields: METRICS },
    audit: { kind: 'table', fields: AUDIT },
  };
}

/** A required section without rules across its keys. */
function section<T>(r: Reader, doc: Table, key: string, fields: Fields<T>): T {
  return readFields(r, r.table(doc, '', key, true), key, fields);
}

function readConfig(r: Reader, doc: Table, env: NodeJS.ProcessEnv): Config {
  r.unknown(doc, '', Object.keys(configFields()));
  const security = readSecurity(r, doc);
  const config: Config = {
    server: readServer(r, doc),
    tracing: readTracing(r, doc),
    security,
    tls: readTls(r, doc, security),
    external_key_stores: readKeyStores(r, doc, security),
    pkcs11: readPkcs11(r, doc, env),
    limits: section(r, doc, 'limits', LIMITS),
    hsm_capabilities: section(r, doc, 'hsm_capabilities', HSM_CAPABILITIES),
    metrics: METRICS_OFF,
  };
  const lt = r.table(doc, '', 'pkcs11_logger', false);
  if (lt !== undefined) config.pkcs11_logger = readFields(r, lt, 'pkcs11_logger', PKCS11_LOGGER);
  const health = readHealthCheck(r, doc, config.external_key_stores);
  if (health !== undefined) config.health_check = health;
  config.metrics = readMetrics(r, doc, config.server);
  const audit = readAudit(r, doc, config.external_key_stores, health);
  if (audit !== undefined) config.audit = audit;
  return config;
}

// Passing a Config to another thread ----------------------------------------------------------------------

/**
 * The secrets of a Config. They are non-enumerable, so structured cloning (postMessage, workerData)
 * drops them: they travel in this explicit field next to the clone, and reviveConfig re-attaches them.
 */
export interface ConfigSecrets {
  user_pin: string;
  /** Per keystore, in order: the legacy secret and each credential's secret. */
  key_stores: { sigv4_secret_access_key: string; secret_access_keys: string[] }[];
}

export function configSecrets(config: Config): ConfigSecrets {
  return {
    user_pin: config.pkcs11.user_pin,
    key_stores: config.external_key_stores.map((ks) => ({
      sigv4_secret_access_key: ks.sigv4_secret_access_key,
      secret_access_keys: ks.sigv4_credentials.map((c) => c.secret_access_key),
    })),
  };
}

/**
 * A structured clone of a Config made whole again: the secrets re-attached hidden (as loadConfig
 * attaches them) and the Buffer that cloning turned into a Uint8Array restored. Mutates `clone`.
 */
export function reviveConfig(clone: Config, secrets: ConfigSecrets): Config {
  withHidden(clone.pkcs11, 'user_pin', secrets.user_pin);
  clone.external_key_stores.forEach((ks, i) => {
    const s = secrets.key_stores[i];
    if (s === undefined || s.secret_access_keys.length !== ks.sigv4_credentials.length)
      throw new Error('configuration secrets do not match the configuration');
    withHidden(ks, 'sigv4_secret_access_key', s.sigv4_secret_access_key);
    ks.sigv4_credentials.forEach((c, j) => {
      withHidden(c, 'secret_access_key', s.secret_access_keys[j]!);
    });
  });
  const md: Uint8Array | undefined = clone.server.ciphertext_metadata;
  if (md !== undefined) clone.server.ciphertext_metadata = Buffer.from(md.buffer, md.byteOffset, md.byteLength);
  return clone;
}

// ---------------------------------------------------------------------------------------------------------

function b64Len(bytes: number): number {
  return Math.ceil(bytes / 3) * 4;
}

function errCode(e: unknown): string {
  if (typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'string') return e.code;
  return 'error';
}
