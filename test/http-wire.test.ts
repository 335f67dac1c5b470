/**
 * HTTP on the wire as load balancers and clients speak it: /ping over HTTP/1.0, without Host and
 * as HEAD; no header naming our HTTP library; pipelined requests; ambiguous framing (RFC 9112);
 * a body over the limit and a failed SigV4 header check answered so that the client reads them.
 * Raw sockets (node:net), node's fetch and curl against a real proxy on a real SoftHSM2 token
 * (behind the fault module, which holds encrypts in the HSM when a test asks it to).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { promisify } from 'node:util';
import { freePort } from '../src/workers/serving.js';
import { useFaultyModule, type FaultControl } from './helpers/faulty.js';
import { makeKeyedToken } from './helpers/keyed-token.js';
import { call, META, REGION, SERVICE, startTestProxy, type CallOptions, type TestProxy } from './helpers/proxy.js';
import { signRequest } from './helpers/sign.js';
import { TEST_KEYS, type TestToken } from './helpers/softhsm.js';

const execFileP = promisify(execFile);

const PREFIX = '/wire/test/prefix';
const API = `${PREFIX}/kms/xks/v1`;
const KEY = TEST_KEYS.ordinary;
const CREDS: CallOptions = { accessKeyId: 'AKIDWIRETEST000000001', secret: 'd2lyZS13aXJlLXdpcmUtd2lyZS13aXJlLXdpcmUtd2lyZQ==' };
/** [limits] defaults of the test settings (8192 + 16384) plus the proxy's 16 KiB of JSON room. */
const MAX_BODY = 8192 + 16384 + 16 * 1024;

let base: TestToken;
let faults: FaultControl;
let proxy: TestProxy;
let pingPort: number;

beforeAll(async () => {
  base = await makeKeyedToken('xks-wire');
  const faulty = useFaultyModule(base);
  faults = faulty.faults;
  pingPort = await freePort('127.0.0.1');
  proxy = await startTestProxy(
    {
      token: faulty.token,
      pingPort,
      operationTimeoutMs: 5000,
      stores: [{ prefix: PREFIX, accessKeyId: CREDS.accessKeyId, secret: CREDS.secret, keys: [KEY] }],
    },
    'wire-settings.toml',
  );
});

afterAll(async () => {
  await proxy?.stop();
  base?.cleanup();
});

interface Wire {
  /** Everything the server wrote (latin1). */
  text: string;
  /** The server closed the connection (FIN) before `ms` passed. */
  closed: boolean;
  /** The connection ended with an error (e.g. ECONNRESET). */
  error: string | undefined;
}

/** Writes `parts` to `port` (`gapMs` apart), collects what comes back until the server closes or `ms` pass. */
function wire(port: number, parts: (string | Buffer)[], ms = 1500, gapMs = 0): Promise<Wire> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    const out: Wire = { text: '', closed: false, error: undefined };
    const timer = setTimeout(() => {
      s.destroy();
      resolve(out);
    }, ms);
    s.on('data', (c) => (out.text += c.toString('latin1')));
    s.on('error', (e: NodeJS.ErrnoException) => (out.error = e.code ?? e.message));
    s.on('end', () => (out.closed = true));
    s.on('close', () => {
      clearTimeout(timer);
      resolve(out);
    });
    s.on('connect', async () => {
      for (const p of parts) {
        if (s.destroyed) break;
        s.write(p);
        if (gapMs > 0) await new Promise((r) => setTimeout(r, gapMs));
      }
    });
  });
}

