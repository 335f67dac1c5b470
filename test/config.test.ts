import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { inspect } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, parseConfig, pkcs11LoggerEnv, redactedSummary, resolveSettingsPath, type Config } from '../src/config.js';

const FIX = resolve(import.meta.dirname, 'fixtures/config');
const fixture = (name: string): string => join(FIX, name);
const text = (name: string): string => readFileSync(fixture(name), 'utf8');
const NO_ENV: NodeJS.ProcessEnv = {};

/** parseConfig expected to fail; returns the ConfigError. */
function failure(src: string, file = 'settings.toml', env: NodeJS.ProcessEnv = NO_ENV): ConfigError {
  try {
    parseConfig(src, file, env);
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    const err = e as ConfigError;
    expect(err.message).not.toMatch(/[\r\n]/);
    return err;
  }
  throw new Error('expected a ConfigError');
}

/** Replaces exactly one occurrence of `from` in `src`. */
function edit(src: string, from: string | RegExp, to: string): string {
  const out = src.replace(from, to);
  if (out === src) throw new Error(`fixture edit did not apply: ${String(from)}`);
  return out;
}

const MIN = text('minimal.toml');
const SOFT = text('settings_softhsmv2.toml');
const CLOUD = text('settings_cloudhsm.toml');

describe('Rust sample formats', () => {
  it('softhsmv2: every section, pkcs11_logger, two keystores, secrets empty', () => {
    const { config, warnings, file } = loadConfig(fixture('settings_softhsmv2.toml'), NO_ENV);
    expect(file).toBe(fixture('settings_softhsmv2.toml'));
    expect(config.server).toMatchObject({ ip: '0.0.0.0', port: 80, port_http_ping: 80, region: 'us-east-1', service: 'kms-xks-proxy' });
    expect(config.server.ciphertext_metadata).toBeUndefined();
    expect(config.server.ciphertext_metadata_b64).toBeUndefined();
    expect(config.server.tcp_keepalive).toEqual({ tcp_keepalive_secs: 60, tcp_keepalive_retries: 3, tcp_keepalive_interval_secs: 1 });
    expect(config.tracing).toEqual({
      is_stdout_writer_enabled: true,
      is_file_writer_enabled: true,
      level: 'DEBUG',
      directory: '/var/local/xks-proxy/logs',
      file_prefix: 'xks-proxy.log',
      rotation_kind: 'HOURLY',
      file_mode: 0o640,
    });
    expect(config.security).toEqual({ is_sigv4_auth_enabled: true, is_tls_enabled: false, is_mtls_enabled: false });
    expect(config.tls?.mtls_client_dns_name).toBe('us-east-1.alpha.cks.kms.aws.internal.amazonaws.com');
    expect(config.external_key_stores.map((k) => k.uri_path_prefix)).toEqual(['', '/example/uri/path/prefix']);
    expect([...config.external_key_stores[0]!.xks_key_id_set]).toEqual(['foo', 'cat', 'dog']);
    expect(config.external_key_stores[1]!.xks_key_id_set.has('bar')).toBe(true);
    expect(config.external_key_stores[1]!.xks_key_id_set.has('cat')).toBe(false);
    expect(config.pkcs11).toMatchObject({
      session_pool_max_size: 30,
      session_pool_timeout_milli: 0,
      session_eager_close: false,
      context_read_timeout_milli: 10,
      worker_threads: 30,
      PKCS11_HSM_MODULE: '/local/centos/pkcs11-logger/build/linux/pkcs11-logger-x64.so',
      module_path: '/local/centos/pkcs11-logger/build/linux/pkcs11-logger-x64.so',
    });
    expect(config.pkcs11.user_pin).toBe('1234');
    expect(config.pkcs11_logger?.PKCS11_LOGGER_LIBRARY_PATH).toBe('/usr/local/lib/softhsm/libsofthsm2.so');
    expect(config.limits).toEqual({ max_plaintext_in_base64: 8192, max_aad_in_base64: 16384 });
    expect(config.hsm_capabilities).toEqual({ can_generate_iv: false, is_zero_iv_required: false });
    // Empty SigV4 credentials (as in the Rust samples) load, with warnings naming the keys.
    expect(warnings.some((w) => w.includes('external_key_stores[0].sigv4_access_key_id'))).toBe(true);
    expect(warnings.some((w) => w.includes('external_key_stores[1].sigv4_secret_access_key'))).toBe(true);
    expect(warnings.every((w) => w.startsWith(`${fixture('settings_softhsmv2.toml')}: `))).toBe(true);
  });

  it('cloudhsm: TLS, Oso, ciphertext metadata, zero-IV capability', () => {
    const { config, warnings } = loadConfig(fixture('settings_cloudhsm.toml'), NO_ENV);
    expect(config.server.port).toBe(443);
    expect(config.server.region).toBe('us-east-2');
    expect(config.server.ciphertext_metadata_b64).toBe('djAuMC4x');
    expect(config.server.ciphertext_metadata?.toString('latin1')).toBe('v0.0.1');
    expect(config.security.secondary_auth).toBe('Oso');
    expect(config.security.oso).toEqual({ polar_file_path: 'configuration/oso.polar' });
    expect(config.tls).toMatchObject({ tls_cert_pem: 'tls/server_cert.pem', tls_key_pem: 'tls/server_key.pem' });
    expect(config.pkcs11.user_pin).toBe('xks_proxy:1234567');
    expect(config.hsm_capabilities).toEqual({ can_generate_iv: true, is_zero_iv_required: true });
    expect(config.external_key_stores[0]!.sigv4_access_key_id).toBe('AKIA4GBY3I6JCE5M2HPX');
    expect(warnings).toEqual([]);
  });

  it('luna: HSM-generated IV, PIN with special characters', () => {
    const { config } = loadConfig(fixture('settings_luna.toml'), NO_ENV);
    expect(config.security.is_tls_enabled).toBe(true);
    expect(config.pkcs11.user_pin).toBe('1q@W3e$R');
    expect(config.hsm_capabilities).toEqual({ can_generate_iv: true, is_zero_iv_required: false });
    expect(config.pkcs11_logger?.PKCS11_LOGGER_LIBRARY_PATH).toBe('/usr/safenet/lunaclient/lib/libCryptoki2_64.so');
  });

  it('nshield: no pkcs11_logger, empty [tls] paths accepted while TLS is off', () => {
    const { config } = loadConfig(fixture('settings_nshield.toml'), NO_ENV);
    expect(config.pkcs11_logger).toBeUndefined();
    expect(config.tls).toEqual({ tls_cert_pem: '', tls_key_pem: '', mtls_client_ca_pem: '', mtls_client_dns_name: '' });
    expect(config.pkcs11.module_path).toBe('/opt/nfast/toolkits/pkcs11/libcknfast.so');
    expect(pkcs11LoggerEnv(config, NO_ENV)).toEqual({});
  });

  it('docker: stdout only without directory/prefix/rotation, no [tls]', () => {
    const { config } = loadConfig(fixture('settings_docker.toml'), NO_ENV);
    expect(config.tls).toBeUndefined();
    expect(config.tracing.directory).toBeUndefined();
    expect(config.tracing.rotation_kind).toBe('HOURLY');
    expect(config.external_key_stores).toHaveLength(1);
  });
});

