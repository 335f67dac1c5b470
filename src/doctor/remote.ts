/**
 * `xks-proxy doctor --endpoint URL ...`: probes a running proxy as AWS KMS would, signed with
 * SigV4: the TCP round trip (KMS wants <= 35 ms), TLS (version, suite, the root among the CAs KMS
 * trusts), GetHealthStatus, and per key GetKeyMetadata and an Encrypt (with AAD and CDIV) then
 * Decrypt; every response field is checked against the spec, every call's latency against KMS's
 * 250 ms, and every failure named by the ConnectionErrorCode (or key error) KMS would report.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { request as httpRequest, Agent as HttpAgent } from 'node:http';
import { request as httpsRequest, Agent as HttpsAgent } from 'node:https';
import { isIP, connect as tcpConnect } from 'node:net';
import { rootCertificates, type ConnectionOptions } from 'node:tls';
import { TLS12_CIPHER_LIST, TLS13_SUITES } from '../http/tls.js';
import { KMS_BUDGET_MS } from './keys.js';
import {
  answerError,
  b64,
  BAD_RESPONSE,
  encryptProblems,
  healthFields,
  NOT_REACHABLE,
  TIMED_OUT,
  TLS_ERR,
  WAIT_MS,
  type Json,
  type Reply,
} from './remote-answers.js';
import { handshake } from './remote-tls.js';
import { ok, problem, type Finding } from './report.js';
import { signKmsRequest } from './sign.js';

/** The network round trip KMS recommends at most. */
export const KMS_RTT_MS = 35;
const HALF_BUDGET_MS = KMS_BUDGET_MS / 2;
const MAX_SKEW_MS = 5 * 60_000;

export interface RemoteOptions {
  /** https://host[:port], optionally with the URI path (…/kms/xks/v1). */
  endpoint: string;
  /** XksProxyUriPath when the endpoint has no path; default /kms/xks/v1. */
  uriPath?: string | undefined;
  accessKeyId: string;
  secretAccessKey: string;
  keyIds: readonly string[];
  region: string;
  /** PEM file of CAs to trust besides the system's (a private CA). */
  caFile?: string | undefined;
}