interface Reply {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** Every complete HTTP/1.x response in `text`, in order (bodies by Content-Length; HEAD answers have none). */
function replies(text: string, headRequests = 0): Reply[] {
  const out: Reply[] = [];
  let at = 0;
  let heads = headRequests;
  while (at < text.length) {
    const m = /^HTTP\/1\.[01] (\d{3})[^\r]*\r\n/.exec(text.slice(at));
    if (m === null) break;
    const end = text.indexOf('\r\n\r\n', at);
    if (end < 0) break;
    const headers: Record<string, string> = {};
    for (const line of text.slice(at + m[0].length, end).split('\r\n')) {
      const i = line.indexOf(':');
      if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
    }
    const len = heads-- > 0 ? 0 : Number(headers['content-length'] ?? '0');
    out.push({ status: Number(m[1]), headers, body: text.slice(end + 4, end + 4 + len) });
    at = end + 4 + len;
  }
  return out;
}

/** A signed POST as raw bytes (Host as signed). */
async function signedRequest(path: string, body: string, c: CallOptions = CREDS, extra = ''): Promise<string> {
  const { headers } = await signRequest({
    url: `http://127.0.0.1:${proxy.port}${path}`,
    body,
    accessKeyId: c.accessKeyId,
    secretAccessKey: c.secret,
    region: c.region ?? REGION,
    service: SERVICE,
  });
  const block = Object.entries(headers)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('');
  return `POST ${path} HTTP/1.1\r\n${block}${extra}content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
}

const encryptJson = (plaintext: Buffer): string =>
  JSON.stringify({ requestMetadata: META, plaintext: plaintext.toString('base64'), encryptionAlgorithm: 'AES_GCM' });

/** Decrypts an encrypt answer through the proxy. */
async function opened(encryptAnswer: string): Promise<Buffer> {
  const j = JSON.parse(encryptAnswer) as Record<string, unknown>;
  const r = await call(
    proxy.base,
    `${API}/keys/${KEY}/decrypt`,
    {
      requestMetadata: { ...META, kmsOperation: 'Decrypt' },
      encryptionAlgorithm: 'AES_GCM',
      ciphertext: j.ciphertext,
      initializationVector: j.initializationVector,
      authenticationTag: j.authenticationTag,
    },
    CREDS,
  );
  expect(r.status).toBe(200);
  return Buffer.from(String(r.json.plaintext), 'base64');
}

const pong = (): RegExp => /^pong from xks-proxy v\S+\n$/;

describe('/ping for health checkers (port_http_ping)', () => {
  it('answers HTTP/1.0 without Host (HAProxy, keepalived) and closes, as HTTP/1.0 asks', async () => {
    const w = await wire(pingPort, ['GET /ping HTTP/1.0\r\n\r\n'], 2000);
    const [r] = replies(w.text);
    expect(r?.status).toBe(200);
    expect(r?.body).toMatch(pong());
    expect(w.text.startsWith('HTTP/1.1 200') || w.text.startsWith('HTTP/1.0 200')).toBe(true);
    expect(w.closed).toBe(true);
  });

  it('answers HTTP/1.1 without Host, and keeps an HTTP/1.0 keep-alive connection open', async () => {
    const noHost = await wire(pingPort, ['GET /ping HTTP/1.1\r\nConnection: close\r\n\r\n'], 2000);
    expect(replies(noHost.text).map((r) => r.status)).toEqual([200]);
    const keep = await wire(pingPort, ['GET /ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n', 'GET /ping HTTP/1.0\r\n\r\n'], 2000, 100);
    expect(replies(keep.text).map((r) => r.status)).toEqual([200, 200]);
  });

  it("HEAD /ping: the GET answer's status and headers, no body, on the ping port and on the API port", async () => {
    for (const port of [pingPort, proxy.port]) {
      const w = await wire(
        port,
        ['HEAD /ping HTTP/1.1\r\nHost: lb\r\n\r\nGET /ping HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n'],
        2000,
      );
      const [head, get] = replies(w.text, 1);
      expect(head?.status, `port ${port}`).toBe(200);
      expect(head?.body).toBe('');
      expect(Number(head?.headers['content-length'])).toBe(Buffer.byteLength(get!.body));
      expect(get?.body).toMatch(pong());
    }
  });

  it('HEAD of any other path on the API port: 404 / 405 headers without a body, so the next answer is read right', async () => {
    const w = await wire(
      proxy.port,
      [`HEAD /nowhere HTTP/1.1\r\nHost: x\r\n\r\nHEAD ${API}/health HTTP/1.1\r\nHost: x\r\n\r\nGET /ping HTTP/1.1\r\nHost: x\r\n\r\n`],
      1000,
    );
    const [missing, notAllowed, ping] = replies(w.text, 2);
    expect(missing?.status).toBe(404);
    expect(Number(missing?.headers['content-length'])).toBeGreaterThan(0);
    expect(notAllowed?.status).toBe(405);
    expect(ping?.status).toBe(200);
    expect(ping?.body).toMatch(pong());
  });

  it('curl -0 (HTTP/1.0) and curl -I (HEAD)', async () => {
    const { stdout } = await execFileP('curl', ['-0', '-sS', '--max-time', '5', `http://127.0.0.1:${pingPort}/ping`]);
    expect(stdout).toMatch(pong());
    const head = await execFileP('curl', ['-sS', '-I', '--max-time', '5', `http://127.0.0.1:${pingPort}/ping`]);
    expect(head.stdout).toMatch(/^HTTP\/1\.1 200/);
    expect(head.stdout).toMatch(/content-length: \d+/i);
  });

  it('everything else on the ping port is 404 InvalidUriPathException', async () => {
    const r = await fetch(`http://127.0.0.1:${pingPort}/kms/xks/v1/health`, { method: 'POST', body: '{}' });
    expect(r.status).toBe(404);
    expect(((await r.json()) as { errorName: string }).errorName).toBe('InvalidUriPathException');
    expect((await fetch(`http://127.0.0.1:${pingPort}/metrics`)).status).toBe(404);
  });
});

