/**
 * The `xks-proxy` command: serve (default), check-config, init-dev, --help, --version.
 */
import { ConfigError, loadConfig, redactedSummary, resolveSettingsPath } from './config.js';
import { initDev } from './dev/init-dev.js';
import { startProxy } from './main.js';
import { VERSION } from './version.js';

const HELP = `xks-proxy v${VERSION}: AWS KMS External Key Store proxy (drop-in for the Rust xks-proxy)

Usage:
  xks-proxy                      serve; settings from $XKS_PROXY_SETTINGS_TOML,
                                 else from configuration/bootstrap.toml
  xks-proxy check-config [FILE]  validate a settings.toml and print a summary without secrets
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
  const stop = (signal: string): void => {
    proxy.log.info('stopping', { signal });
    proxy.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
  return undefined;
}
