/**
 * Doctor, group "sigv4": the credentials and the URI path of every key store follow the rules
 * KMS applies when the key store is created or updated, and the signing service matches.
 */
import { ACCESS_KEY_ID_NOTE, ACCESS_KEY_ID_RE, MAX_URI_PATH, SECRET_NOTE, SECRET_RE, type Config } from '../config.js';
import { uriPath } from '../kms-config.js';
import { ok, problem, type Finding } from './report.js';

const G = 'sigv4';
/** XksProxyUriPath as the KMS API accepts it (CreateCustomKeyStore). */
const KMS_URI_PATH_RE = /^(\/[a-zA-Z0-9/_-]+\/kms\/xks\/v\d{1,2})$|^(\/kms\/xks\/v\d{1,2})$/;
const REFUSED = 'CreateCustomKeyStore / UpdateCustomKeyStore refuse it (ValidationException)';

export function checkSigv4(config: Config): Finding[] {
  const out: Finding[] = [];
  if (!config.security.is_sigv4_auth_enabled) {
    out.push(
      problem(
        'warn',
        G,
        'enabled',
        'is_sigv4_auth_enabled = false: any caller that reaches the proxy can use the keys',
        'none (KMS signs anyway), but nothing checks that KMS is the caller',
        'set [security] is_sigv4_auth_enabled = true',
      ),
    );
  }
  if (config.server.service !== 'kms-xks-proxy') {
    out.push(
      problem(
        'fail',
        G,
        'service',
        `[server] service is "${config.server.service}"; KMS signs for "kms-xks-proxy"`,
        'INVALID_CREDENTIALS (every signature fails: 401 AuthenticationFailedException)',
        'set [server] service = "kms-xks-proxy"',
      ),
    );
  } else out.push(ok(G, 'service', `"kms-xks-proxy"; region "${config.server.region}" must be the key store's KMS region`));
  config.external_key_stores.forEach((s, i) => {
    const where = `external_key_stores[${i}]`;
    const path = uriPath(s);
    if (!KMS_URI_PATH_RE.test(path) || path.length > MAX_URI_PATH) {
      out.push(
        problem(
          'fail',
          G,
          'uri path',
          `${where}: "${path}" is not a URI path KMS accepts (10..${MAX_URI_PATH} characters: "/kms/xks/v1" or "/<a-z A-Z 0-9 / - _>/kms/xks/v1")`,
          `${REFUSED}; a key store made with another path gets 404 InvalidUriPathException: XKS_PROXY_INVALID_CONFIGURATION`,
          'change uri_path_prefix to a "/" and letters, digits, "/", "-", "_"',
        ),
      );
    } else out.push(ok(G, 'uri path', `${where}: ${path}`));
    s.sigv4_credentials.forEach((c, j) => {
      const name = `${where} credential ${j + 1} ("${c.access_key_id}")`;
      if (!ACCESS_KEY_ID_RE.test(c.access_key_id)) {
        out.push(
          problem(
            'fail',
            G,
            'access key id',
            `${name}: ${ACCESS_KEY_ID_NOTE}`,
            REFUSED,
            'make one with: LC_ALL=C tr -dc A-Z2-7 < /dev/urandom | head -c 26',
          ),
        );
      } else out.push(ok(G, 'access key id', name));
      if (!SECRET_RE.test(c.secret_access_key)) {
        out.push(
          problem(
            'fail',
            G,
            'secret',
            `${name}: the secret access key does not follow KMS's rule: ${SECRET_NOTE}`,
            REFUSED,
            'make one with: openssl rand -base64 48',
          ),
        );
      } else out.push(ok(G, 'secret', `${name}: 43..64 characters of the allowed alphabet`));
    });
  });
  return out;
}