describe('no response header names our HTTP library', () => {
  it('API answers (200, 4xx), /ping and 404s carry no uWebSockets header', async () => {
    const ok = await call(proxy.base, `${API}/keys/${KEY}/encrypt`, JSON.parse(encryptJson(randomBytes(8))), CREDS);
    expect(ok.status).toBe(200);
    const w = await wire(proxy.port, [await signedRequest(`${API}/keys/${KEY}/encrypt`, encryptJson(randomBytes(8)))], 1000);
    for (const res of [await fetch(`${proxy.base}/ping`), await fetch(`${proxy.base}/nowhere`)]) {
      expect([...res.headers.keys()].filter((k) => /uwebsockets/i.test(k))).toEqual([]);
    }
    expect(w.text).not.toMatch(/uwebsockets/i);
    expect(w.text).toMatch(/^HTTP\/1\.1 200/);
  });
});

describe('pipelining', () => {
  it('an encrypt then a ping written while the encrypt waits on the HSM: both answered, in order', async () => {
    faults.set('delay C_Encrypt 300');
    try {
      const data = randomBytes(24);
      const w = await wire(
        proxy.port,
        [await signedRequest(`${API}/keys/${KEY}/encrypt`, encryptJson(data)), 'GET /ping HTTP/1.1\r\nHost: x\r\n\r\n'],
        2500,
        100,
      );
      const [enc, ping] = replies(w.text);
      expect(enc?.status).toBe(200);
      expect(ping?.status).toBe(200);
      expect(ping?.body).toMatch(pong());
      expect((await opened(enc!.body)).equals(data)).toBe(true);
    } finally {
      faults.clear();
    }
  });

  it('two signed encrypts, the second written while the first waits on the HSM: two answers in order, each the right one', async () => {
    faults.set('delay C_Encrypt 250');
    try {
      const data = [randomBytes(20), randomBytes(20)];
      const reqs = await Promise.all(data.map((d) => signedRequest(`${API}/keys/${KEY}/encrypt`, encryptJson(d))));
      const w = await wire(proxy.port, reqs, 3000, 100);
      const got = replies(w.text);
      expect(got.map((r) => r.status)).toEqual([200, 200]);
      for (let i = 0; i < 2; i++) expect((await opened(got[i]!.body)).equals(data[i]!), `answer ${i}`).toBe(true);
    } finally {
      faults.clear();
    }
  });

  it('two requests queued behind an encrypt that waits on the HSM (one write): uWS closes the connection; the log names pipelining', async () => {
    faults.set('delay C_Encrypt 200');
    try {
      const reqs = await Promise.all(
        Array.from({ length: 3 }, () => signedRequest(`${API}/keys/${KEY}/encrypt`, encryptJson(randomBytes(8)))),
      );
      const w = await wire(proxy.port, [reqs.join('')], 2000);
      expect(w.text).toBe('');
      await new Promise((r) => setTimeout(r, 400));
      await proxy.log.flush();
      expect(proxy.logText()).toMatch(/outcome=aborted .*pipelining/);
      // The process serves on.
      expect((await call(proxy.base, `${API}/keys/${KEY}/encrypt`, JSON.parse(encryptJson(randomBytes(8))), CREDS)).status).toBe(200);
    } finally {
      faults.clear();
    }
  });

  it('requests answered at once (ping, 404, 401) pipelined in one write are all answered in order', async () => {
    const bad = await signedRequest(`${API}/health`, '{}', { ...CREDS, secret: 'b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldC1vdGhlci1zZWM=' });
    const w = await wire(
      proxy.port,
      ['GET /ping HTTP/1.1\r\nHost: x\r\n\r\n' + bad + 'GET /x HTTP/1.1\r\nHost: x\r\n\r\nGET /ping HTTP/1.1\r\nHost: x\r\n\r\n'],
      1000,
    );
    expect(replies(w.text).map((r) => r.status)).toEqual([200, 401, 404, 200]);
  });
});

