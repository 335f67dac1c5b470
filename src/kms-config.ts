/**
 * What AWS KMS needs to know about one key store (`xks-proxy kms-config`): the console's proxy
 * configuration file and the `aws kms create-custom-key-store` command of the guide. The secret
 * appears only when asked for (`showSecret`); otherwise a placeholder stands in its place, so
 * that the output can be shown or pasted into a ticket.
 */
import type { KeyStore, Sigv4Credential } from './config.js';

export const SECRET_PLACEHOLDER = '<secret access key: add --show-secret>';
const ENDPOINT_PLACEHOLDER = 'https://<host name of the proxy or its load balancer>';
const NAME_PLACEHOLDER = '<key store name>';

export interface KmsConfigOptions {
  /** --xks-proxy-uri-endpoint, e.g. https://xks.example.com (scheme and host, no path). */
  endpoint?: string | undefined;
  /** --custom-key-store-name. */
  name?: string | undefined;
  /** With it, connectivity VPC_ENDPOINT_SERVICE and --xks-proxy-vpc-endpoint-service-name. */
  vpcEndpointService?: string | undefined;
  showSecret: boolean;
}

/** `{prefix}/kms/xks/v1`, KMS's XksProxyUriPath. */
export function uriPath(store: KeyStore): string {
  return `${store.uri_path_prefix}/kms/xks/v1`;
}

/** The console's "proxy configuration file" (JSON). */
export function proxyConfigurationFile(store: KeyStore, credential: Sigv4Credential, showSecret: boolean): object {
  return {
    XksProxyUriPath: uriPath(store),
    XksProxyAuthenticationCredential: {
      AccessKeyId: credential.access_key_id,
      RawSecretAccessKey: showSecret ? credential.secret_access_key : SECRET_PLACEHOLDER,
    },
  };
}

/**
 * A problem with --endpoint, or undefined: KMS wants `https://host[:port]` without a path
 * (the path is --xks-proxy-uri-path).
 */
export function endpointProblem(endpoint: string): string | undefined {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    return `--endpoint ${JSON.stringify(endpoint)} is not a URL (expected https://host)`;
  }
  if (url.protocol !== 'https:') return `--endpoint must start with https:// (KMS connects over TLS only), got ${JSON.stringify(endpoint)}`;
  if (url.pathname !== '/' || url.search !== '' || url.hash !== '' || url.username !== '' || url.password !== '') {
    return `--endpoint is scheme and host only (the path goes into --xks-proxy-uri-path), got ${JSON.stringify(endpoint)}`;
  }
  return undefined;
}

/** The guide's `aws kms create-custom-key-store` for this key store, one option per line. */
export function createCustomKeyStoreCommand(store: KeyStore, credential: Sigv4Credential, o: KmsConfigOptions): string {
  const secret = o.showSecret ? credential.secret_access_key : SECRET_PLACEHOLDER;
  const endpoint = o.endpoint === undefined ? ENDPOINT_PLACEHOLDER : o.endpoint.replace(/\/$/, '');
  const args: [string, string][] = [
    ['--custom-key-store-name', o.name ?? NAME_PLACEHOLDER],
    ['--custom-key-store-type', 'EXTERNAL_KEY_STORE'],
    ['--xks-proxy-connectivity', o.vpcEndpointService === undefined ? 'PUBLIC_ENDPOINT' : 'VPC_ENDPOINT_SERVICE'],
  ];
  if (o.vpcEndpointService !== undefined) args.push(['--xks-proxy-vpc-endpoint-service-name', o.vpcEndpointService]);
  args.push(
    ['--xks-proxy-uri-endpoint', endpoint],
    ['--xks-proxy-uri-path', uriPath(store)],
    ['--xks-proxy-authentication-credential', `AccessKeyId=${credential.access_key_id},RawSecretAccessKey=${secret}`],
  );
  return ['aws kms create-custom-key-store', ...args.map(([k, v]) => `  ${k} ${shellQuote(v)}`)].join(' \\\n') + '\n';
}

/** A POSIX shell word: bare when plainly safe, else single-quoted. */
export function shellQuote(s: string): string {
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(s)) return s;
  return `'${s.replace(/'/g, `'\\''`)}'`;
}
