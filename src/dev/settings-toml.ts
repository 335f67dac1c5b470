/**
 * Writes a settings.toml in the Rust xks-proxy's format, for the tooling that makes one:
 * `init-dev`, the tests and the bench. One writer, so every generated file has the same
 * shape and the same keys; the proxy reads it back through src/config.ts like any file.
 */

export interface KeyStoreSettings {
  prefix: string;
  accessKeyId: string;
  secretAccessKey: string;
  keys: readonly string[];
  /** More credentials (`sigv4_credentials`, rotation). */
  credentials?: readonly { accessKeyId: string; secretAccessKey: string }[] | undefined;
  requestsPerSecond?: number | undefined;
  burst?: number | undefined;
}

export interface SettingsSpec {
  port: number;
  /** Default: the same as `port` (one listener). */
  pingPort?: number | undefined;
  /** [server] workers; written only when given. */
  workers?: number | undefined;
  region: string;
  service: string;
  ciphertextMetadataB64?: string | undefined;
  tracing: { stdout: boolean; level: string; directory: string; rotation: string };
  sigv4?: boolean | undefined;
  tls?: { certFile: string; keyFile: string; mtls?: { caFile: string; dnsName: string } | undefined } | undefined;
  osoPolicy?: string | undefined;
  stores: readonly KeyStoreSettings[];
  pkcs11: {
    pin: string;
    modulePath: string;
    poolMaxSize: number;
    poolTimeoutMs: number;
    eagerClose?: boolean | undefined;
    workerThreads?: number | undefined;
    operationTimeoutMs?: number | undefined;
    keyCopies?: boolean | undefined;
    keyCheckMs?: number | undefined;
  };
  maxPlaintextB64?: number | undefined;
  maxAadB64?: number | undefined;
  healthCheck?: { keyId: string; intervalSecs: number; degradedLatencyMs?: number | undefined } | undefined;
  /** [audit]; written only when given (unset keys take their defaults). */
  audit?:
    | {
        directory: string;
        hmacKeyId: string;
        filePrefix?: string | undefined;
        rotation?: string | undefined;
        checkpointEvery?: number | undefined;
        checkpointSecs?: number | undefined;
        durability?: string | undefined;
        onFailure?: string | undefined;
        stdout?: boolean | undefined;
      }
    | undefined;
  /** Comment lines put at the top of the file. */
  header?: readonly string[] | undefined;
}

/** A TOML basic string (JSON's escapes are TOML's). */
export function tomlString(s: string): string {
  return JSON.stringify(s);
}

function line(key: string, value: string | number | boolean | undefined): string {
  return value === undefined ? '' : `${key} = ${typeof value === 'string' ? tomlString(value) : String(value)}\n`;
}

function keyStore(k: KeyStoreSettings): string {
  const creds = k.credentials?.map(
    (c) => `{ access_key_id = ${tomlString(c.accessKeyId)}, secret_access_key = ${tomlString(c.secretAccessKey)} }`,
  );
  return (
    '[[external_key_stores]]\n' +
    line('uri_path_prefix', k.prefix) +
    line('sigv4_access_key_id', k.accessKeyId) +
    line('sigv4_secret_access_key', k.secretAccessKey) +
    `xks_key_id_set = [${k.keys.map(tomlString).join(', ')}]\n` +
    (creds ? `sigv4_credentials = [${creds.join(', ')}]\n` : '') +
    line('requests_per_second', k.requestsPerSecond) +
    line('burst', k.burst) +
    '\n'
  );
}

export function settingsToml(s: SettingsSpec): string {
  const header = s.header ? `${s.header.map((h) => `# ${h}`).join('\n')}\n` : '';
  const tls = s.tls
    ? '[tls]\n' +
      line('tls_cert_pem', s.tls.certFile) +
      line('tls_key_pem', s.tls.keyFile) +
      line('mtls_client_ca_pem', s.tls.mtls?.caFile) +
      line('mtls_client_dns_name', s.tls.mtls?.dnsName) +
      '\n'
    : '';
  const health = s.healthCheck
    ? '[health_check]\n' +
      line('key_id', s.healthCheck.keyId) +
      line('interval_secs', s.healthCheck.intervalSecs) +
      line('degraded_latency_milli', s.healthCheck.degradedLatencyMs)
    : '';
  const a = s.audit;
  const audit = a
    ? '[audit]\n' +
      line('directory', a.directory) +
      line('file_prefix', a.filePrefix) +
      line('rotation_kind', a.rotation) +
      line('hmac_key_id', a.hmacKeyId) +
      line('checkpoint_every', a.checkpointEvery) +
      line('checkpoint_secs', a.checkpointSecs) +
      line('durability', a.durability) +
      line('on_failure', a.onFailure) +
      line('stdout', a.stdout)
    : '';
  return `${header}[server]
ip = "127.0.0.1"
${line('port', s.port)}${line('port_http_ping', s.pingPort ?? s.port)}${line('region', s.region)}${line('service', s.service)}${line('workers', s.workers)}${line('ciphertext_metadata_b64', s.ciphertextMetadataB64)}
[server.tcp_keepalive]
tcp_keepalive_secs = 60
tcp_keepalive_retries = 3
tcp_keepalive_interval_secs = 1

[tracing]
${line('is_stdout_writer_enabled', s.tracing.stdout)}is_file_writer_enabled = false
${line('level', s.tracing.level)}${line('directory', s.tracing.directory)}file_prefix = "xks-proxy.log"
${line('rotation_kind', s.tracing.rotation)}
[security]
${line('is_sigv4_auth_enabled', s.sigv4 ?? true)}${line('is_tls_enabled', s.tls !== undefined)}${line('is_mtls_enabled', s.tls?.mtls !== undefined)}${
  s.osoPolicy !== undefined ? `secondary_auth = "Oso"\n\n[security.oso]\n${line('polar_file_path', s.osoPolicy)}` : ''
}
${tls}${s.stores.map(keyStore).join('')}[pkcs11]
${line('session_pool_max_size', s.pkcs11.poolMaxSize)}${line('session_pool_timeout_milli', s.pkcs11.poolTimeoutMs)}${line(
  'session_eager_close',
  s.pkcs11.eagerClose ?? false,
)}${line('user_pin', s.pkcs11.pin)}${line('PKCS11_HSM_MODULE', s.pkcs11.modulePath)}context_read_timeout_milli = 100
${line('worker_threads', s.pkcs11.workerThreads)}${line('operation_timeout_milli', s.pkcs11.operationTimeoutMs)}${line('session_key_copies', s.pkcs11.keyCopies)}${line('session_key_check_milli', s.pkcs11.keyCheckMs)}
[limits]
${line('max_plaintext_in_base64', s.maxPlaintextB64 ?? 8192)}${line('max_aad_in_base64', s.maxAadB64 ?? 16384)}
[hsm_capabilities]
can_generate_iv = false
is_zero_iv_required = false
${health ? `\n${health}` : ''}${audit ? `\n${audit}` : ''}`;
}
