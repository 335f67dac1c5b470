/**
 * The `xks-proxy` command: serve (default), check-config, kms-config, init-dev, audit, help, --version.
 * Every command answers `--help` / `-h` with its own usage (exit 0).
 */
import { AUDIT_USAGE, auditCommand } from './audit/read/command.js';
import { ConfigError, loadConfig, redactedSummary, resolveSettingsPath } from './config.js';
import { initDev } from './dev/init-dev.js';
import { DOCTOR_USAGE, parseDoctorArgs } from './doctor/command.js';
import { diagnoseLocal } from './doctor/local.js';
import { probeRemote } from './doctor/remote.js';
import { exitCode, toJson, toTable } from './doctor/report.js';
import { createCustomKeyStoreCommand, endpointProblem, proxyConfigurationFile, type KmsConfigOptions } from './kms-config.js';
import { startProxy } from './main.js';
import { VERSION } from './version.js';

const SETTINGS_FROM = 'settings from $XKS_PROXY_SETTINGS_TOML, else from configuration/bootstrap.toml';
const FILE_FROM = '$XKS_PROXY_SETTINGS_TOML, else the one configuration/bootstrap.toml names';

const USAGE = {
  serve: `Usage: xks-proxy [serve]

Serve the XKS API; ${SETTINGS_FROM}.
$PKCS11_HSM_MODULE, when set and not empty, replaces [pkcs11] PKCS11_HSM_MODULE.
SIGTERM/SIGINT stop gracefully; SIGHUP re-reads the key stores, credentials, key ids,
quotas and the Oso policy.
`,
  'check-config': `Usage: xks-proxy check-config [FILE]

Validate a settings.toml and print a summary without secrets; warnings go to stderr.
Exit 0 when it loads, 1 naming the failing key.
The file: FILE, else ${FILE_FROM}.
`,
  'kms-config': `Usage: xks-proxy kms-config --prefix P [options] [FILE]

Print what AWS KMS needs for the key store with uri_path_prefix P (use --prefix "" for the
empty prefix): the console's proxy configuration file (JSON) and the
"aws kms create-custom-key-store" command.
The file: FILE, else ${FILE_FROM}.

Options:
  --prefix P                  the key store (required)
  --access-key-id ID          which of its credentials (default: the first)
  --endpoint URL              --xks-proxy-uri-endpoint, e.g. https://xks.example.com
                              (default: a placeholder)
  --name NAME                 --custom-key-store-name (default: a placeholder)
  --vpc-endpoint-service NAME connect through this VPC endpoint service (VPC_ENDPOINT_SERVICE)
                              instead of PUBLIC_ENDPOINT
  --show-secret               print the secret access key (default: a placeholder)
  --json                      print the JSON file only
`,
  doctor: DOCTOR_USAGE,
  'init-dev': `Usage: xks-proxy init-dev [DIR]

Make a SoftHSM2 token with demo keys (foo, encrypt_only_key, decrypt_only_key, impotent_key)
and a matching settings.toml in DIR (default ./dev-hsm). For trials only.
`,
  audit: AUDIT_USAGE,
} as const;

type Command = keyof typeof USAGE;

const HELP = `xks-proxy v${VERSION}: AWS KMS External Key Store proxy (drop-in for the Rust xks-proxy)

Usage:
  xks-proxy [serve]              serve; settings from $XKS_PROXY_SETTINGS_TOML,
                                 else from configuration/bootstrap.toml
  xks-proxy check-config [FILE]  validate a settings.toml and print a summary without secrets
  xks-proxy kms-config --prefix P [--endpoint URL] [--show-secret] [...] [FILE]
                                 print the KMS console's proxy configuration JSON and the
                                 "aws kms create-custom-key-store" command of the key store P
  xks-proxy doctor [--json] [FILE]
                                 check what KMS would reject: settings, TLS, HSM, keys, clock
  xks-proxy doctor --endpoint URL --access-key-id ID --secret-file F [--key-id K]...
                                 probe a running proxy as KMS would
  xks-proxy init-dev [DIR]       make a SoftHSM2 token with demo keys and a settings.toml in DIR
                                 (default ./dev-hsm); for trials only
  xks-proxy audit verify|list|reconcile [...]
                                 check the audit trail (chain, HSM HMACs), list key uses,
                                 match them to CloudTrail's KMS events
  xks-proxy help [COMMAND] | --help | --version
  xks-proxy COMMAND --help       the usage of COMMAND
`;

const isHelp = (a: string): boolean => a === '--help' || a === '-h';

