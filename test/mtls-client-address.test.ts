/**
 * The audit record's `client` is the TLS client's address behind the mTLS terminator, in the format
 * the proxy gives without mTLS: real proxies (in this process, a real SoftHSM2 token, real
 * certificates), real TLS connections from 127.0.0.1, 127.0.0.2 (the client socket bound to it)
 * and ::1. The terminator names the client to the HTTP server in a PROXY protocol v2 header; a client
 * that sends such a header itself, to name another address, is closed before it reaches the server.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import net from 'node:net';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { startProxy, type RunningProxy } from '../src/main.js';
import { checkTrail, type Rec } from './helpers/audit.js';
import { useAuditProxy } from './helpers/audit-proxy.js';
import { META, REGION, SERVICE, settingsToml } from './helpers/proxy.js';
import { signRequest } from './helpers/sign.js';
import { TEST_KEYS } from './helpers/softhsm.js';
import { CLIENT_DNS_NAME, makePki, type TestPki } from './helpers/tls-certs.js';

const PREFIX = '/client/address';
const AKID = 'AKIDCLIENTADDRESS0001';
const SECRET = 'Y2xpZW50LWFkZHJlc3MtY2xpZW50LWFkZHJlc3MtY2w=';
const PATH = `${PREFIX}/kms/xks/v1/keys/${TEST_KEYS.ordinary}/metadata`;
/** What uWS prints for ::1 (each group in 4 hex digits). */
const UWS_LOOPBACK6 = '0000:0000:0000:0000:0000:0000:0000:0001';

/** Whether this machine lets a socket bind 127.0.0.2 (Linux routes all of 127/8 to lo). */
async function canBind(address: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen({ host: address, port: 0 }, () => s.close(() => resolve(true)));
  });
}
const second4 = (await canBind('127.0.0.2')) ? '127.0.0.2' : undefined;
const ipv6 = await canBind('::1');

const fx = useAuditProxy({ label: 'xks-client-address', prefix: PREFIX, creds: { accessKeyId: AKID, secret: SECRET } });
let pki: TestPki;

beforeAll(() => {
  pki = makePki();
});

afterAll(() => {
  pki?.cleanup();
});

type Mode = 'mtls' | 'tls' | 'plain';

interface Proxy {
  running: RunningProxy;
  dir: string;
  host: string;
  log(): string;
}

/** A proxy with an audit trail, listening on `host` ([server] ip). */
async function start(name: string, mode: Mode, host: string): Promise<Proxy> {
  const dir = path.join(fx.work, name);
  const spec = fx.spec(
    dir,
    {},
    mode === 'plain'
      ? {}
      : {
          tls: {
            certFile: pki.server.cert,
            keyFile: pki.server.key,
            ...(mode === 'mtls' ? { mtls: { caFile: pki.ca, dnsName: CLIENT_DNS_NAME } } : {}),
          },
        },
  );
  const toml = settingsToml(spec);
  expect(toml).toContain('ip = "127.0.0.1"\n');
  const settingsPath = path.join(fx.token.dir, `${name}.toml`);
  writeFileSync(settingsPath, toml.replace('ip = "127.0.0.1"\n', `ip = ${JSON.stringify(host)}\n`));
  Object.assign(process.env, fx.token.env);
  const out = new PassThrough();
  let text = '';
  out.on('data', (c: Buffer) => (text += c.toString('utf8')));
  const running = await startProxy(loadConfig(settingsPath), { stdout: out });
  return { running, dir, host, log: () => text };
}

/** The proxy's records of use, after a clean stop (the trail verifies), by kmsRequestId. */
async function recordsOf(p: Proxy): Promise<Map<unknown, Rec>> {
  await p.running.stop();
  return new Map(checkTrail(p.dir).uses.map((u) => [u.kmsRequestId, u]));
}

function urlOf(p: Proxy, scheme: string): string {
  return `${scheme}://${net.isIPv6(p.host) ? `[${p.host}]` : p.host}:${p.running.port}${PATH}`;
}