describe('framing (RFC 9112 section 6.3)', () => {
  const health = JSON.stringify({ requestMetadata: { kmsRequestId: 'w-1', kmsOperation: 'KmsHealthCheck' } });

  it('two Content-Length headers with different values: 400 and the connection closed', async () => {
    const req = await signedRequest(`${API}/health`, health, CREDS, `content-length: ${health.length + 5}\r\n`);
    const w = await wire(proxy.port, [req + '12345'], 1500);
    const [r] = replies(w.text);
    expect(r?.status).toBe(400);
    expect(JSON.parse(r!.body)).toMatchObject({ errorName: 'ValidationException' });
    expect(r?.headers.connection).toBe('close');
    expect(w.closed).toBe(true);
  });

  it('the same Content-Length twice is one length: served', async () => {
    const req = await signedRequest(`${API}/health`, health, CREDS, `content-length: ${health.length}\r\n`);
    expect(replies((await wire(proxy.port, [req], 1000)).text).map((r) => r.status)).toEqual([200]);
  });

  it('a Transfer-Encoding other than chunked: 400 and the connection closed, never a guess', async () => {
    const { headers } = await signRequest({
      url: `http://127.0.0.1:${proxy.port}${API}/health`,
      body: health,
      accessKeyId: CREDS.accessKeyId,
      secretAccessKey: CREDS.secret,
      region: REGION,
      service: SERVICE,
    });
    const block = Object.entries(headers)
      .map(([k, v]) => `${k}: ${v}\r\n`)
      .join('');
    const chunks = `${health.length.toString(16)}\r\n${health}\r\n0\r\n\r\n`;
    for (const te of ['gzip, chunked', 'chunked, chunked', 'identity', 'xchunked']) {
      const w = await wire(proxy.port, [`POST ${API}/health HTTP/1.1\r\n${block}transfer-encoding: ${te}\r\n\r\n`, chunks], 1500, 50);
      const [r] = replies(w.text);
      expect(r?.status, te).toBe(400);
      expect(r?.headers.connection, te).toBe('close');
      expect(w.closed, te).toBe(true);
    }
    // Headers and a body that is no chunked framing at all in one write: uWS's chunk parser fails in
    // the same read and closes the connection before the 400 leaves its cork buffer. Closed, never served.
    const one = await wire(proxy.port, [`POST ${API}/health HTTP/1.1\r\n${block}transfer-encoding: identity\r\n\r\n${health}`], 1500);
    expect(one.text).toBe('');
    expect(one.closed).toBe(true);
    // Two Transfer-Encoding headers.
    const w = await wire(
      proxy.port,
      [`POST ${API}/health HTTP/1.1\r\n${block}transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n`, chunks],
      1500,
      50,
    );
    expect(replies(w.text)[0]?.status).toBe(400);
    // "chunked" in any case is chunked (transfer coding names are case-insensitive).
    const ok = await wire(proxy.port, [`POST ${API}/health HTTP/1.1\r\n${block}transfer-encoding: Chunked\r\n\r\n`, chunks], 1500, 50);
    expect(replies(ok.text)[0]?.status).toBe(200);
  });
});

