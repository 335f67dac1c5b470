/**
 * Doctor, group "tls" (when [security] is_tls_enabled): the certificate and key match, the dates,
 * a DNS name in the subjectAltName, the chain's root among the CAs KMS trusts, a handshake in
 * TLS 1.2 and 1.3 with the spec's suites; with mTLS, the client CA file and mtls_client_dns_name.
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { connect, createServer, type TLSSocket } from 'node:tls';
import type { Config, TlsSection } from '../config.js';
import { TLS12_CIPHERS, TLS12_CIPHER_LIST, TLS13_SUITES } from '../http/tls.js';
import { ok, problem, type Finding } from './report.js';
import { kmsTrusts } from './trusted-cas.js';
import { TRUSTED_CAS_SOURCE } from './trusted-cas-list.js';

const G = 'tls';
const TLS_ERR = 'XKS_PROXY_INVALID_TLS_CONFIGURATION';
const DAY_MS = 86_400_000;
/** Warn this long before the certificate expires. */
export const EXPIRY_WARN_DAYS = 30;

/** The certificates of a PEM file, in file order. */
export function readCertificates(file: string): X509Certificate[] {
  const text = readFileSync(file, 'utf8');
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  return blocks.map((b) => new X509Certificate(b));
}

const why = (e: unknown): string => (e instanceof Error ? e.message : String(e));

export async function checkTls(config: Config, now: number = Date.now()): Promise<Finding[]> {
  const t = config.tls;
  if (!config.security.is_tls_enabled || t === undefined) {
    return [
      ok(
        G,
        'enabled',
        'is_tls_enabled = false: something in front (e.g. an NLB TLS listener) must terminate TLS for KMS; check it with xks-proxy doctor --endpoint https://...',
      ),
    ];
  }
  const out: Finding[] = [];
  let chain: X509Certificate[];
  try {
    chain = readCertificates(t.tls_cert_pem);
    if (chain.length === 0) throw new Error('no PEM certificate in it');
  } catch (e) {
    return [
      problem(
        'fail',
        G,
        'certificate',
        `tls.tls_cert_pem ${t.tls_cert_pem}: ${why(e)}`,
        'the proxy does not start: XKS_PROXY_NOT_REACHABLE',
        'point tls_cert_pem at the PEM certificate (leaf first, then intermediates)',
      ),
    ];
  }
  const leaf = chain[0]!;
  let keyPem: string;
  try {
    keyPem = readFileSync(t.tls_key_pem, 'utf8');
    const key = createPrivateKey(keyPem);
    if (!leaf.checkPrivateKey(key)) {
      out.push(
        problem(
          'fail',
          G,
          'key match',
          `tls.tls_key_pem is not the key of the certificate's public key (${leaf.subject.replace(/\n/g, ', ')})`,
          'the proxy does not start: XKS_PROXY_NOT_REACHABLE',
          'use the key the certificate was issued for',
        ),
      );
      return out;
    }
    out.push(ok(G, 'key match', `the key is the certificate's (${key.asymmetricKeyType ?? 'unknown'} key)`));
  } catch (e) {
    return [
      problem(
        'fail',
        G,
        'key match',
        `tls.tls_key_pem ${t.tls_key_pem}: cannot read an unencrypted PEM private key (${why(e).split('\n')[0]})`,
        'the proxy does not start: XKS_PROXY_NOT_REACHABLE',
        'point tls_key_pem at the PEM private key, without a passphrase',
      ),
    ];
  }
  out.push(validity(leaf, now));
  out.push(dnsName(leaf));
  out.push(...trust(chain));
  out.push(await handshake(leaf, t, keyPem));
  if (config.security.is_mtls_enabled) out.push(...mtls(t));
  return out;
}

function validity(leaf: X509Certificate, now: number): Finding {
  const from = Date.parse(leaf.validFrom);
  const to = Date.parse(leaf.validTo);
  const dates = `valid from ${leaf.validFrom} to ${leaf.validTo}`;
  if (now > to) return problem('fail', G, 'dates', `the certificate expired: ${dates}`, TLS_ERR, 'renew the certificate');
  if (now < from)
    return problem(
      'fail',
      G,
      'dates',
      `the certificate is not valid yet: ${dates} (or the clock is wrong)`,
      TLS_ERR,
      'use a valid certificate, check the clock',
    );
  const days = Math.floor((to - now) / DAY_MS);
  if (days < EXPIRY_WARN_DAYS)
    return problem(
      'warn',
      G,
      'dates',
      `the certificate expires in ${days} days: ${dates}`,
      `${TLS_ERR} once it expires`,
      'renew the certificate',
    );
  return ok(G, 'dates', `${dates} (${days} days left)`);
}

function dnsName(leaf: X509Certificate): Finding {
  const names = (leaf.subjectAltName ?? '')
    .split(', ')
    .filter((n) => n.startsWith('DNS:'))
    .map((n) => n.slice(4));
  if (names.length === 0) {
    return problem(
      'fail',
      G,
      'dns name',
      "the certificate has no DNS name in its subjectAltName (KMS checks the endpoint's host name against it)",
      TLS_ERR,
      'issue the certificate with subjectAltName DNS:<the host name of --xks-proxy-uri-endpoint>',
    );
  }
  return ok(G, 'dns name', `subjectAltName ${names.join(', ')}: the endpoint's host name must be one of these`);
}