describe('defaults and our extension', () => {
  it('optional keys take the Rust defaults', () => {
    const { config, warnings } = parseConfig(MIN, 'min.toml', NO_ENV);
    expect(config.server.port_http_ping).toBe(80);
    expect(config.server.tcp_keepalive).toEqual({});
    expect(config.server.ciphertext_metadata).toBeUndefined();
    expect(config.tracing.level).toBe('INFO');
    expect(config.tracing.rotation_kind).toBe('HOURLY');
    expect(config.security.secondary_auth).toBeUndefined();
    expect(config.security.oso).toBeUndefined();
    expect(config.tls).toBeUndefined();
    expect(config.pkcs11_logger).toBeUndefined();
    expect(config.pkcs11.worker_threads).toBe(4);
    expect(warnings).toEqual([]);
  });

  it('worker_threads defaults to min(pool, 32) and may be set', () => {
    const big = edit(MIN, 'session_pool_max_size = 4', 'session_pool_max_size = 100');
    expect(parseConfig(big, 'f', NO_ENV).config.pkcs11.worker_threads).toBe(32);
    const set = edit(MIN, 'session_pool_max_size = 4', 'session_pool_max_size = 4\nworker_threads = 2');
    expect(parseConfig(set, 'f', NO_ENV).config.pkcs11.worker_threads).toBe(2);
    const bad = edit(MIN, 'session_pool_max_size = 4', 'session_pool_max_size = 4\nworker_threads = 0');
    expect(failure(bad).message).toBe('settings.toml: pkcs11.worker_threads: expected an integer in 1..256, got 0');
    // 256 is the addon's bound for one engine's threads: a larger value would pass here and fail at start.
    const most = edit(MIN, 'session_pool_max_size = 4', 'session_pool_max_size = 4\nworker_threads = 256');
    expect(parseConfig(most, 'f', NO_ENV).config.pkcs11.worker_threads).toBe(256);
    const over = edit(MIN, 'session_pool_max_size = 4', 'session_pool_max_size = 4\nworker_threads = 257');
    expect(failure(over).message).toBe('settings.toml: pkcs11.worker_threads: expected an integer in 1..256, got 257');
  });

  it('[server] workers: absent by default (all cores at start), 1..1024, named when wrong', () => {
    expect(parseConfig(MIN, 'f', NO_ENV).config.server.workers).toBeUndefined();
    const two = parseConfig(edit(MIN, 'port = 8443', 'port = 8443\nworkers = 2'), 'f', NO_ENV);
    expect(two.config.server.workers).toBe(2);
    expect(two.warnings).toEqual([]);
    expect((redactedSummary(two.config) as { server: { workers?: number } }).server.workers).toBe(2);
    expect(failure(edit(MIN, 'port = 8443', 'port = 8443\nworkers = 0')).message).toBe(
      'settings.toml: server.workers: expected an integer in 1..1024, got 0',
    );
    expect(failure(edit(MIN, 'port = 8443', 'port = 8443\nworkers = "all"')).message).toBe(
      'settings.toml: server.workers: expected an integer in 1..1024, got "all"',
    );
  });

  it('port_http_ping, level and rotation are read (case-insensitive like Rust)', () => {
    let src = edit(MIN, 'port = 8443', 'port = 8443\nport_http_ping = 8080');
    src = edit(
      src,
      'is_file_writer_enabled = false',
      'is_file_writer_enabled = true\nlevel = "warn"\ndirectory = "/tmp/x"\nfile_prefix = "p"\nrotation_kind = "daily"',
    );
    const { config } = parseConfig(src, 'f', NO_ENV);
    expect(config.server.port_http_ping).toBe(8080);
    expect(config.tracing.level).toBe('WARN');
    expect(config.tracing.rotation_kind).toBe('DAILY');
    const numeric = edit(MIN, 'is_file_writer_enabled = false', 'is_file_writer_enabled = false\nlevel = "5"');
    expect(parseConfig(numeric, 'f', NO_ENV).config.tracing.level).toBe('TRACE');
  });

  it('unknown keys are tolerated and reported with file and dotted key', () => {
    let src = edit(MIN, '[limits]', '[limits]\nmax_something_else = 3');
    src = edit(src, 'xks_key_id_set = ["k1"]', 'xks_key_id_set = ["k1"]\ncomment = "x"');
    src += '\n[extra]\na = 1\n';
    const { warnings } = parseConfig(src, 's.toml', NO_ENV);
    expect(warnings).toHaveLength(3);
    expect(warnings).toContain('s.toml: extra: unknown key (ignored)');
    expect(warnings).toContain('s.toml: external_key_stores[0].comment: unknown key (ignored)');
    expect(warnings).toContain('s.toml: limits.max_something_else: unknown key (ignored)');
  });
});

describe('module path and pkcs11-logger environment', () => {
  it('env PKCS11_HSM_MODULE overrides the file', () => {
    const env = { PKCS11_HSM_MODULE: '/opt/other/libp11.so' };
    const { config } = parseConfig(MIN, 'f', env);
    expect(config.pkcs11.module_path).toBe('/opt/other/libp11.so');
    expect(config.pkcs11.PKCS11_HSM_MODULE).toBe('/usr/lib/softhsm/libsofthsm2.so');
    expect(parseConfig(MIN, 'f', { PKCS11_HSM_MODULE: '' }).config.pkcs11.module_path).toBe('/usr/lib/softhsm/libsofthsm2.so');
  });

  it('pkcs11LoggerEnv maps [pkcs11_logger] to PKCS11_LOGGER_* with env winning', () => {
    const { config } = parseConfig(SOFT, 'f', NO_ENV);
    expect(pkcs11LoggerEnv(config, NO_ENV)).toEqual({
      PKCS11_LOGGER_LIBRARY_PATH: '/usr/local/lib/softhsm/libsofthsm2.so',
      PKCS11_LOGGER_LOG_FILE_PATH: '/var/local/xks-proxy/logs/pkcs11-logger-output.log',
      PKCS11_LOGGER_FLAGS: '0',
    });
    expect(pkcs11LoggerEnv(config, { PKCS11_LOGGER_FLAGS: '4' }).PKCS11_LOGGER_FLAGS).toBe('4');
  });
});

