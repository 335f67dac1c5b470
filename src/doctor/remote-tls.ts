/**
 * The remote doctor's TLS handshake: offering what KMS offers (TLS 1.2+, the spec's suites), the
 * version and suite the endpoint picks, and whether its chain ends at a root KMS trusts.
 */
import { X509Certificate } from 'node:crypto';
import { connect as tlsConnect, type ConnectionOptions, type DetailedPeerCertificate } from 'node:tls';
import { NOT_REACHABLE, TLS_ERR, WAIT_MS } from './remote-answers.js';
import { ok, problem, type Finding } from './report.js';
import { kmsTrusts } from './trusted-cas.js';

/** The chain the server sent, leaf first, as node:crypto certificates. */
function peerChain(leaf: DetailedPeerCertificate): X509Certificate[] {
  const chain: X509Certificate[] = [];
  let c: DetailedPeerCertificate | undefined = leaf;
  for (let i = 0; c !== undefined && c.raw !== undefined && i < 10; i++) {
    chain.push(new X509Certificate(c.raw));
    const next: DetailedPeerCertificate | undefined = c.issuerCertificate;
    if (next === undefined || next === c || next.fingerprint256 === c.fingerprint256) break;
    c = next;
  }
  return chain;
}

export async function handshake(
  host: string,
  port: number,
  options: ConnectionOptions,
  privateCa: boolean,
): Promise<{ ok: boolean; findings: Finding[] }> {
  const G = 'tls';
  return new Promise((resolve) => {
    const s = tlsConnect({ ...options, host, port, rejectUnauthorized: true, timeout: WAIT_MS });
    s.once('secureConnect', () => {
      const findings: Finding[] = [];
      const cipher = s.getCipher();
      findings.push(
        ok(
          G,
          'version',
          `${s.getProtocol() ?? 'unknown'} with ${cipher.standardName ?? cipher.name} (the probe offers the spec's suites only, as KMS)`,
        ),
      );
      const chain = peerChain(s.getPeerCertificate(true));
      const v = chain.length === 0 ? { trusted: false as const, root: 'no certificate' } : kmsTrusts(chain);
      if (v.trusted) findings.push(ok(G, 'trusted root', `"${v.ca.alias}" is a CA KMS trusts`));
      else
        findings.push(
          problem(
            privateCa ? 'warn' : 'fail',
            G,
            'trusted root',
            `the chain ends at "${v.root}", not a CA KMS trusts${privateCa ? ' (accepted here through --ca)' : ''}`,
            TLS_ERR,
            "use a certificate from a CA in the spec's TrustedCertificateAuthorities list",
          ),
        );
      s.destroy();
      resolve({ ok: true, findings });
    });
    s.once('timeout', () => {
      s.destroy();
      resolve({
        ok: false,
        findings: [
          problem('fail', G, 'handshake', `no TLS handshake within ${WAIT_MS} ms`, NOT_REACHABLE, 'check that the port speaks TLS'),
        ],
      });
    });
    s.once('error', (e: Error & { code?: string }) => {
      s.destroy();
      resolve({
        ok: false,
        findings: [
          problem(
            'fail',
            G,
            'handshake',
            `${e.code ?? 'error'}: ${e.message}`,
            TLS_ERR,
            "serve a certificate for this DNS name from a CA KMS trusts, with TLS 1.2+ and the spec's suites",
          ),
        ],
      });
    });
  });
}