function trust(chain: X509Certificate[]): Finding[] {
  const out: Finding[] = [];
  for (let i = 0; i + 1 < chain.length; i++) {
    if (!chain[i]!.checkIssued(chain[i + 1]!)) {
      out.push(
        problem(
          'fail',
          G,
          'chain',
          `certificate ${i + 2} of the file did not issue certificate ${i + 1}`,
          TLS_ERR,
          'put the leaf first, then each issuer in order',
        ),
      );
      return out;
    }
  }
  const top = chain[chain.length - 1]!;
  const list = `the ${TRUSTED_CAS_SOURCE.file} list of ${TRUSTED_CAS_SOURCE.repository} (${TRUSTED_CAS_SOURCE.date})`;
  const v = kmsTrusts(chain);
  if (v.trusted) {
    out.push(ok(G, 'trusted root', `under "${v.ca.alias}" (${v.ca.subject}), matched by ${v.how}, in ${list}`));
    return out;
  }
  if (chain.length === 1 && top.subject === top.issuer) {
    out.push(
      problem(
        'fail',
        G,
        'trusted root',
        `the certificate is self-signed (${v.root})`,
        TLS_ERR,
        "use a certificate from a public CA KMS trusts (e.g. through ACM on a load balancer, or Let's Encrypt)",
      ),
    );
    return out;
  }
  out.push(
    problem(
      'fail',
      G,
      'trusted root',
      `the chain ends at "${v.root}", which is not in ${list}`,
      TLS_ERR,
      'use a certificate from a CA in that list; add the intermediates to tls_cert_pem',
    ),
  );
  return out;
}

/**
 * A handshake with each of the spec's suites, against a local TLS server with this certificate
 * and key (node's OpenSSL; the proxy offers the same list).
 */
async function handshake(leaf: X509Certificate, t: TlsSection, keyPem: string): Promise<Finding> {
  const server = createServer({
    cert: readFileSync(t.tls_cert_pem, 'utf8'),
    key: keyPem,
    minVersion: 'TLSv1.2',
    // node takes the TLS 1.3 suites in the same list.
    ciphers: [...TLS13_SUITES, TLS12_CIPHER_LIST].join(':'),
  });
  server.on('secureConnection', (s: TLSSocket) => s.end());
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  const attempt = (version: 'TLSv1.2' | 'TLSv1.3', suite: string): Promise<boolean> =>
    new Promise((resolve) => {
      const s = connect({
        host: '127.0.0.1',
        port,
        rejectUnauthorized: false,
        minVersion: version,
        maxVersion: version,
        ciphers: suite,
      });
      const timer = setTimeout(() => s.destroy(), 5000);
      s.once('secureConnect', () => {
        clearTimeout(timer);
        s.destroy();
        resolve(true);
      });
      s.once('error', () => {
        clearTimeout(timer);
        resolve(false);
      });
      s.once('close', () => resolve(false));
    });
  const works: string[] = [];
  try {
    for (const s of TLS13_SUITES) if (await attempt('TLSv1.3', s)) works.push(`TLS 1.3 ${s}`);
    for (const s of TLS12_CIPHERS) if (await attempt('TLSv1.2', s)) works.push(`TLS 1.2 ${s}`);
  } finally {
    server.close();
  }
  const has12 = works.some((w) => w.startsWith('TLS 1.2'));
  if (works.length === 0)
    return problem(
      'fail',
      G,
      'suites',
      `no handshake with any of the spec's suites works with this certificate and key (${leaf.publicKey.asymmetricKeyType} key)`,
      TLS_ERR,
      'use an RSA or ECDSA (P-256/P-384) certificate',
    );
  if (!has12)
    return problem(
      'warn',
      G,
      'suites',
      `only ${works.join(', ')}: no TLS 1.2 suite of the spec works with a ${leaf.publicKey.asymmetricKeyType} key`,
      'none while KMS uses TLS 1.3',
      'use an RSA or ECDSA certificate for TLS 1.2 as well',
    );
  return ok(G, 'suites', works.join(', '));
}

function mtls(t: TlsSection): Finding[] {
  const out: Finding[] = [];
  const ca = t.mtls_client_ca_pem ?? '';
  try {
    const certs = readCertificates(ca);
    if (certs.length === 0) throw new Error('no PEM certificate in it');
    const notCa = certs.filter((c) => !c.ca);
    if (notCa.length > 0)
      out.push(
        problem(
          'warn',
          G,
          'mtls ca',
          `tls.mtls_client_ca_pem: ${notCa.length} of its certificates is not a CA (basicConstraints CA:FALSE)`,
          'none directly',
          "list the CA that issues KMS's client certificate",
        ),
      );
    else out.push(ok(G, 'mtls ca', `${certs.length} CA certificate(s): ${certs.map((c) => c.subject.replace(/\n/g, ', ')).join('; ')}`));
  } catch (e) {
    out.push(
      problem(
        'fail',
        G,
        'mtls ca',
        `tls.mtls_client_ca_pem ${ca}: ${why(e)}`,
        'the proxy does not start: XKS_PROXY_NOT_REACHABLE',
        'point mtls_client_ca_pem at a PEM file of CA certificates',
      ),
    );
  }
  const name = t.mtls_client_dns_name ?? '';
  if (!/^(?=.{1,253}$)([A-Za-z0-9*]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/.test(name)) {
    out.push(
      problem(
        'fail',
        G,
        'mtls name',
        `tls.mtls_client_dns_name ${JSON.stringify(name)} is not a DNS name`,
        'XKS_PROXY_ACCESS_DENIED (no client certificate matches)',
        "set it to the DNS name in KMS's client certificate",
      ),
    );
  } else out.push(ok(G, 'mtls name', `client certificates must name ${name}`));
  return out;
}
