/**
 * Whether a certificate chain ends at a root AWS KMS trusts (the spec repository's
 * TrustedCertificateAuthorities list, shipped as src/doctor/trusted-cas-list.ts; update it with
 * `npm run update:trusted-cas`). A chain whose top certificate is a root is matched by its
 * SHA-256 fingerprint; one that stops below the root by the top certificate's issuer name
 * (its CN, O, OU and C attributes, in any order).
 */
import type { X509Certificate } from 'node:crypto';
import { TRUSTED_CAS } from './trusted-cas-list.js';

export interface TrustedCa {
  alias: string;
  /** The subject as the list writes it (Java's order and quoting: `CN=..., O="..., Inc.", C=US`). */
  subject: string;
  /** Expiry as the list writes it. */
  until: string;
  /** SHA-256 fingerprint, upper-case hex with colons (as node:crypto's fingerprint256). */
  sha256: string;
}

const COMPARED = new Set(['CN', 'O', 'OU', 'C']);

/** The compared attributes of a distinguished name, normalized and sorted: "c=us|cn=x|o=y". */
function nameKey(pairs: [string, string][]): string {
  return pairs
    .filter(([k]) => COMPARED.has(k.toUpperCase()))
    .map(([k, v]) => `${k.toUpperCase()}=${v.replace(/\s+/g, ' ').trim().toLowerCase()}`)
    .sort()
    .join('|');
}

/** `CN=a, O="b, Inc.", C=US` (Java) into pairs. */
export function parseJavaDn(dn: string): [string, string][] {
  const out: [string, string][] = [];
  const re = /\s*([A-Za-z0-9.]+)=("(?:[^"\\]|\\.)*"|[^,]*)\s*(?:,|$)/gy;
  let m: RegExpExecArray | null;
  while (re.lastIndex < dn.length && (m = re.exec(dn)) !== null) {
    const v = m[2]!;
    out.push([m[1]!, v.startsWith('"') ? v.slice(1, -1).replace(/\\(.)/g, '$1') : v]);
    if (m[0] === '') break;
  }
  return out;
}

/** node:crypto's `subject` / `issuer` (one `KEY=value` a line) into pairs. */
function parseNodeDn(dn: string): [string, string][] {
  return dn
    .split('\n')
    .filter((l) => l.includes('='))
    .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)] as [string, string]);
}

const byFingerprint = new Map(TRUSTED_CAS.map((c) => [c.sha256, c]));
const byName = new Map(TRUSTED_CAS.map((c) => [nameKey(parseJavaDn(c.subject)), c]));

export type TrustVerdict = { trusted: true; ca: TrustedCa; how: 'root in the file' | 'issuer name' } | { trusted: false; root: string };

/** `chain` as the certificate file holds it: leaf first, then intermediates (and maybe the root). */
export function kmsTrusts(chain: readonly X509Certificate[]): TrustVerdict {
  const top = chain[chain.length - 1]!;
  const fp = byFingerprint.get(top.fingerprint256);
  if (fp !== undefined) return { trusted: true, ca: fp, how: 'root in the file' };
  const selfIssued = top.subject === top.issuer;
  const issuer = selfIssued ? undefined : byName.get(nameKey(parseNodeDn(top.issuer)));
  if (issuer !== undefined) return { trusted: true, ca: issuer, how: 'issuer name' };
  return { trusted: false, root: (selfIssued ? top.subject : top.issuer).replace(/\n/g, ', ') };
}