export async function probeRemote(o: RemoteOptions): Promise<Finding[]> {
  const out: Finding[] = [];
  const url = new URL(o.endpoint);
  const tls = url.protocol === 'https:';
  const port = Number(url.port || (tls ? 443 : 80));
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const base = url.pathname === '/' || url.pathname === '' ? (o.uriPath ?? '/kms/xks/v1') : url.pathname.replace(/\/$/, '');
  const G = 'endpoint';
  if (!tls)
    out.push(
      problem(
        'warn',
        G,
        'scheme',
        `${url.origin} is plain HTTP: KMS connects with HTTPS only`,
        TLS_ERR,
        'probe what KMS connects to: the https:// endpoint of the TLS listener in front of the proxy',
      ),
    );
  else if (isIP(host) !== 0)
    out.push(
      problem(
        'warn',
        G,
        'host',
        `${host} is an IP address: KMS needs a DNS name in XksProxyUriEndpoint (and in the certificate)`,
        'CreateCustomKeyStore: ValidationException',
        'use the DNS name of the endpoint',
      ),
    );
  else out.push(ok(G, 'host', host));
  if (!/\/kms\/xks\/v\d{1,2}$/.test(base))
    out.push(
      problem(
        'warn',
        G,
        'uri path',
        `${base} does not end in /kms/xks/v1`,
        'CreateCustomKeyStore: ValidationException',
        'give the endpoint as https://host[:port] and --uri-path <prefix>/kms/xks/v1',
      ),
    );

  // TCP: is it there, and how far.
  const rtt = await new Promise<number | Error>((resolve) => {
    const t0 = performance.now();
    const s = tcpConnect({ host, port, timeout: WAIT_MS });
    s.once('connect', () => {
      resolve(performance.now() - t0);
      s.destroy();
    });
    s.once('timeout', () => {
      resolve(new Error(`no TCP connection within ${WAIT_MS} ms`));
      s.destroy();
    });
    s.once('error', (e) => resolve(e));
  });
  if (rtt instanceof Error) {
    out.push(
      problem(
        'fail',
        'network',
        'connect',
        `${host}:${port}: ${rtt.message}`,
        NOT_REACHABLE,
        'check the DNS name, the port, security groups / firewalls and that the proxy (or its load balancer) listens',
      ),
    );
    return out;
  }
  const rttText = `TCP connect in ${rtt.toFixed(1)} ms`;
  if (rtt > KMS_RTT_MS)
    out.push(
      problem(
        'warn',
        'network',
        'round trip',
        `${rttText}: above the ${KMS_RTT_MS} ms KMS recommends (run the probe from the KMS region to measure what KMS sees)`,
        `${TIMED_OUT} when a call's total passes ${KMS_BUDGET_MS} ms`,
        'place the proxy and the HSM near the AWS region',
      ),
    );
  else out.push(ok('network', 'round trip', `${rttText}, within the ${KMS_RTT_MS} ms KMS recommends`));

  const ca = o.caFile === undefined ? undefined : readFileSync(o.caFile, 'utf8');
  const tlsOptions: ConnectionOptions = {
    minVersion: 'TLSv1.2',
    // node takes the TLS 1.3 suites in the same list.
    ciphers: [...TLS13_SUITES, TLS12_CIPHER_LIST].join(':'),
    ...(ca !== undefined ? { ca: [...rootCertificates, ca] } : {}),
    ...(isIP(host) === 0 ? { servername: host } : {}),
  };
  if (tls) {
    const found = await handshake(host, port, tlsOptions, o.caFile !== undefined);
    out.push(...found.findings);
    if (!found.ok) return out;
  }

  const agent = tls ? new HttpsAgent({ ...tlsOptions, keepAlive: true, maxSockets: 1 }) : new HttpAgent({ keepAlive: true, maxSockets: 1 });
  const post = (path: string, body: Json): Promise<Reply | Error> => {
    const text = JSON.stringify(body);
    const headers = signKmsRequest({
      host: url.host,
      path,
      body: text,
      accessKeyId: o.accessKeyId,
      secretAccessKey: o.secretAccessKey,
      region: o.region,
      service: 'kms-xks-proxy',
      date: new Date(),
    });
    return new Promise((resolve) => {
      const t0 = performance.now();
      const req = (tls ? httpsRequest : httpRequest)(
        {
          host,
          port,
          path,
          method: 'POST',
          agent,
          headers: { ...headers, 'content-length': String(Buffer.byteLength(text)) },
          timeout: WAIT_MS,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const ms = performance.now() - t0;
            let json: Json | undefined;
            try {
              const v: unknown = JSON.parse(Buffer.concat(chunks).toString('utf8'));
              if (v !== null && typeof v === 'object' && !Array.isArray(v)) json = v as Json;
            } catch {
              json = undefined;
            }
            resolve({ status: res.statusCode ?? 0, headers: res.headers, json, ms });
          });
          res.on('error', (e) => resolve(e));
        },
      );
      req.on('timeout', () => req.destroy(new Error(`no answer within ${WAIT_MS} ms`)));
      req.on('error', (e) => resolve(e));
      req.end(text);
    });
  };

  try {
    /** A call's common checks; the JSON body when it answered 200 with JSON. */
    const called = async (group: string, check: string, path: string, body: Json, keyCall: boolean): Promise<Json | undefined> => {
      const r = await post(`${base}${path}`, body);
      if (r instanceof Error) {
        const timedOut = /no answer within/.test(r.message);
        out.push(
          problem(
            'fail',
            group,
            check,
            `${path}: ${r.message}`,
            timedOut ? TIMED_OUT : NOT_REACHABLE,
            timedOut ? "see the proxy's log and the HSM's latency" : 'check that the proxy keeps serving',
          ),
        );
        return undefined;
      }
      const took = `${r.ms.toFixed(1)} ms`;
      if (r.status !== 200) {
        const e = answerError(r, keyCall);
        const name = typeof r.json?.errorName === 'string' ? ` ${r.json.errorName}` : '';
        out.push(problem('fail', group, check, `${path}: HTTP ${r.status}${name} in ${took}`, e.kms, e.fix));
        return undefined;
      }
      if (r.json === undefined) {
        out.push(
          problem(
            'fail',
            group,
            check,
            `${path}: HTTP 200 without a JSON object`,
            BAD_RESPONSE,
            'the endpoint is not an XKS proxy, or something in front rewrites the answer',
          ),
        );
        return undefined;
      }
      if (r.ms > KMS_BUDGET_MS)
        out.push(
          problem(
            'fail',
            group,
            `${check} latency`,
            `${check} took ${took}: above KMS's ${KMS_BUDGET_MS} ms`,
            TIMED_OUT,
            "bring the proxy, the HSM and the AWS region closer; see xks-proxy doctor FILE for the HSM's share",
          ),
        );
      else if (r.ms > HALF_BUDGET_MS)
        out.push(
          problem(
            'warn',
            group,
            `${check} latency`,
            `${check} took ${took}: more than half of KMS's ${KMS_BUDGET_MS} ms`,
            `${TIMED_OUT} when the network adds the rest`,
            'bring the proxy, the HSM and the AWS region closer',
          ),
        );
      else out.push(ok(group, `${check} latency`, `${check} in ${took} (KMS waits ${KMS_BUDGET_MS} ms)`));
      if (check === 'health') clock(r, out);
      return r.json;
    };

    const health = await called(
      'health',
      'health',
      '/health',
      { requestMetadata: { kmsRequestId: randomUUID(), kmsOperation: 'ConnectCustomKeyStore' } },
      false,
    );
    if (health === undefined) return out;
    const hb = healthFields(health);
    if (hb.length > 0)
      out.push(problem('fail', 'health', 'fields', hb.join('; '), BAD_RESPONSE, "the proxy's GetHealthStatus does not follow the spec"));
    else {
      const states = (health.ekmFleetDetails as Json[]).map((e) => e.healthStatus as string);
      const fleet = `${health.xksProxyVendor} ${health.xksProxyModel}; ${health.ekmVendor}: ${states.join(', ')}`;
      if (states.every((s) => s === 'UNAVAILABLE'))
        out.push(
          problem(
            'fail',
            'health',
            'fields',
            `every external key manager is UNAVAILABLE (${fleet})`,
            'ConnectCustomKeyStore fails; key operations: KMSInvalidStateException',
            "see xks-proxy doctor FILE on the proxy's host",
          ),
        );
      else if (states.includes('DEGRADED') || states.includes('UNAVAILABLE'))
        out.push(
          problem(
            'warn',
            'health',
            'fields',
            `an external key manager is not ACTIVE (${fleet})`,
            'none yet; slow or failing calls',
            "see the proxy's log and [health_check]",
          ),
        );
      else out.push(ok('health', 'fields', fleet));
    }
    if (o.keyIds.length === 0)
      out.push(
        problem(
          'warn',
          'keys',
          'probed',
          'no --key-id given: GetKeyMetadata, Encrypt and Decrypt not probed',
          'none',
          'add --key-id K for each key KMS will use',
        ),
      );
    for (const id of o.keyIds) await probeKey(id, called, o.region, out);
  } finally {
    agent.destroy();
  }
  return out;
}

