/**
 * The `xks-proxy` command: serve (default), check-config, init-dev, --help, --version.
 */
import { ConfigError, DEFAULT_LOG_FILE_MODE, loadConfig, redactedSummary, resolveSettingsPath, type Config } from './config.js';
import { initDev } from './dev/init-dev.js';
import type { Logger } from './log.js';
import { startProxy } from './main.js';
import { VERSION } from './version.js';

const HELP = `xks-proxy v${VERSION}: AWS KMS External Key Store proxy (drop-in for the Rust xks-proxy)

Usage:
  xks-proxy                      serve; settings from $XKS_PROXY_SETTINGS_TOML,
                                 else from configuration/bootstrap.toml
  xks-proxy check-config [FILE]  validate a settings.toml and print a summary without secrets
  xks-proxy kms-config --prefix P [--access-key-id ID] [FILE]
                                 print the KMS console's proxy configuration JSON (XksProxyUriPath,
                                 AccessKeyId, RawSecretAccessKey) of the key store with prefix P
  xks-proxy init-dev [DIR]       make a SoftHSM2 token with demo keys and a settings.toml in DIR
                                 (default ./dev-hsm); for trials only
  xks-proxy --help | --version
`;

export async function main(argv: string[]): Promise<number | undefined> {
  const [command, ...rest] = argv;
  switch (command) {
    case undefined:
    case 'serve':
      return serve();
    case '--help':
    case '-h':
    case 'help':
      process.stdout.write(HELP);
      return 0;
    case '--version':
    case '-V':
      process.stdout.write(`${VERSION}\n`);
      return 0;
    case 'check-config':
      return checkConfig(rest[0]);
    case 'kms-config':
      return kmsConfig(rest);
    case 'init-dev':
      return runInitDev(rest[0] ?? 'dev-hsm');
    default:
      process.stderr.write(`xks-proxy: unknown command "${command}"\n\n${HELP}`);
      return 2;
  }
}

function checkConfig(file: string | undefined): number {
  try {
    const loaded = loadConfig(file ?? resolveSettingsPath());
    for (const w of loaded.warnings) process.stderr.write(`warning: ${w}\n`);
    process.stdout.write(`${JSON.stringify(redactedSummary(loaded.config), null, 2)}\n`);
    return 0;
  } catch (e) {
    process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  }
}

/** `kms-config --prefix P [--access-key-id ID] [FILE]`: the spec's console configuration file. */
function kmsConfig(args: string[]): number {
  let prefix: string | undefined;
  let accessKeyId: string | undefined;
  let file: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--prefix') prefix = args[++i];
    else if (a === '--access-key-id') accessKeyId = args[++i];
    else if (a.startsWith('--')) {
      process.stderr.write(`xks-proxy kms-config: unknown option ${a}\n`);
      return 2;
    } else file = a;
  }
  if (prefix === undefined) {
    process.stderr.write('xks-proxy kms-config: --prefix is required (use --prefix "" for the empty prefix)\n');
    return 2;
  }
  try {
    const { config } = loadConfig(file ?? resolveSettingsPath());
    const norm = (p: string): string => (p === '' || p.startsWith('/') ? p : `/${p}`).replace(/\/+$/, '');
    const store = config.external_key_stores.find((s) => norm(s.uri_path_prefix) === norm(prefix!));
    if (!store) {
      process.stderr.write(`xks-proxy kms-config: no [[external_key_stores]] with uri_path_prefix "${prefix}"\n`);
      return 1;
    }
    const credentials = store.sigv4_credentials;
    const credential = accessKeyId === undefined ? credentials[0] : credentials.find((c) => c.access_key_id === accessKeyId);
    if (!credential) {
      process.stderr.write(`xks-proxy kms-config: the key store "${prefix}" has no ${accessKeyId === undefined ? '' : 'such '}credential\n`);
      return 1;
    }
    const out = {
      XksProxyUriPath: `${store.uri_path_prefix}/kms/xks/v1`,
      XksProxyAuthenticationCredential: { AccessKeyId: credential.access_key_id, RawSecretAccessKey: credential.secret_access_key },
    };
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    return 0;
  } catch (e) {
    process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  }
}