async function signed(p: Proxy, scheme: string, id: string): Promise<{ body: string; headers: Record<string, string> }> {
  const body = JSON.stringify({ requestMetadata: { ...META, kmsOperation: 'DescribeKey', kmsRequestId: id } });
  const { headers } = await signRequest({
    url: urlOf(p, scheme),
    body,
    accessKeyId: AKID,
    secretAccessKey: SECRET,
    region: REGION,
    service: SERVICE,
  });
  return { body, headers };
}

/** A signed GetKeyMetadata from a socket bound to `from`, over plain HTTP, TLS or TLS with the good client certificate. */
async function getMetadata(p: Proxy, mode: Mode, from: string, id: string): Promise<number> {
  const scheme = mode === 'plain' ? 'http' : 'https';
  const { body, headers } = await signed(p, scheme, id);
  const common = { host: p.host, port: p.running.port, method: 'POST', path: PATH, headers, localAddress: from, agent: false } as const;
  const tlsOptions =
    mode === 'plain'
      ? {}
      : {
          ca: readFileSync(pki.ca),
          servername: 'localhost',
          ...(mode === 'mtls' ? { cert: readFileSync(pki.clients.good.cert), key: readFileSync(pki.clients.good.key) } : {}),
        };
  return new Promise((resolve, reject) => {
    const onResponse = (res: import('node:http').IncomingMessage): void => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    };
    const req = mode === 'plain' ? httpRequest(common, onResponse) : httpsRequest({ ...common, ...tlsOptions }, onResponse);
    req.setTimeout(10_000, () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
    req.end(body);
  });
}

