/** The `doctor` command's arguments: local (`[FILE]`) or remote (`--endpoint URL ...`). */
import { readFileSync } from 'node:fs';

export interface DoctorArgs {
  json: boolean;
  file?: string | undefined;
  remote?: {
    endpoint: string;
    uriPath: string | undefined;
    accessKeyId: string;
    secretAccessKey: string;
    keyIds: string[];
    region: string;
    caFile: string | undefined;
  };
}

export const DOCTOR_USAGE = `Usage: xks-proxy doctor [--json] [FILE]
       xks-proxy doctor --endpoint URL --access-key-id ID --secret-file F [--key-id K]... [options]

Find what AWS KMS would reject before KMS does. Each check prints ok, warn or fail; a warn or
fail names the KMS error it causes (ConnectionErrorCode or key exception) and the fix.
Exit 0 all ok, 1 a warning, 2 a failure.

Local (on the proxy's host, with the settings it would serve): the file parses; SigV4
credentials and URI paths follow KMS's rules; the clock; TLS (key, dates, DNS name, a root KMS
trusts, the spec's suites, mTLS); the PKCS#11 module, token and login; every key id (one
AES-256 object, CKA_ENCRYPT and CKA_DECRYPT, an encrypt/decrypt round trip in the configured
IV mode and its latency against KMS's 250 ms).
The file: FILE, else $XKS_PROXY_SETTINGS_TOML, else the one configuration/bootstrap.toml names.

Remote (a running proxy, probed as KMS would, signed with SigV4): TCP round trip, TLS version,
suite and root, GetHealthStatus, and per key GetKeyMetadata, Encrypt (AAD, CDIV) and Decrypt,
each response checked against the spec and timed against KMS's 35 ms / 250 ms.
  --endpoint URL        https://host[:port] (XksProxyUriEndpoint), or with the path appended
  --uri-path P          XksProxyUriPath when URL has none (default /kms/xks/v1)
  --access-key-id ID    the credential KMS has
  --secret-file F       a file holding its secret access key (one line)
  --key-id K            a key id to probe (repeatable)
  --region R            the KMS region that signs (default us-east-1)
  --ca FILE             also trust these CA certificates (a private CA; KMS would not)

Options:
  --json                print {"result", "ok", "warn", "fail", "findings": [...]} instead of a table
`;

/** The arguments, or the problem with them. */
export function parseDoctorArgs(args: readonly string[]): DoctorArgs | string {
  const valued = new Set(['--endpoint', '--uri-path', '--access-key-id', '--secret-file', '--key-id', '--region', '--ca']);
  const v: Record<string, string> = {};
  const keyIds: string[] = [];
  let json = false;
  let file: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (valued.has(a)) {
      const val = args[++i];
      if (val === undefined) return `${a} needs a value`;
      if (a === '--key-id') keyIds.push(val);
      else v[a] = val;
    } else if (a === '--json') json = true;
    else if (a.startsWith('-')) return `unknown option ${a}`;
    else if (file !== undefined) return `unexpected argument "${a}"`;
    else file = a;
  }
  if (v['--endpoint'] === undefined) {
    const remoteOnly = Object.keys(v).concat(keyIds.length > 0 ? ['--key-id'] : []);
    if (remoteOnly.length > 0) return `${remoteOnly[0]} needs --endpoint`;
    return { json, file };
  }
  if (file !== undefined) return `a FILE and --endpoint exclude each other (the remote probe reads no settings)`;
  let url: URL;
  try {
    url = new URL(v['--endpoint']);
  } catch {
    return `--endpoint ${JSON.stringify(v['--endpoint'])} is not a URL`;
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return '--endpoint must be an https:// (or http://) URL';
  if (url.pathname !== '/' && v['--uri-path'] !== undefined) return '--uri-path and a path in --endpoint exclude each other';
  if (v['--access-key-id'] === undefined) return '--access-key-id is required with --endpoint';
  if (v['--secret-file'] === undefined) return '--secret-file is required with --endpoint';
  let secret: string;
  try {
    secret = readFileSync(v['--secret-file'], 'utf8').replace(/\r?\n$/, '');
  } catch (e) {
    return `--secret-file ${v['--secret-file']}: cannot read it (${(e as { code?: string }).code ?? 'error'})`;
  }
  if (secret === '' || secret.includes('\n')) return `--secret-file ${v['--secret-file']}: expected one line, the secret access key`;
  const caFile = v['--ca'];
  if (caFile !== undefined) {
    let pem: string;
    try {
      pem = readFileSync(caFile, 'utf8');
    } catch (e) {
      return `--ca ${caFile}: cannot read it (${(e as { code?: string }).code ?? 'error'})`;
    }
    if (!pem.includes('-----BEGIN CERTIFICATE-----')) return `--ca ${caFile}: no PEM certificate in it`;
  }
  return {
    json,
    remote: {
      endpoint: v['--endpoint'],
      uriPath: v['--uri-path'],
      accessKeyId: v['--access-key-id'],
      secretAccessKey: secret,
      keyIds,
      region: v['--region'] ?? 'us-east-1',
      caFile,
    },
  };
}
