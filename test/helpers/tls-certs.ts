/**
 * Real certificates for TLS/mTLS tests, made with the openssl CLI in a temporary directory:
 * a CA, a server certificate for 127.0.0.1/localhost, and client certificates: good (DNS SAN =
 * the expected name), wrong name, wildcard, name only in the subject CN, from another CA, expired, not yet
 * valid, self-signed, and one under an intermediate CA.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export const CLIENT_DNS_NAME = 'kms-xks-client.example.com';

export interface Pair {
  cert: string;
  key: string;
}

export interface TestPki {
  dir: string;
  ca: string;
  /** An intermediate CA certificate under `ca` (PEM file). */
  intermediate: string;
  server: Pair;
  clients: {
    good: Pair;
    wrongName: Pair;
    wildcard: Pair;
    cnOnly: Pair;
    otherCa: Pair;
    expired: Pair;
    notYetValid: Pair;
    /** Signed by the intermediate; its cert file holds the leaf, then the intermediate. */
    viaIntermediate: Pair;
    selfSigned: Pair;
  };
  cleanup(): void;
}

function ossl(dir: string, args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** openssl req's arguments for a new P-256 key, unencrypted. */
const NEW_P256_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];

/** In `dir`: a self-signed CA `<name>.pem` / `<name>.key` with subject `subj`, valid for `days`. */
export function makeCa(dir: string, name: string, subj = `/CN=${name}`, days = 30): void {
  ossl(dir, [
    'req',
    '-x509',
    ...NEW_P256_KEY,
    '-keyout',
    `${name}.key`,
    '-out',
    `${name}.pem`,
    '-days',
    String(days),
    '-subj',
    subj,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
}

/** In `dir`: a P-256 key `<name>.key` and its CSR `<name>.csr` for the subject `subj`. */
export function makeKeyAndCsr(dir: string, name: string, subj: string): void {
  ossl(dir, ['req', ...NEW_P256_KEY, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subj]);
}

/** In `dir`: `<name>.pem`, `<name>.csr` signed by `issuer` with the extensions `ext`, valid for `days` (-1: expired). */
export function signCsr(dir: string, name: string, issuer: string, ext: string[], days: number): void {
  writeFileSync(path.join(dir, `${name}.ext`), `${ext.join('\n')}\n`);
  ossl(dir, [
    'x509',
    '-req',
    '-in',
    `${name}.csr`,
    '-CA',
    `${issuer}.pem`,
    '-CAkey',
    `${issuer}.key`,
    '-CAcreateserial',
    '-out',
    `${name}.pem`,
    '-days',
    String(days),
    '-extfile',
    `${name}.ext`,
  ]);
}

export function makePki(): TestPki {
  const dir = mkdtempSync(path.join(tmpdir(), 'xks-pki-'));
  const p = (f: string): string => path.join(dir, f);
  makeCa(dir, 'ca');
  makeCa(dir, 'other-ca');
  const keyAndCsr = (name: string, cn: string): void => makeKeyAndCsr(dir, name, `/CN=${cn}`);
  const sign = (name: string, issuer: string, ext: string[], days: number): void => signCsr(dir, name, issuer, ext, days);
  /** A leaf signed by `issuer` with the given SAN extension (or none) and validity. */
  const leaf = (name: string, issuer: string, san: string | undefined, cn: string, eku: string, expired = false): Pair => {
    keyAndCsr(name, cn);
    // Expired: `-days -1` puts notAfter one day in the past (OpenSSL 3.0 has no -not_after).
    sign(
      name,
      issuer,
      ['basicConstraints=CA:FALSE', `extendedKeyUsage=${eku}`, ...(san ? [`subjectAltName=${san}`] : [])],
      expired ? -1 : 30,
    );
    return { cert: p(`${name}.pem`), key: p(`${name}.key`) };
  };
  const server = leaf('server', 'ca', 'DNS:localhost,IP:127.0.0.1', 'localhost', 'serverAuth');
  const good = leaf('good', 'ca', `DNS:${CLIENT_DNS_NAME}`, 'good-client', 'clientAuth');
  const wrongName = leaf('wrong-name', 'ca', 'DNS:someone-else.example.com', CLIENT_DNS_NAME, 'clientAuth');
  const wildcard = leaf('wildcard', 'ca', 'DNS:*.example.com', 'wildcard-client', 'clientAuth');
  const cnOnly = leaf('cn-only', 'ca', undefined, CLIENT_DNS_NAME, 'clientAuth');
  const otherCa = leaf('other', 'other-ca', `DNS:${CLIENT_DNS_NAME}`, 'other', 'clientAuth');
  const expired = leaf('expired', 'ca', `DNS:${CLIENT_DNS_NAME}`, 'expired', 'clientAuth', true);
  // An intermediate CA under ca, and a client under it (cert file: leaf then intermediate).
  keyAndCsr('intermediate', 'intermediate');
  sign('intermediate', 'ca', ['basicConstraints=critical,CA:TRUE', 'keyUsage=critical,keyCertSign,cRLSign'], 30);
  const viaIntermediateLeaf = leaf('via-intermediate', 'intermediate', `DNS:${CLIENT_DNS_NAME}`, 'via-intermediate', 'clientAuth');
  writeFileSync(
    p('via-intermediate-chain.pem'),
    readFileSync(viaIntermediateLeaf.cert, 'utf8') + readFileSync(p('intermediate.pem'), 'utf8'),
  );
  const viaIntermediate = { cert: p('via-intermediate-chain.pem'), key: viaIntermediateLeaf.key };
  // Not yet valid: OpenSSL 3.0's `x509 -req` cannot set notBefore, `openssl ca -startdate` can.
  keyAndCsr('future', 'future');
  writeFileSync(p('future.ext'), `basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\nsubjectAltName=DNS:${CLIENT_DNS_NAME}\n`);
  writeFileSync(
    p('ca.cnf'),
    [
      '[ca]',
      'default_ca = d',
      '[d]',
      'database = index.txt',
      'new_certs_dir = .',
      'serial = ca.serial.txt',
      'default_md = sha256',
      'policy = p',
      'unique_subject = no',
      '[p]',
      'commonName = supplied',
      '',
    ].join('\n'),
  );
  writeFileSync(p('index.txt'), '');
  writeFileSync(p('ca.serial.txt'), '1000\n');
  ossl(dir, [
    'ca',
    '-batch',
    '-notext',
    '-config',
    'ca.cnf',
    '-cert',
    'ca.pem',
    '-keyfile',
    'ca.key',
    '-in',
    'future.csr',
    '-out',
    'future.pem',
    '-startdate',
    '20991231000000Z',
    '-enddate',
    '21001231000000Z',
    '-extfile',
    'future.ext',
  ]);
  const notYetValid = { cert: p('future.pem'), key: p('future.key') };
  ossl(dir, [
    'req',
    '-x509',
    ...NEW_P256_KEY,
    '-keyout',
    'self.key',
    '-out',
    'self.pem',
    '-days',
    '30',
    '-subj',
    `/CN=${CLIENT_DNS_NAME}`,
    '-addext',
    `subjectAltName=DNS:${CLIENT_DNS_NAME}`,
    '-addext',
    'extendedKeyUsage=clientAuth',
  ]);
  return {
    dir,
    ca: p('ca.pem'),
    intermediate: p('intermediate.pem'),
    server,
    clients: {
      good,
      wrongName,
      wildcard,
      cnOnly,
      otherCa,
      expired,
      notYetValid,
      viaIntermediate,
      selfSigned: { cert: p('self.pem'), key: p('self.key') },
    },
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}