describe('behind the mTLS terminator', () => {
  let proxy: Proxy;
  /** Filled by the tests below, checked in the proxy's trail by the last one. */
  const mtlsExpected: { id: string; client: string }[] = [];
  const mtlsAbsent: string[] = [];
  beforeAll(async () => {
    proxy = await start('mtls4', 'mtls', '127.0.0.1');
  });

  it("records the TLS client's address, as the proxy does without mTLS", async () => {
    const plain = await start('plain4', 'plain', '127.0.0.1');
    const sources = ['127.0.0.1', ...(second4 !== undefined ? [second4] : [])];
    for (const from of sources) {
      expect(await getMetadata(proxy, 'mtls', from, `mtls-from-${from}`)).toBe(200);
      expect(await getMetadata(plain, 'plain', from, `plain-from-${from}`)).toBe(200);
    }
    const plainRecords = await recordsOf(plain);
    for (const from of sources) expect(plainRecords.get(`plain-from-${from}`)).toMatchObject({ status: 200, client: from });
    // The mTLS proxy's records are read by the last test (one stop per proxy).
    mtlsExpected.push(...sources.map((from) => ({ id: `mtls-from-${from}`, client: from })));
  });

  /** One TLS connection: a request, then `chunks` (each its own TLS record) and a second request. */
  async function sendAfterFirst(
    chunks: Buffer[],
    firstId: string,
    secondId: string,
  ): Promise<{ first: string; rest: string; closed: boolean }> {
    const raw = async (id: string): Promise<string> => {
      const { body, headers } = await signed(proxy, 'https', id);
      const lines = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`);
      return `POST ${PATH} HTTP/1.1\r\n${lines.join('')}content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
    };
    const [one, two] = [await raw(firstId), await raw(secondId)];
    return new Promise((resolve, reject) => {
      const s = tls.connect({
        host: '127.0.0.1',
        port: proxy.running.port,
        ca: readFileSync(pki.ca),
        servername: 'localhost',
        cert: readFileSync(pki.clients.good.cert),
        key: readFileSync(pki.clients.good.key),
      });
      const timer = setTimeout(() => {
        s.destroy();
        reject(new Error('the connection was neither answered nor closed in 10 s'));
      }, 10_000);
      let text = '';
      let first = '';
      s.on('data', (d: Buffer) => {
        text += d.toString('latin1');
        if (first !== '') return;
        const end = text.indexOf('\r\n\r\n');
        const length = /content-length: (\d+)/i.exec(text.slice(0, end));
        if (end < 0 || length === null || text.length < end + 4 + Number(length[1])) return;
        first = text.slice(0, end + 4 + Number(length[1]));
        text = text.slice(first.length);
        for (const c of chunks) s.write(c);
        s.write(two);
      });
      s.on('error', () => {
        // A reset after the terminator closed: the close below reports it.
      });
      s.on('close', () => {
        clearTimeout(timer);
        resolve({ first, rest: text, closed: true });
      });
      s.once('secureConnect', () => s.write(one));
    });
  }

  /** A PROXY protocol v2 header naming 10.9.9.9:4242 -> 10.0.0.1:443 (what uWS would take as the client). */
  function forgedHeader(): Buffer {
    const h = Buffer.alloc(28);
    Buffer.from('0d0a0d0a000d0a515549540a', 'hex').copy(h, 0);
    h[12] = 0x21; // v2, PROXY
    h[13] = 0x11; // TCP over IPv4
    h.writeUInt16BE(12, 14);
    Buffer.from([10, 9, 9, 9, 10, 0, 0, 1]).copy(h, 16);
    h.writeUInt16BE(4242, 24);
    h.writeUInt16BE(443, 26);
    return h;
  }

  it('closes a client that sends a PROXY header of its own, whole or split across TLS records', async () => {
    const forged = forgedHeader();
    // Split at every point of the 12-byte signature (the terminator sees each TLS record apart).
    const variants: Buffer[][] = [[forged], ...Array.from({ length: 11 }, (_, i) => [forged.subarray(0, i + 1), forged.subarray(i + 1)])];
    for (const [n, chunks] of variants.entries()) {
      const r = await sendAfterFirst(chunks, `spoof-first-${n}`, `spoof-second-${n}`);
      expect(r.first).toMatch(/^HTTP\/1\.1 200 /);
      expect(r.closed).toBe(true);
      expect(r.rest).toBe('');
      mtlsExpected.push({ id: `spoof-first-${n}`, client: '127.0.0.1' });
      mtlsAbsent.push(`spoof-second-${n}`);
    }
    // One log line each (queued to the event loop from the terminator's thread: it may come after the close).
    const logged = (): number => proxy.log().split('sent a PROXY protocol header').length - 1;
    for (let i = 0; i < 100 && logged() < variants.length; i++) await new Promise((r) => setTimeout(r, 50));
    expect(logged()).toBe(variants.length);
  });

  it('wrote those records, and none of a forged address', async () => {
    const records = await recordsOf(proxy);
    expect(mtlsExpected.length).toBeGreaterThan(0);
    for (const { id, client } of mtlsExpected) expect(records.get(id)).toMatchObject({ status: 200, client });
    for (const id of mtlsAbsent) expect(records.has(id)).toBe(false);
    for (const r of records.values()) expect(r.client).not.toBe('10.9.9.9');
  });
});

describe('IPv6', () => {
  it.skipIf(!ipv6)('records ::1 behind the terminator as the TLS listener does', async () => {
    const mtls = await start('mtls6', 'mtls', '::1');
    const direct = await start('tls6', 'tls', '::1');
    expect(await getMetadata(mtls, 'mtls', '::1', 'mtls-v6')).toBe(200);
    expect(await getMetadata(direct, 'tls', '::1', 'tls-v6')).toBe(200);
    const [viaTerminator, viaUws] = [(await recordsOf(mtls)).get('mtls-v6'), (await recordsOf(direct)).get('tls-v6')];
    expect(viaUws).toMatchObject({ status: 200, client: UWS_LOOPBACK6 });
    expect(viaTerminator).toMatchObject({ status: 200, client: UWS_LOOPBACK6 });
  });
});