export async function main(argv: string[]): Promise<number | undefined> {
  const [command, ...rest] = argv;
  if (command !== undefined && command in USAGE && rest.some(isHelp)) {
    process.stdout.write(USAGE[command as Command]);
    return 0;
  }
  switch (command) {
    case undefined:
    case 'serve':
      if (command === 'serve' && rest.length > 0) return usageError('serve', `unexpected argument "${rest[0]}"`);
      return serve();
    case '--help':
    case '-h':
    case 'help': {
      const topic = rest[0];
      if (topic !== undefined && topic in USAGE) process.stdout.write(USAGE[topic as Command]);
      else if (topic !== undefined && !isHelp(topic)) return usageError(undefined, `unknown command "${topic}"`);
      else process.stdout.write(HELP);
      return 0;
    }
    case '--version':
    case '-V':
      process.stdout.write(`${VERSION}\n`);
      return 0;
    case 'check-config':
      if (rest.length > 1 || rest[0]?.startsWith('-')) return usageError('check-config', `unexpected argument "${rest[rest.length - 1]}"`);
      return checkConfig(rest[0]);
    case 'kms-config':
      return kmsConfig(rest);
    case 'doctor':
      return doctor(rest);
    case 'init-dev':
      if (rest.length > 1 || rest[0]?.startsWith('-')) return usageError('init-dev', `unexpected argument "${rest[rest.length - 1]}"`);
      return runInitDev(rest[0] ?? 'dev-hsm');
    case 'audit':
      return auditCommand(rest);
    default:
      process.stderr.write(`xks-proxy: unknown command "${command}"\n\n${HELP}`);
      return 2;
  }
}

/** Exit 2 with the problem and the usage (of the command, or the general one). */
function usageError(command: Command | undefined, problem: string): number {
  const name = command === undefined ? 'xks-proxy' : `xks-proxy ${command}`;
  process.stderr.write(`${name}: ${problem}\n\n${command === undefined ? HELP : USAGE[command]}`);
  return 2;
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

/** `kms-config --prefix P [options] [FILE]`: the console's configuration file and the AWS CLI command. */
function kmsConfig(args: string[]): number {
  let prefix: string | undefined;
  let accessKeyId: string | undefined;
  let file: string | undefined;
  let json = false;
  const o: KmsConfigOptions = { showSecret: false };
  const valued = new Set(['--prefix', '--access-key-id', '--endpoint', '--name', '--vpc-endpoint-service']);
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (valued.has(a)) {
      const v = args[++i];
      if (v === undefined) return usageError('kms-config', `${a} needs a value`);
      if (a === '--prefix') prefix = v;
      else if (a === '--access-key-id') accessKeyId = v;
      else if (a === '--endpoint') o.endpoint = v;
      else if (a === '--name') o.name = v;
      else o.vpcEndpointService = v;
    } else if (a === '--show-secret') o.showSecret = true;
    else if (a === '--json') json = true;
    else if (a.startsWith('-')) return usageError('kms-config', `unknown option ${a}`);
    else if (file !== undefined) return usageError('kms-config', `unexpected argument "${a}"`);
    else file = a;
  }
  if (prefix === undefined) return usageError('kms-config', '--prefix is required (use --prefix "" for the empty prefix)');
  if (o.endpoint !== undefined) {
    const problem = endpointProblem(o.endpoint);
    if (problem !== undefined) return usageError('kms-config', problem);
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
      process.stderr.write(
        `xks-proxy kms-config: the key store "${prefix}" has no ${accessKeyId === undefined ? '' : 'such '}credential\n`,
      );
      return 1;
    }
    const file_ = `${JSON.stringify(proxyConfigurationFile(store, credential, o.showSecret), null, 2)}\n`;
    if (json) {
      process.stdout.write(file_);
      return 0;
    }
    process.stdout.write(
      `# Proxy configuration file (KMS console: "Upload proxy configuration file"):\n${file_}\n` +
        `# Or with the AWS CLI:\n${createCustomKeyStoreCommand(store, credential, o)}`,
    );
    return 0;
  } catch (e) {
    process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  }
}

/** `doctor`: the findings as a table (or JSON); exit 0 ok, 1 a warning, 2 a failure. */
async function doctor(args: string[]): Promise<number> {
  const parsed = parseDoctorArgs(args);
  if (typeof parsed === 'string') return usageError('doctor', parsed);
  let findings;
  if (parsed.remote !== undefined) findings = await probeRemote(parsed.remote);
  else {
    let file: string;
    try {
      file = parsed.file ?? resolveSettingsPath();
    } catch (e) {
      process.stderr.write(`xks-proxy doctor: ${e instanceof Error ? e.message : String(e)}\n`);
      return 2;
    }
    findings = await diagnoseLocal(file);
  }
  process.stdout.write(parsed.json ? toJson(findings) : toTable(findings));
  return exitCode(findings);
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
 * Serves until SIGTERM or SIGINT. The signal handlers are installed before start-up begins: a
 * signal that arrives meanwhile (a service manager stopping a slow start) stops the proxy as soon as
 * it is up, with exit 0, instead of killing it half-started; SIGHUP then is ignored (its default
 * would kill the process), since there is nothing to reload yet.
 */
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
  const t = loaded.config.tracing;
  // With no writer nothing reaches a log: say so on stderr, as the Rust proxy does.
  if (!t.is_stdout_writer_enabled && !t.is_file_writer_enabled)
    for (const w of loaded.warnings) process.stderr.write(`xks-proxy: warning: ${w}\n`);
  let proxy: Awaited<ReturnType<typeof startProxy>> | undefined;
  let stopping: string | undefined;
  const stop = (signal: string): void => {
    if (stopping !== undefined) return;
    stopping = signal;
    if (proxy === undefined) return; // still starting: stopped once it is up
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
    if (proxy === undefined || stopping !== undefined) return;
    proxy.log.info('reloading the configuration', { signal: 'SIGHUP' });
    void proxy.reload();
  });
  proxy = await startProxy(loaded);
  if (stopping !== undefined) {
    const signal = stopping;
    stopping = undefined;
    stop(signal);
  }
  return undefined;
}