describe('refused before the body: the client reads the answer', () => {
  it('fetch of a 4 MiB body gets the 413 PayloadTooLargeException (not a connection reset)', async () => {
    const body = JSON.stringify({ requestMetadata: META, plaintext: 'A'.repeat(4 * 1024 * 1024), encryptionAlgorithm: 'AES_GCM' });
    const res = await fetch(`${proxy.base}${API}/keys/${KEY}/encrypt`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body,
    });
    expect(res.status).toBe(413);
    expect(((await res.json()) as { errorName: string }).errorName).toBe('PayloadTooLargeException');
    expect(res.headers.get('connection')).toBe('close');
  });

  it('fetch of a 4 MiB body sent in pieces (a slower client): the 413 is read, not a reset', async () => {
    const piece = new TextEncoder().encode('A'.repeat(256 * 1024));
    let sent = 0;
    const stream = new ReadableStream<Uint8Array>({
      async pull(c) {
        if (sent >= 16) return c.close();
        sent++;
        await new Promise((r) => setTimeout(r, 10));
        c.enqueue(piece);
      },
    });
    const res = await fetch(`${proxy.base}${API}/keys/${KEY}/encrypt`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'content-length': String(16 * piece.length) },
      body: stream,
      duplex: 'half',
    } as RequestInit);
    expect(res.status).toBe(413);
    expect(((await res.json()) as { errorName: string }).errorName).toBe('PayloadTooLargeException');
  });

  it('raw: a declared body over the limit is read to its end, then 413 and a clean close (FIN, no reset)', async () => {
    // 4 MiB in one write: more than uWS reads at once (512 KiB), so most of it is still unread when
    // the 413 is due. Closing then would reset the connection and the client would lose the 413.
    const n = 4 * 1024 * 1024;
    const w = await wire(
      proxy.port,
      [
        Buffer.concat([
          Buffer.from(`POST ${API}/keys/${KEY}/encrypt HTTP/1.1\r\nHost: x\r\ncontent-length: ${n}\r\n\r\n`),
          Buffer.alloc(n, 0x41),
        ]),
      ],
      5000,
    );
    const [r] = replies(w.text);
    expect(r?.status).toBe(413);
    expect(JSON.parse(r!.body)).toMatchObject({ errorName: 'PayloadTooLargeException' });
    expect(w.closed).toBe(true);
    expect(w.error).toBeUndefined();
  });

  it('raw: a signed chunked body that grows over the limit: 413 after its last chunk', async () => {
    const chunk = 'B'.repeat(16 * 1024);
    const { headers } = await signRequest({
      url: `http://127.0.0.1:${proxy.port}${API}/keys/${KEY}/encrypt`,
      body: chunk.repeat(6),
      accessKeyId: CREDS.accessKeyId,
      secretAccessKey: CREDS.secret,
      region: REGION,
      service: SERVICE,
    });
    const block = Object.entries(headers)
      .map(([k, v]) => `${k}: ${v}\r\n`)
      .join('');
    const parts = [`POST ${API}/keys/${KEY}/encrypt HTTP/1.1\r\n${block}transfer-encoding: chunked\r\n\r\n`];
    for (let i = 0; i < 6; i++) parts.push(`${chunk.length.toString(16)}\r\n${chunk}\r\n`);
    parts.push('0\r\n\r\n');
    const w = await wire(proxy.port, parts, 3000, 30);
    expect(replies(w.text)[0]?.status).toBe(413);
    expect(JSON.parse(replies(w.text)[0]!.body)).toMatchObject({ errorName: 'PayloadTooLargeException' });
    expect(w.closed).toBe(true);
    expect(w.error).toBeUndefined();
  });

  it('a declared body beyond the drain bound (8 MiB) is refused at once, before it is sent', async () => {
    const w = await wire(
      proxy.port,
      [`POST ${API}/keys/${KEY}/encrypt HTTP/1.1\r\nHost: x\r\ncontent-length: ${64 * 1024 * 1024}\r\n\r\n`],
      1500,
    );
    expect(replies(w.text)[0]?.status).toBe(413);
    expect(w.closed).toBe(true);
  });

  it('a body over the limit that stalls is answered 413 after the drain time bound (5 s), before uWS drops it (10 s)', async () => {
    const t0 = Date.now();
    const w = await wire(
      proxy.port,
      [`POST ${API}/keys/${KEY}/encrypt HTTP/1.1\r\nHost: x\r\ncontent-length: ${MAX_BODY * 4}\r\n\r\n`, Buffer.alloc(MAX_BODY + 10, 0x41)],
      9000,
    );
    const elapsed = Date.now() - t0;
    expect(replies(w.text)[0]?.status).toBe(413);
    expect(elapsed).toBeGreaterThanOrEqual(4500);
    expect(elapsed).toBeLessThan(9000);
  }, 15_000);

  it('an unsigned chunked body (no bound known up front): read and thrown away, then 401 and a clean close', async () => {
    const chunk = 'C'.repeat(8 * 1024);
    const parts = [`POST ${API}/keys/${KEY}/encrypt HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\n\r\n`];
    for (let i = 0; i < 4; i++) parts.push(`${chunk.length.toString(16)}\r\n${chunk}\r\n`);
    parts.push('0\r\n\r\n');
    const w = await wire(proxy.port, parts, 3000, 30);
    const [r] = replies(w.text);
    expect(r?.status).toBe(401);
    expect(JSON.parse(r!.body)).toMatchObject({ errorName: 'AuthenticationFailedException' });
    expect(w.closed).toBe(true);
    expect(w.error).toBeUndefined();
  });

  it('a failed SigV4 header check (wrong region) is answered 401 at once, before the body arrives; the connection serves on', async () => {
    const body = JSON.stringify({ requestMetadata: META, plaintext: randomBytes(6000).toString('base64'), encryptionAlgorithm: 'AES_GCM' });
    const req = await signedRequest(`${API}/keys/${KEY}/encrypt`, body, { ...CREDS, region: 'eu-west-3' });
    const head = req.slice(0, req.indexOf('\r\n\r\n') + 4);
    const s = connect(proxy.port, '127.0.0.1');
    let text = '';
    s.on('data', (c) => (text += c.toString('latin1')));
    await new Promise((r) => s.once('connect', r));
    s.write(head);
    const answered = await new Promise<boolean>((resolve) => {
      const t = setTimeout(() => resolve(false), 1500);
      s.on('data', () => {
        if (replies(text).length > 0) {
          clearTimeout(t);
          resolve(true);
        }
      });
    });
    expect(answered).toBe(true);
    expect(replies(text)[0]).toMatchObject({ status: 401 });
    expect(JSON.parse(replies(text)[0]!.body)).toMatchObject({ errorName: 'AuthenticationFailedException' });
    // The body still comes; uWS skips it, and the next request on the connection is answered.
    s.write(req.slice(head.length));
    s.write('GET /ping HTTP/1.1\r\nHost: x\r\n\r\n');
    await new Promise((r) => setTimeout(r, 300));
    s.destroy();
    expect(replies(text).map((r) => r.status)).toEqual([401, 200]);
  });
});