describe('resolveSettingsPath', () => {
  const cwd = join(FIX, 'bootstrap');

  it('uses env XKS_PROXY_SETTINGS_TOML first', () => {
    expect(resolveSettingsPath({ XKS_PROXY_SETTINGS_TOML: '/etc/xks/settings.toml' }, cwd)).toBe('/etc/xks/settings.toml');
    expect(resolveSettingsPath({ XKS_PROXY_SETTINGS_TOML: 'rel/s.toml' }, '/srv')).toBe('/srv/rel/s.toml');
  });

  it('else the key of configuration/bootstrap.toml, relative to cwd, and that file loads', () => {
    const p = resolveSettingsPath(NO_ENV, cwd);
    expect(p).toBe(join(cwd, 'configuration/settings.toml'));
    expect(loadConfig(p, NO_ENV).config.external_key_stores[0]!.xks_key_id_set.has('k1')).toBe(true);
  });

  it('clear errors without env and bootstrap, or with a bad bootstrap', () => {
    const empty = mkdtempSync(join(tmpdir(), 'xks-cfg-'));
    try {
      expect(() => resolveSettingsPath(NO_ENV, empty)).toThrow(ConfigError);
      expect(() => resolveSettingsPath(NO_ENV, empty)).toThrow(
        /configuration\/bootstrap\.toml: env XKS_PROXY_SETTINGS_TOML is not set .*ENOENT/,
      );
      mkdirSync(join(empty, 'configuration'));
      writeFileSync(join(empty, 'configuration/bootstrap.toml'), 'OTHER = "x"\n');
      expect(() => resolveSettingsPath(NO_ENV, empty)).toThrow(/bootstrap\.toml: XKS_PROXY_SETTINGS_TOML: missing key/);
      writeFileSync(join(empty, 'configuration/bootstrap.toml'), 'XKS_PROXY_SETTINGS_TOML = 3\n');
      expect(() => resolveSettingsPath(NO_ENV, empty)).toThrow(
        /bootstrap\.toml: XKS_PROXY_SETTINGS_TOML: expected a non-empty string, got 3/,
      );
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });

  it('unreadable settings file names the file', () => {
    expect(() => loadConfig('/nonexistent/settings.toml', NO_ENV)).toThrow(
      '/nonexistent/settings.toml: cannot read the settings file (ENOENT)',
    );
  });
});

describe('broken files name the key', () => {
  const cases: Array<[string, string, string]> = [
    ['missing required key', edit(MIN, /^region = .*$/m, ''), 'settings.toml: server.region: missing key'],
    ['missing table', edit(MIN, /\[hsm_capabilities\][^[]*$/, ''), 'settings.toml: hsm_capabilities: missing table'],
    [
      'wrong type (string for integer)',
      edit(MIN, 'session_pool_max_size = 4', 'session_pool_max_size = "abc"'),
      'settings.toml: pkcs11.session_pool_max_size: expected a positive integer, got "abc"',
    ],
    [
      'zero pool',
      edit(MIN, 'session_pool_max_size = 4', 'session_pool_max_size = 0'),
      'settings.toml: pkcs11.session_pool_max_size: expected a positive integer, got 0',
    ],
    [
      'float port',
      edit(MIN, 'port = 8443', 'port = 8443.5'),
      'settings.toml: server.port: expected a port number (0..65535; 0 picks a free port), got 8443.5',
    ],
    [
      'port out of range',
      edit(MIN, 'port = 8443', 'port = 70000'),
      'settings.toml: server.port: expected a port number (0..65535; 0 picks a free port), got 70000',
    ],
    [
      'bool as string',
      edit(MIN, 'session_eager_close = false', 'session_eager_close = "false"'),
      'settings.toml: pkcs11.session_eager_close: expected a boolean (true or false), got "false"',
    ],
    [
      'bad ip',
      edit(MIN, 'ip = "127.0.0.1"', 'ip = "localhost"'),
      'settings.toml: server.ip: expected an IPv4 or IPv6 address, got "localhost"',
    ],
    [
      'bad level',
      edit(MIN, 'is_file_writer_enabled = false', 'is_file_writer_enabled = false\nlevel = "LOUD"'),
      'settings.toml: tracing.level: expected one of TRACE, DEBUG, INFO, WARN, ERROR, got "LOUD"',
    ],
    [
      'bad rotation',
      edit(
        MIN,
        'is_file_writer_enabled = false',
        'is_file_writer_enabled = true\ndirectory = "/tmp/x"\nfile_prefix = "p"\nrotation_kind = "WEEKLY"',
      ),
      'settings.toml: tracing.rotation_kind: expected one of MINUTELY, HOURLY, DAILY, NEVER, got "WEEKLY"',
    ],
    [
      'file writer without directory',
      edit(MIN, 'is_file_writer_enabled = false', 'is_file_writer_enabled = true\nfile_prefix = "x"'),
      'settings.toml: tracing.directory: missing key',
    ],
    [
      'prefix without leading slash',
      edit(MIN, 'uri_path_prefix = ""', 'uri_path_prefix = "example/prefix"'),
      'settings.toml: external_key_stores[0].uri_path_prefix: must be empty or start with "/", got "example/prefix"',
    ],
    [
      'prefix with a route parameter',
      edit(MIN, 'uri_path_prefix = ""', 'uri_path_prefix = "/tenant/:id"'),
      'settings.toml: external_key_stores[0].uri_path_prefix: cannot be routed: a path segment starting with ":" or "*" is a route pattern, got "/tenant/:id"',
    ],
    [
      'prefix with a wildcard',
      edit(MIN, 'uri_path_prefix = ""', 'uri_path_prefix = "/*"'),
      'settings.toml: external_key_stores[0].uri_path_prefix: cannot be routed: a path segment starting with ":" or "*" is a route pattern, got "/*"',
    ],
    [
      'prefix with a query',
      edit(MIN, 'uri_path_prefix = ""', 'uri_path_prefix = "/a?b"'),
      'settings.toml: external_key_stores[0].uri_path_prefix: cannot be routed: "?" starts the query string, got "/a?b"',
    ],
    [
      'prefix with a space',
      edit(MIN, 'uri_path_prefix = ""', 'uri_path_prefix = "/my prefix"'),
      'settings.toml: external_key_stores[0].uri_path_prefix: cannot be routed: no request path contains white space or control characters, got "/my prefix"',
    ],
    [
      'prefix with a newline',
      edit(MIN, 'uri_path_prefix = ""', 'uri_path_prefix = "/a\\nb"'),
      'settings.toml: external_key_stores[0].uri_path_prefix: cannot be routed: no request path contains white space or control characters, got "/a\\nb"',
    ],
    [
      'file_mode not octal',
      edit(MIN, 'is_file_writer_enabled = false', 'is_file_writer_enabled = false\nfile_mode = "rw-r-----"'),
      'settings.toml: tracing.file_mode: expected an octal mode such as "0640" or "0644", got "rw-r-----"',
    ],
    [
      'file_mode an integer',
      edit(MIN, 'is_file_writer_enabled = false', 'is_file_writer_enabled = false\nfile_mode = 640'),
      'settings.toml: tracing.file_mode: expected a string, got 640',
    ],
    [
      'file_mode writable by others',
      edit(MIN, 'is_file_writer_enabled = false', 'is_file_writer_enabled = false\nfile_mode = "0666"'),
      'settings.toml: tracing.file_mode: "0666" lets group or others write the log: anyone could forge lines (use "0640" or "0644")',
    ],
    [
      'file_mode setuid',
      edit(MIN, 'is_file_writer_enabled = false', 'is_file_writer_enabled = false\nfile_mode = "4640"'),
      'settings.toml: tracing.file_mode: expected an octal mode such as "0640" or "0644", got "4640"',
    ],
    [
      'file_mode owner cannot write',
      edit(MIN, 'is_file_writer_enabled = false', 'is_file_writer_enabled = false\nfile_mode = "0440"'),
      'settings.toml: tracing.file_mode: "0440": the owner (the proxy) must be able to read and write its log files',
    ],
    [
      'duplicate prefix',
      edit(SOFT, 'uri_path_prefix = "/example/uri/path/prefix"', 'uri_path_prefix = ""'),
      'settings.toml: external_key_stores[1].uri_path_prefix: duplicate prefix "" (also external_key_stores[0])',
    ],
    [
      'metadata not base64',
      edit(MIN, 'service = "kms-xks-proxy"', 'service = "kms-xks-proxy"\nciphertext_metadata_b64 = "not base64!"'),
      'settings.toml: server.ciphertext_metadata_b64: expected canonical padded base64 (A-Z a-z 0-9 + / =)',
    ],
    [
      'metadata unpadded',
      edit(MIN, 'service = "kms-xks-proxy"', 'service = "kms-xks-proxy"\nciphertext_metadata_b64 = "djAuMC4"'),
      'settings.toml: server.ciphertext_metadata_b64: expected canonical padded base64 (A-Z a-z 0-9 + / =)',
    ],
    [
      'metadata non-canonical',
      edit(MIN, 'service = "kms-xks-proxy"', 'service = "kms-xks-proxy"\nciphertext_metadata_b64 = "djB="'),
      'settings.toml: server.ciphertext_metadata_b64: expected canonical padded base64 (non-zero trailing bits)',
    ],
    [
      'metadata too long',
      edit(
        MIN,
        'service = "kms-xks-proxy"',
        `service = "kms-xks-proxy"\nciphertext_metadata_b64 = "${Buffer.alloc(21, 7).toString('base64')}"`,
      ),
      'settings.toml: server.ciphertext_metadata_b64: decodes to 21 bytes, at most 20 allowed',
    ],
    [
      'key id not a string',
      edit(MIN, 'xks_key_id_set = ["k1"]', 'xks_key_id_set = ["k1", 2]'),
      'settings.toml: external_key_stores[0].xks_key_id_set[1]: expected a string, got 2',
    ],
    [
      'key id set not an array',
      edit(MIN, 'xks_key_id_set = ["k1"]', 'xks_key_id_set = "k1"'),
      'settings.toml: external_key_stores[0].xks_key_id_set: expected an array of key id strings, got "k1"',
    ],
    [
      'no keystores',
      edit(MIN, /\[\[external_key_stores\]\][^[]*/, ''),
      'settings.toml: external_key_stores: missing: at least one [[external_key_stores]] table is required',
    ],
    [
      'secondary_auth other than Oso',
      edit(MIN, 'is_mtls_enabled = false', 'is_mtls_enabled = false\nsecondary_auth = "OPA"'),
      'settings.toml: security.secondary_auth: expected "Oso" (or no key), got "OPA"',
    ],
    [
      'Oso without [security.oso]',
      edit(MIN, 'is_mtls_enabled = false', 'is_mtls_enabled = false\nsecondary_auth = "Oso"'),
      'settings.toml: security.oso: missing table',
    ],
    ['TLS without [tls]', edit(MIN, 'is_tls_enabled = false', 'is_tls_enabled = true'), 'settings.toml: tls: missing table'],
    [
      'TLS with empty cert path',
      edit(edit(SOFT, 'is_tls_enabled = false', 'is_tls_enabled = true'), 'tls_cert_pem = "tls/server_cert.pem"', 'tls_cert_pem = ""'),
      'settings.toml: tls.tls_cert_pem: must not be empty',
    ],
    [
      'mTLS without DNS name',
      edit(
        edit(edit(SOFT, 'is_tls_enabled = false', 'is_tls_enabled = true'), 'is_mtls_enabled = false', 'is_mtls_enabled = true'),
        /^mtls_client_dns_name = .*$/m,
        '',
      ),
      'settings.toml: tls.mtls_client_dns_name: missing key',
    ],
    [
      'mTLS without CA',
      edit(
        edit(edit(SOFT, 'is_tls_enabled = false', 'is_tls_enabled = true'), 'is_mtls_enabled = false', 'is_mtls_enabled = true'),
        /^mtls_client_ca_pem = .*$/m,
        '',
      ),
      'settings.toml: tls.mtls_client_ca_pem: missing key',
    ],
    [
      'pkcs11_logger incomplete',
      edit(SOFT, /^PKCS11_LOGGER_FLAGS = .*$/m, ''),
      'settings.toml: pkcs11_logger.PKCS11_LOGGER_FLAGS: missing key',
    ],
    ['section of wrong type', 'limits = 5\n' + edit(MIN, /\[limits\][^[]*/, ''), 'settings.toml: limits: expected a table, got 5'],
    [
      'external_key_stores as a table',
      edit(MIN, '[[external_key_stores]]', '[external_key_stores]'),
      'settings.toml: external_key_stores: expected an array of tables ([[external_key_stores]]), got a table',
    ],
  ];

  it.each(cases)('%s', (_name, src, message) => {
    const err = failure(src);
    expect(err.message).toBe(message);
    expect(err.file).toBe('settings.toml');
  });

  it('TOML syntax error: one line with file, line and column, no source excerpt', () => {
    const src = edit(MIN, 'user_pin = "0000"', 'user_pin = "0000-hunter2\nunterminated');
    const err = failure(src);
    expect(err.message).toMatch(/^settings\.toml:\d+:\d+: TOML syntax error: .+$/);
    expect(err.message).not.toContain('hunter2');
    const line = src.split('\n').findIndex((l) => l.includes('hunter2')) + 1;
    expect(err.message.startsWith(`settings.toml:${line}:`)).toBe(true);
  });

  it('secret values never appear in messages, warnings, inspect, JSON or the summary', () => {
    const PIN = 'S3cr3t-PIN-value';
    const SECRET = 'ZZsecretZZ/abcdefghijklmnopqrstuvwxyz0123456789+=';
    let src = edit(CLOUD, 'user_pin = "xks_proxy:1234567"', `user_pin = "${PIN}"`);
    src = edit(
      src,
      'sigv4_secret_access_key = "CloudHsmFixtureSecretNotRealButLongEnough0123456789"',
      `sigv4_secret_access_key = "${SECRET}"`,
    );

    const ok = parseConfig(src, 'settings.toml', NO_ENV);
    expect(ok.config.pkcs11.user_pin).toBe(PIN);
    expect(ok.config.external_key_stores[0]!.sigv4_secret_access_key).toBe(SECRET);
    const views = [
      JSON.stringify(ok.config),
      inspect(ok.config, { depth: 10 }),
      JSON.stringify(redactedSummary(ok.config)),
      inspect(redactedSummary(ok.config), { depth: 10 }),
      ok.warnings.join('\n'),
    ];
    for (const v of views) {
      expect(v).not.toContain(PIN);
      expect(v).not.toContain(SECRET);
    }
    expect(JSON.stringify(redactedSummary(ok.config))).toContain('<redacted>');

    // Wrong types for secrets: the error names the key but not the value.
    const badPin = failure(edit(src, `user_pin = "${PIN}"`, `user_pin = ["${PIN}"]`));
    expect(badPin.message).toBe('settings.toml: pkcs11.user_pin: expected a string, got an array');
    const badSecret = failure(edit(src, `sigv4_secret_access_key = "${SECRET}"`, 'sigv4_secret_access_key = 123456789'));
    expect(badSecret.message).toBe('settings.toml: external_key_stores[0].sigv4_secret_access_key: expected a string, got an integer');
    // A secret that KMS would not accept: warned about by key, without the value.
    const weak = parseConfig(
      edit(src, `sigv4_secret_access_key = "${SECRET}"`, 'sigv4_secret_access_key = "short-secret"'),
      'settings.toml',
      NO_ENV,
    );
    const w = weak.warnings.find((x) => x.includes('sigv4_secret_access_key'));
    expect(w).toBeDefined();
    expect(w).not.toContain('short-secret');
  });

  it('redactedSummary keeps the useful, non-secret settings', () => {
    const { config } = parseConfig(CLOUD, 'f', NO_ENV);
    const s = redactedSummary(config) as { pkcs11: Record<string, unknown>; external_key_stores: Array<Record<string, unknown>> };
    expect(s.pkcs11['module_path']).toBe(config.pkcs11.module_path);
    expect(s.pkcs11['user_pin']).toBe('<redacted>');
    expect(s.external_key_stores[1]).toEqual({
      uri_path_prefix: '/example/uri/path/prefix',
      sigv4_access_key_id: 'BETWEEN2TENAND3TENCHARACTERS',
      sigv4_secret_access_key: '<redacted>',
      sigv4_credentials: [{ access_key_id: 'BETWEEN2TENAND3TENCHARACTERS', secret_access_key: '<redacted>' }],
      xks_key_id_set: ['bar', 'foo'],
    });
  });

  it('the typed config is usable as Config', () => {
    const c: Config = parseConfig(MIN, 'f', NO_ENV).config;
    expect(c.external_key_stores[0]!.xks_key_id_set.has('k1')).toBe(true);
  });
});

describe('rotation and quotas (our extensions)', () => {
  const LEGACY = 'sigv4_secret_access_key = "minimalFixtureSecretValue0123456789abcdefghijk"';
  const S2 = 'secondFixtureSecretValue0123456789abcdefghijkl';
  const withList = (list: string): string => edit(MIN, LEGACY, `${LEGACY}\nsigv4_credentials = [${list}]`);

  it('accepts sigv4_credentials besides the legacy pair, secrets hidden', () => {
    const { config, warnings } = parseConfig(
      withList(`{ access_key_id = "ABCDEFGHIJKLMNOPQRS2", secret_access_key = "${S2}" }`),
      'f',
      NO_ENV,
    );
    const ks = config.external_key_stores[0]!;
    expect(ks.sigv4_credentials.map((c) => c.access_key_id)).toEqual(['ABCDEFGHIJKLMNOPQRST', 'ABCDEFGHIJKLMNOPQRS2']);
    expect(ks.sigv4_credentials[1]!.secret_access_key).toBe(S2);
    expect(inspect(config, { depth: 10 })).not.toContain(S2);
    expect(JSON.stringify(redactedSummary(config))).not.toContain(S2);
    expect(warnings).toEqual([]);
  });

  it('the list alone is enough (no legacy pair)', () => {
    const src = edit(
      edit(MIN, 'sigv4_access_key_id = "ABCDEFGHIJKLMNOPQRST"\n', ''),
      LEGACY,
      `sigv4_credentials = [{ access_key_id = "ABCDEFGHIJKLMNOPQRS2", secret_access_key = "${S2}" }]`,
    );
    const ks = parseConfig(src, 'f', NO_ENV).config.external_key_stores[0]!;
    expect(ks.sigv4_access_key_id).toBe('ABCDEFGHIJKLMNOPQRS2');
    expect(ks.sigv4_credentials).toHaveLength(1);
  });

  it('an access key id used by two keystores is an error; ids and secrets outside the spec rules are warned about', () => {
    const two = `${MIN}\n[[external_key_stores]]\nuri_path_prefix = "/second/prefix"\nsigv4_access_key_id = "ABCDEFGHIJKLMNOPQRST"\nsigv4_secret_access_key = "${S2}"\nxks_key_id_set = []\n`;
    expect(failure(two).message).toBe(
      'settings.toml: external_key_stores[1].sigv4_credentials: access key id "ABCDEFGHIJKLMNOPQRST" is also used by external_key_stores[0]',
    );
    const weak = parseConfig(withList('{ access_key_id = "lower-case-id", secret_access_key = "short" }'), 'f', NO_ENV);
    expect(weak.warnings.some((w) => w.includes('sigv4_credentials[0].access_key_id'))).toBe(true);
    expect(weak.warnings.some((w) => w.includes('sigv4_credentials[0].secret_access_key'))).toBe(true);
    expect(weak.warnings.join('\n')).not.toContain('short"');
    expect(failure(withList(`{ access_key_id = "ABCDEFGHIJKLMNOPQRST", secret_access_key = "${S2}" }`)).message).toMatch(
      /sigv4_credentials\[0\]\.access_key_id: access key id "ABCDEFGHIJKLMNOPQRST" is listed twice with different secrets/,
    );
    expect(failure(withList('{ access_key_id = "ABCDEFGHIJKLMNOPQRS2" }')).message).toBe(
      'settings.toml: external_key_stores[0].sigv4_credentials[0].secret_access_key: missing key',
    );
  });

  it('requests_per_second and burst (default = rate)', () => {
    const q = (extra: string) => parseConfig(edit(MIN, LEGACY, `${LEGACY}\n${extra}`), 'f', NO_ENV).config.external_key_stores[0]!;
    expect(q('requests_per_second = 1800')).toMatchObject({ requests_per_second: 1800, burst: 1800 });
    expect(q('requests_per_second = 100\nburst = 300')).toMatchObject({ requests_per_second: 100, burst: 300 });
    expect(q('').requests_per_second).toBeUndefined();
    expect(failure(edit(MIN, LEGACY, `${LEGACY}\nrequests_per_second = 0`)).message).toBe(
      'settings.toml: external_key_stores[0].requests_per_second: expected a positive integer, got 0',
    );
  });
});

describe('deadlines and the deep health check (our extensions)', () => {
  const withPkcs11 = (line: string): string => edit(MIN, '[pkcs11]\n', `[pkcs11]\n${line}\n`);
  const withHealth = (body: string): string => `${MIN}\n[health_check]\n${body}\n`;

  it('operation_timeout_milli: default 100, 0 disables (warned), >= 250 warned, range checked', () => {
    expect(parseConfig(MIN, 'f', NO_ENV).config.pkcs11.operation_timeout_milli).toBe(100);
    expect(parseConfig(withPkcs11('operation_timeout_milli = 80'), 'f', NO_ENV).config.pkcs11.operation_timeout_milli).toBe(80);
    const off = parseConfig(withPkcs11('operation_timeout_milli = 0'), 'f', NO_ENV);
    expect(off.config.pkcs11.operation_timeout_milli).toBe(0);
    expect(off.warnings.some((w) => w.includes('pkcs11.operation_timeout_milli: 0'))).toBe(true);
    expect(parseConfig(withPkcs11('operation_timeout_milli = 300'), 'f', NO_ENV).warnings.some((w) => w.includes('250 ms'))).toBe(true);
    expect(failure(withPkcs11('operation_timeout_milli = -1')).message).toBe(
      'settings.toml: pkcs11.operation_timeout_milli: expected an integer in 0..60000 (0 = no deadline), got -1',
    );
  });

  it('session_key_copies: default true; session_key_check_milli: default 1000, 1..3600000', () => {
    const d = parseConfig(MIN, 'f', NO_ENV).config.pkcs11;
    expect(d.session_key_copies).toBe(true);
    expect(d.session_key_check_milli).toBe(1000);
    expect(parseConfig(withPkcs11('session_key_copies = false'), 'f', NO_ENV).config.pkcs11.session_key_copies).toBe(false);
    expect(parseConfig(withPkcs11('session_key_check_milli = 250'), 'f', NO_ENV).config.pkcs11.session_key_check_milli).toBe(250);
    expect(failure(withPkcs11('session_key_copies = "yes"')).message).toBe(
      'settings.toml: pkcs11.session_key_copies: expected a boolean (true or false), got "yes"',
    );
    expect(failure(withPkcs11('session_key_check_milli = 0')).message).toBe(
      'settings.toml: pkcs11.session_key_check_milli: expected an integer in 1..3600000, got 0',
    );
  });

  it('[health_check]: absent by default; key_id required; interval_secs 1..60 (default 10); threshold default 100', () => {
    expect(parseConfig(MIN, 'f', NO_ENV).config.health_check).toBeUndefined();
    expect(parseConfig(withHealth('key_id = "hc-key"'), 'f', NO_ENV).config.health_check).toEqual({
      key_id: 'hc-key',
      interval_secs: 10,
      degraded_latency_milli: 100,
    });
    expect(
      parseConfig(withHealth('key_id = "hc"\ninterval_secs = 60\ndegraded_latency_milli = 20'), 'f', NO_ENV).config.health_check,
    ).toEqual({
      key_id: 'hc',
      interval_secs: 60,
      degraded_latency_milli: 20,
    });
    expect(failure(withHealth('interval_secs = 5')).message).toBe('settings.toml: health_check.key_id: missing key');
    expect(failure(withHealth('key_id = "hc"\ninterval_secs = 61')).message).toMatch(
      /^settings\.toml: health_check\.interval_secs: expected an integer in 1\.\.60/,
    );
    expect(failure(withHealth('key_id = "bad key"')).message).toMatch(/^settings\.toml: health_check\.key_id: key ids are/);
  });

  it('[health_check] key_id also served to KMS is warned about', () => {
    const { warnings } = parseConfig(withHealth('key_id = "k1"'), 'f', NO_ENV);
    expect(warnings.some((w) => w.includes('health_check.key_id') && w.includes('xks_key_id_set'))).toBe(true);
    expect(parseConfig(withHealth('key_id = "other"'), 'f', NO_ENV).warnings.some((w) => w.includes('health_check'))).toBe(false);
  });
});

/** Warnings of a file that must load. */
function warningsOf(src: string): string[] {
  return parseConfig(src, 'settings.toml', NO_ENV).warnings;
}

describe('what the Rust proxy accepts starts here too (issue 11, A.1-A.3)', () => {
  const withPrefix = (p: string): string => edit(MIN, 'uri_path_prefix = ""', `uri_path_prefix = ${JSON.stringify(p)}`);

  it('uri_path_prefix: short, long, odd characters load; what KMS cannot send is a warning naming it', () => {
    const short = parseConfig(withPrefix('/xyz'), 'settings.toml', NO_ENV);
    expect(short.config.external_key_stores[0]!.uri_path_prefix).toBe('/xyz');
    expect(short.warnings.filter((w) => w.includes('uri_path_prefix'))).toEqual([]);
    expect(warningsOf(withPrefix('/a'))).toEqual([]);
    // 116 + "/kms/xks/v1" = 127 characters: within KMS's 128.
    expect(warningsOf(withPrefix(`/${'a'.repeat(116)}`))).toEqual([]);
    expect(warningsOf(withPrefix(`/${'a'.repeat(117)}`))).toEqual([
      'settings.toml: external_key_stores[0].uri_path_prefix: KMS allows at most 128 characters in the URI path ' +
        `"/${'a'.repeat(59)}...", this one has 129`,
    ]);
    expect(warningsOf(withPrefix('/example/pre.fix'))).toEqual([
      'settings.toml: external_key_stores[0].uri_path_prefix: "/example/pre.fix" has characters KMS does not allow in a URI path (only a-z A-Z 0-9 / - _)',
    ]);
    // A ":" or "*" inside a segment is a literal character for the router.
    expect(parseConfig(withPrefix('/a:b/c*'), 'settings.toml', NO_ENV).config.external_key_stores[0]!.uri_path_prefix).toBe('/a:b/c*');
  });

  it('xks_key_id_set: an id KMS can never send is a warning naming it, and the file loads', () => {
    const long = 'k'.repeat(129);
    const { config, warnings } = parseConfig(
      edit(MIN, 'xks_key_id_set = ["k1"]', `xks_key_id_set = ["k1", "bad/id", "", "${long}"]`),
      'settings.toml',
      NO_ENV,
    );
    expect([...config.external_key_stores[0]!.xks_key_id_set]).toEqual(['k1', 'bad/id', '', long]);
    expect(warnings).toEqual([
      'settings.toml: external_key_stores[0].xks_key_id_set[1]: key id "bad/id" can never be used: KMS key ids are 1..128 characters of A-Z a-z 0-9 - . _',
      'settings.toml: external_key_stores[0].xks_key_id_set[2]: key id "" can never be used: KMS key ids are 1..128 characters of A-Z a-z 0-9 - . _',
      `settings.toml: external_key_stores[0].xks_key_id_set[3]: key id "${'k'.repeat(60)}..." can never be used: KMS key ids are 1..128 characters of A-Z a-z 0-9 - . _`,
    ]);
  });

  it('empty strings and zeros serde accepts: empty region, no key store, empty log directory, zero limits', () => {
    expect(warningsOf(edit(MIN, 'region = "eu-west-1"', 'region = ""'))).toEqual([
      'settings.toml: server.region: empty: no signed request can verify (KMS signs with its AWS region)',
    ]);
    const none = parseConfig(
      `external_key_stores = []\n${edit(MIN, /\[\[external_key_stores\]\][\s\S]*?(?=\[pkcs11\])/, '')}`,
      'settings.toml',
      NO_ENV,
    );
    expect(none.config.external_key_stores).toEqual([]);
    expect(none.warnings).toEqual([
      'settings.toml: external_key_stores: empty: no key store, every XKS request is answered 404 (the Rust proxy starts with it too)',
    ]);
    const fileWriter = edit(
      MIN,
      'is_file_writer_enabled = false',
      'is_file_writer_enabled = true\ndirectory = ""\nfile_prefix = "xks-proxy.log"',
    );
    expect(warningsOf(fileWriter)).toEqual(['settings.toml: tracing.directory: empty: log files are written to the working directory']);
    const zero = parseConfig(edit(MIN, 'max_aad_in_base64 = 16384', 'max_aad_in_base64 = 0'), 'settings.toml', NO_ENV);
    expect(zero.config.limits.max_aad_in_base64).toBe(0);
    expect(zero.warnings).toEqual(['settings.toml: limits.max_aad_in_base64: 0 is below 10924 (8,192 bytes of AAD, which KMS may send)']);
  });

  it('a session pool or pool wait beyond what the engine holds is capped with a warning (Rust takes any usize/u64)', () => {
    const big = edit(
      edit(MIN, 'session_pool_max_size = 4', 'session_pool_max_size = 50000'),
      'session_pool_timeout_milli = 0',
      'session_pool_timeout_milli = 3000000000',
    );
    const { config, warnings } = parseConfig(big, 'settings.toml', NO_ENV);
    expect(config.pkcs11.session_pool_max_size).toBe(4096);
    expect(config.pkcs11.session_pool_timeout_milli).toBe(2147483647);
    expect(warnings).toEqual([
      'settings.toml: pkcs11.session_pool_max_size: 50000 is above 4096, the most this proxy supports: 4096 is used',
      'settings.toml: pkcs11.session_pool_timeout_milli: 3000000000 is above 2147483647, the most this proxy supports: 2147483647 is used',
    ]);
  });

  it('a bad rotation_kind with the file writer off is ignored (the Rust proxy never parses it then)', () => {
    expect(warningsOf(edit(MIN, 'is_file_writer_enabled = false', 'is_file_writer_enabled = false\nrotation_kind = "WEEKLY"'))).toEqual([
      'settings.toml: tracing.rotation_kind: expected one of MINUTELY, HOURLY, DAILY, NEVER, got "WEEKLY" (ignored: the file writer is disabled)',
    ]);
  });

  it('a bad level with no writer enabled is ignored (the Rust proxy never reads it then)', () => {
    const off = edit(MIN, 'is_stdout_writer_enabled = true', 'is_stdout_writer_enabled = false\nlevel = "LOUD"');
    expect(warningsOf(off)).toEqual([
      'settings.toml: tracing.level: expected one of TRACE, DEBUG, INFO, WARN, ERROR, got "LOUD" (ignored: no writer is enabled)',
      'settings.toml: tracing: both the stdout and the file writer are disabled: nothing will be logged',
    ]);
  });

  it('[tracing] file_mode: default 0640, "0644" and "644" accepted, shown in the summary', () => {
    expect(parseConfig(MIN, 'settings.toml', NO_ENV).config.tracing.file_mode).toBe(0o640);
    const open = parseConfig(
      edit(MIN, 'is_file_writer_enabled = false', 'is_file_writer_enabled = false\nfile_mode = "0644"'),
      'settings.toml',
      NO_ENV,
    );
    expect(open.config.tracing.file_mode).toBe(0o644);
    expect(open.warnings).toEqual([]);
    expect((redactedSummary(open.config) as { tracing: { file_mode: string } }).tracing.file_mode).toBe('0644');
    expect(
      parseConfig(edit(MIN, 'is_file_writer_enabled = false', 'is_file_writer_enabled = false\nfile_mode = "600"'), 'settings.toml', NO_ENV)
        .config.tracing.file_mode,
    ).toBe(0o600);
  });
});

/**
 * Every key of the Rust proxy's settings.rs (xks-axum/src/settings.rs), on the guide's file: what
 * removing it does there (serde: a non-Option field is required; main.rs `expect`s some Options)
 * and here. Keys whose rows differ are the README's chosen differences.
 */
describe("every key of the Rust settings.rs, on the guide's file", () => {
  const GUIDE_TEXT = text('settings_vault_guide.toml');
  const without = (key: string): string => {
    const re = new RegExp(`^${key} = .*\\n`, 'm');
    return edit(GUIDE_TEXT, re, '');
  };
  const loads = (src: string): Config => parseConfig(src, 'settings.toml', NO_ENV).config;

  it('the guide file loads with no warning, as the Rust proxy took it', () => {
    const { config, warnings } = parseConfig(GUIDE_TEXT, 'settings.toml', NO_ENV);
    expect(warnings).toEqual([]);
    expect(config.external_key_stores.map((s) => [s.uri_path_prefix, [...s.xks_key_id_set]])).toEqual([['/xyz', ['abc123']]]);
    expect(config.server.port_http_ping).toBe(80);
    expect(config.pkcs11).toMatchObject({ session_pool_max_size: 30, session_pool_timeout_milli: 0, context_read_timeout_milli: 100 });
    expect(config.pkcs11.user_pin).toBe('');
  });

  // Required in Rust (a non-Option field): required here.
  const required = [
    ['ip', 'server.ip'],
    ['port', 'server.port'],
    ['region', 'server.region'],
    ['service', 'server.service'],
    ['is_stdout_writer_enabled', 'tracing.is_stdout_writer_enabled'],
    ['is_file_writer_enabled', 'tracing.is_file_writer_enabled'],
    ['is_sigv4_auth_enabled', 'security.is_sigv4_auth_enabled'],
    ['is_tls_enabled', 'security.is_tls_enabled'],
    ['is_mtls_enabled', 'security.is_mtls_enabled'],
    ['tls_cert_pem', 'tls.tls_cert_pem'],
    ['tls_key_pem', 'tls.tls_key_pem'],
    ['uri_path_prefix', 'external_key_stores[0].uri_path_prefix'],
    ['sigv4_access_key_id', 'external_key_stores[0].sigv4_access_key_id'],
    ['sigv4_secret_access_key', 'external_key_stores[0].sigv4_secret_access_key'],
    ['xks_key_id_set', 'external_key_stores[0].xks_key_id_set'],
    ['session_pool_max_size', 'pkcs11.session_pool_max_size'],
    ['session_pool_timeout_milli', 'pkcs11.session_pool_timeout_milli'],
    ['user_pin', 'pkcs11.user_pin'],
    ['session_eager_close', 'pkcs11.session_eager_close'],
    ['PKCS11_HSM_MODULE', 'pkcs11.PKCS11_HSM_MODULE'],
    ['context_read_timeout_milli', 'pkcs11.context_read_timeout_milli'],
    ['max_plaintext_in_base64', 'limits.max_plaintext_in_base64'],
    ['max_aad_in_base64', 'limits.max_aad_in_base64'],
    ['can_generate_iv', 'hsm_capabilities.can_generate_iv'],
    ['is_zero_iv_required', 'hsm_capabilities.is_zero_iv_required'],
  ] as const;
  it.each(required)('%s is required in both', (key, dotted) => {
    expect(failure(without(key)).message).toBe(`settings.toml: ${dotted}: missing key`);
  });

  it('Option fields in Rust are optional here, with the same defaults', () => {
    expect(loads(without('mtls_client_ca_pem')).tls?.mtls_client_ca_pem).toBeUndefined();
    expect(loads(without('mtls_client_dns_name')).tls?.mtls_client_dns_name).toBeUndefined();
    const noKa = loads(edit(GUIDE_TEXT, /^tcp_keepalive_\w+ = .*\n/gm, ''));
    expect(noKa.server.tcp_keepalive).toEqual({});
    const noTls = loads(edit(GUIDE_TEXT, /\[tls\][\s\S]*?(?=\[\[external_key_stores\]\])/, ''));
    expect(noTls.tls).toBeUndefined();
    expect(loads(GUIDE_TEXT).server.ciphertext_metadata).toBeUndefined();
    expect(loads(GUIDE_TEXT).pkcs11_logger).toBeUndefined();
    expect(loads(GUIDE_TEXT).security.secondary_auth).toBeUndefined();
  });

  it('what main.rs expects of an Option (level, rotation_kind; the [server.tcp_keepalive] table) has a default here', () => {
    // Rust: expect("Missing tracing level configuration") / expect("Missing log file rotation kind"): panics.
    expect(loads(without('level')).tracing.level).toBe('INFO');
    expect(loads(without('rotation_kind')).tracing.rotation_kind).toBe('HOURLY');
    // Rust: `tcp_keepalive: TcpKeepaliveConfig` is not an Option, so the table is required there.
    expect(loads(edit(GUIDE_TEXT, /\[server\.tcp_keepalive\]\n(tcp_keepalive_\w+ = .*\n)+/, '')).server.tcp_keepalive).toEqual({});
    // Required only while the file writer is on, as there.
    expect(failure(without('directory')).message).toBe('settings.toml: tracing.directory: missing key');
    expect(failure(without('file_prefix')).message).toBe('settings.toml: tracing.file_prefix: missing key');
  });

  it('environment: PKCS11_HSM_MODULE replaces the file value; empty counts as unset (Rust would use "")', () => {
    expect(parseConfig(GUIDE_TEXT, 'f', { PKCS11_HSM_MODULE: '/opt/hsm.so' }).config.pkcs11.module_path).toBe('/opt/hsm.so');
    expect(parseConfig(GUIDE_TEXT, 'f', { PKCS11_HSM_MODULE: '' }).config.pkcs11.module_path).toBe('/usr/local/lib/libvault-pkcs11.so');
    expect(resolveSettingsPath({ XKS_PROXY_SETTINGS_TOML: 'a/b.toml' }, '/srv')).toBe('/srv/a/b.toml');
  });
});