async function runInitDev(dir: string): Promise<number> {
  const env = await initDev(dir);
  const base = `http://127.0.0.1:${env.port}/example/uri/path/prefix/kms/xks/v1`;
  process.stdout.write(`Made a SoftHSM2 token with keys foo, encrypt_only_key, decrypt_only_key, impotent_key in ${env.dir}

Start the proxy:
  SOFTHSM2_CONF=${env.softhsmConf} XKS_PROXY_SETTINGS_TOML=${env.settingsPath} npx xks-proxy

Credentials of the key store (also in ${env.settingsPath}):
  URI path:          /example/uri/path/prefix/kms/xks/v1
  access key id:     ${env.accessKeyId}
  secret access key: ${env.secretAccessKey}

Try it:
  curl --aws-sigv4 "aws:amz:us-east-1:kms-xks-proxy" --user '${env.accessKeyId}:${env.secretAccessKey}' \\
    -H 'content-type: application/json' \\
    -d '{"requestMetadata":{"awsPrincipalArn":"arn:aws:iam::123456789012:user/Alice","kmsKeyArn":"arn:aws:kms:us-east-1:123456789012:key/demo","kmsOperation":"Encrypt","kmsRequestId":"demo-1"},"plaintext":"SGVsbG8gV29ybGQh","encryptionAlgorithm":"AES_GCM"}' \\
    ${base}/keys/foo/encrypt
`);
  return 0;
}

/**
 * The start-up facts the Rust proxy logs ("Tracing level=...", "Starting service=... region=...",
 * "is_sigv4_enabled=...", "Ciphertext Metadata ...", "TCP Keepalive ...", ".../ping available for
 * health check"), as logfmt lines of ours: operators' parsers find the same facts.
 */
function logStartFacts(log: Logger, config: Config, pingPort: number): void {
  const t = config.tracing;
  log.info('tracing', {
    level: t.level,
    is_stdout_writer_enabled: t.is_stdout_writer_enabled,
    is_file_writer_enabled: t.is_file_writer_enabled,
    rotation_kind: t.is_file_writer_enabled ? t.rotation_kind : undefined,
    file_mode: t.is_file_writer_enabled ? `0${(t.file_mode ?? DEFAULT_LOG_FILE_MODE).toString(8)}` : undefined,
  });
  const s = config.server;
  const sec = config.security;
  const ka = s.tcp_keepalive;
  log.info('settings', {
    service: s.service,
    region: s.region,
    is_sigv4_enabled: sec.is_sigv4_auth_enabled,
    is_tls_enabled: sec.is_tls_enabled,
    is_mtls_enabled: sec.is_mtls_enabled,
    secondary_auth: sec.secondary_auth ?? 'none',
    ciphertext_metadata: s.ciphertext_metadata === undefined ? 'not configured' : `${s.ciphertext_metadata.length} bytes`,
    tcp_keepalive_secs: ka.tcp_keepalive_secs ?? 'off',
    tcp_keepalive_interval_secs: ka.tcp_keepalive_interval_secs,
    tcp_keepalive_retries: ka.tcp_keepalive_retries,
  });
  if (pingPort !== s.port) log.info('health check available', { url: `http://${hostPort(s.ip, pingPort)}/ping` });
}

function hostPort(ip: string, port: number): string {
  return ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
}

async function serve(): Promise<number | undefined> {
  let loaded;
  try {
    loaded = loadConfig(resolveSettingsPath());
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`xks-proxy: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
  const proxy = await startProxy(loaded);
  logStartFacts(proxy.log, loaded.config, proxy.pingPort);
  const stop = (signal: string): void => {
    proxy.log.info('stopping', { signal });
    proxy.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
  // SIGHUP: re-read settings.toml and apply keystores, credentials, key ids, quotas and the Oso policy.
  process.on('SIGHUP', () => {
    proxy.log.info('reloading the configuration', { signal: 'SIGHUP' });
    void proxy.reload();
  });
  return undefined;
}