type Caller = (group: string, check: string, path: string, body: Json, keyCall: boolean) => Promise<Json | undefined>;

async function probeKey(id: string, called: Caller, region: string, out: Finding[]): Promise<void> {
  const G = `key ${id}`;
  const meta = {
    awsPrincipalArn: 'arn:aws:iam::111122223333:role/xks-proxy-doctor',
    kmsKeyArn: `arn:aws:kms:${region}:111122223333:key/xks-proxy-doctor`,
    kmsRequestId: randomUUID(),
  };
  const path = `/keys/${encodeURIComponent(id)}`;
  const md = await called(G, 'metadata', `${path}/metadata`, { requestMetadata: { ...meta, kmsOperation: 'CreateKey' } }, true);
  if (md === undefined) return;
  const usage = Array.isArray(md.keyUsage) ? (md.keyUsage as unknown[]) : undefined;
  if (md.keySpec !== 'AES_256' || usage === undefined || !usage.includes('ENCRYPT') || !usage.includes('DECRYPT') || usage.length > 10) {
    out.push(
      problem(
        'fail',
        G,
        'metadata',
        `keySpec ${JSON.stringify(md.keySpec)}, keyUsage ${JSON.stringify(md.keyUsage)}: KMS needs AES_256 with ENCRYPT and DECRYPT (at most 10 usages)`,
        'XksKeyInvalidConfigurationException',
        'use an AES-256 key with CKA_ENCRYPT and CKA_DECRYPT',
      ),
    );
    return;
  }
  if (md.keyStatus !== 'ENABLED') {
    out.push(
      problem(
        'fail',
        G,
        'metadata',
        `keyStatus ${JSON.stringify(md.keyStatus)}`,
        md.keyStatus === 'DISABLED' ? 'KMSInvalidStateException (the external key is disabled)' : BAD_RESPONSE,
        'enable the key',
      ),
    );
    return;
  }
  out.push(ok(G, 'metadata', `AES_256, ${usage.join(' ')}, ENABLED`));

  const plaintext = randomBytes(32);
  const aad = randomBytes(24);
  const enc = await called(
    G,
    'encrypt',
    `${path}/encrypt`,
    {
      requestMetadata: { ...meta, kmsOperation: 'Encrypt', kmsRequestId: randomUUID() },
      plaintext: plaintext.toString('base64'),
      encryptionAlgorithm: 'AES_GCM',
      additionalAuthenticatedData: aad.toString('base64'),
      ciphertextDataIntegrityValueAlgorithm: 'SHA_256',
    },
    true,
  );
  if (enc === undefined) return;
  const { problems, ivBytes, ctmBytes } = encryptProblems(enc, plaintext, aad);
  if (problems.length > 0) {
    out.push(problem('fail', G, 'encrypt', problems.join('; '), BAD_RESPONSE, "the proxy's Encrypt does not follow the spec"));
    return;
  }
  out.push(
    ok(
      G,
      'encrypt',
      `fields and CDIV as the spec says (IV ${ivBytes} bytes${ctmBytes === undefined ? '' : `, ciphertextMetadata ${ctmBytes} bytes`})`,
    ),
  );
  const dec = await called(
    G,
    'decrypt',
    `${path}/decrypt`,
    {
      requestMetadata: { ...meta, kmsOperation: 'Decrypt', kmsRequestId: randomUUID() },
      ciphertext: enc.ciphertext,
      ...(ctmBytes === undefined ? {} : { ciphertextMetadata: enc.ciphertextMetadata }),
      encryptionAlgorithm: 'AES_GCM',
      additionalAuthenticatedData: aad.toString('base64'),
      initializationVector: enc.initializationVector,
      authenticationTag: enc.authenticationTag,
    },
    true,
  );
  if (dec === undefined) return;
  const back = b64(dec, 'plaintext');
  if (!Buffer.isBuffer(back) || !back.equals(plaintext)) {
    out.push(
      problem(
        'fail',
        G,
        'decrypt',
        typeof back === 'string' ? back : 'plaintext differs from what was encrypted',
        BAD_RESPONSE,
        "the proxy's Decrypt does not follow the spec",
      ),
    );
    return;
  }
  out.push(ok(G, 'decrypt', 'the plaintext came back'));
}

/** The proxy's Date header against this host's clock. */
function clock(r: Reply, out: Finding[]): void {
  const d = r.headers.date === undefined ? Number.NaN : Date.parse(r.headers.date);
  if (Number.isNaN(d)) return;
  const skew = Math.abs(Date.now() - d);
  if (skew > MAX_SKEW_MS)
    out.push(
      problem(
        'fail',
        'clock',
        'skew',
        `the proxy's clock is ${Math.round(skew / 1000)} s off this host's`,
        'INVALID_CREDENTIALS (signatures more than 5 minutes off are rejected)',
        'run an NTP client on both',
      ),
    );
  else if (skew > 60_000)
    out.push(
      problem(
        'warn',
        'clock',
        'skew',
        `the proxy's clock is ${Math.round(skew / 1000)} s off this host's`,
        'INVALID_CREDENTIALS once it passes 5 minutes',
        'run an NTP client on both',
      ),
    );
  else out.push(ok('clock', 'skew', `the proxy's Date is within ${Math.ceil(skew / 1000)} s of this host's`));
}
