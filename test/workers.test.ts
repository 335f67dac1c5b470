/**
 * [server] workers: several uWebSockets.js event loops (main thread + worker threads) on one port,
 * one PKCS#11 module per process, each loop with its share of the session pool. Real SoftHSM2, real
 * sockets, real worker threads; the SIGTERM case runs the real CLI.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import path from 'node:path';
import { Writable } from 'node:stream';
import { parseConfig } from '../src/config.js';
import { createLogger } from '../src/log.js';
import { Metrics, sumGauges } from '../src/metrics.js';
import { restartNeeded } from '../src/reload.js';
import { planWorkers, splitEvenly } from '../src/workers/split.js';
import { settingsToml as renderSettings } from '../src/dev/settings-toml.js';
import { spawnProxyCli } from './helpers/cli.js';
import { META, REGION, SERVICE, settingsToml, startTestProxy, type SettingsSpec, type StoreSpec, type TestProxy } from './helpers/proxy.js';
import { makeKeyedToken } from './helpers/keyed-token.js';
import { signRequest } from './helpers/sign.js';
import { TEST_KEYS, type TestToken } from './helpers/softhsm.js';

const PREFIX = '/workers/test/prefix';
const API = `${PREFIX}/kms/xks/v1`;
const A = { accessKeyId: 'AKIDWORKERSAAAAAAAAA1', secret: 'd29ya2Vycy1zZWNyZXQtYS13b3JrZXJzLXNlY3JldC1hLXc=' };
const B = { accessKeyId: 'AKIDWORKERSBBBBBBBBB2', secret: 'd29ya2Vycy1zZWNyZXQtYi13b3JrZXJzLXNlY3JldC1iLXc=' };

interface Reply {
  status: number;
  json: Record<string, unknown>;
  text: string;
}

/** A signed POST; `agent` false: a fresh connection per request (the kernel picks the event loop). */
async function post(
  port: number,
  urlPath: string,
  body: unknown,
  cred: { accessKeyId: string; secret: string },
  agent: Agent | false = false,
): Promise<Reply> {
  const raw = JSON.stringify(body);
  const { headers } = await signRequest({
    url: `http://127.0.0.1:${port}${urlPath}`,
    body: raw,
    accessKeyId: cred.accessKeyId,
    secretAccessKey: cred.secret,
    region: REGION,
    service: SERVICE,
  });
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method: 'POST', path: urlPath, headers, agent }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => {
        let json: Record<string, unknown> = {};
        try {
          json = JSON.parse(text) as Record<string, unknown>;
        } catch {
          // not JSON
        }
        resolve({ status: res.statusCode ?? 0, json, text });
      });
    });
    req.on('error', reject);
    req.end(raw);
  });
}

/** GET over a fresh connection. */
function get(port: number, urlPath: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    request({ host: '127.0.0.1', port, path: urlPath, agent: false }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    })
      .on('error', reject)
      .end();
  });
}

/** Prometheus samples by name{labels}. */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

const encryptBody = (plaintext: Buffer, aad?: Buffer) => ({
  requestMetadata: META,
  plaintext: plaintext.toString('base64'),
  encryptionAlgorithm: 'AES_GCM',
  ...(aad ? { additionalAuthenticatedData: aad.toString('base64') } : {}),
});
const health = { requestMetadata: { kmsRequestId: 'workers-h', kmsOperation: 'KmsHealthCheck' } };

describe('planning (pure)', () => {
  it('splitEvenly keeps the total, larger shares first, each at least 1', () => {
    expect(splitEvenly(8, 2)).toEqual([4, 4]);
    expect(splitEvenly(7, 3)).toEqual([3, 2, 2]);
    expect(splitEvenly(1, 3)).toEqual([1, 1, 1]);
  });

  it('planWorkers: [server] workers, default availableParallelism, pool and threads split, mTLS forces one loop', () => {
    const cfg = (workers: number | undefined, pool = 8, threads = 4) =>
      parseConfig(
        renderSettings({
          port: 8443,
          workers,
          region: 'us-east-1',
          service: 'kms-xks-proxy',
          tracing: { stdout: true, level: 'INFO', directory: 'logs', rotation: 'NEVER' },
          stores: [
            {
              prefix: '',
              accessKeyId: 'AKIA4GBY3I6JCE5M2HPM',
              secretAccessKey: '1234567890123456789012345678901234567890123=',
              keys: ['k1'],
            },
          ],
          pkcs11: {
            pin: '1234',
            modulePath: '/usr/lib/softhsm/libsofthsm2.so',
            poolMaxSize: pool,
            poolTimeoutMs: 0,
            workerThreads: threads,
          },
        }),
        'f',
        {},
      ).config;
    expect(planWorkers(cfg(undefined), 3)).toEqual({
      count: 3,
      shares: [
        { poolMaxSize: 3, threads: 2 },
        { poolMaxSize: 3, threads: 1 },
        { poolMaxSize: 2, threads: 1 },
      ],
      notes: [],
    });
    expect(planWorkers(cfg(1), 16).count).toBe(1);
    const tight = planWorkers(cfg(4, 2, 2), 2);
    expect(tight.shares.map((s) => s.poolMaxSize)).toEqual([1, 1, 1, 1]);
    expect(tight.notes.join('\n')).toMatch(/session_pool_max_size = 2: each event loop gets 1 session, 4 in total/);
    // workers is a restart setting.
    expect(restartNeeded(cfg(1), cfg(2))).toEqual(['server.workers']);
  });
});

describe('one writer for all threads, one /metrics for all loops (pure)', () => {
  it('logger context fields end every line; raw() passes preformatted lines through whole', async () => {
    let text = '';
    const out = new Writable({
      write(c: Buffer, _e, cb) {
        text += c.toString();
        cb();
      },
    });
    const log = createLogger(
      { is_stdout_writer_enabled: true, is_file_writer_enabled: false, level: 'INFO', rotation_kind: 'NEVER' },
      { stdout: out, context: { worker: 0 } },
    );
    log.info('hello', { a: 1 });
    log.raw('2026-01-01T00:00:00.000Z INFO request op=Encrypt worker=1\n2026-01-01T00:00:00.001Z INFO x worker=1\n');
    log.debug('hidden');
    await log.close();
    const lines = text.split('\n').filter((l) => l !== '');
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(/ INFO hello a=1 worker=0$/);
    expect(lines[1]).toBe('2026-01-01T00:00:00.000Z INFO request op=Encrypt worker=1');
  });

  it('Metrics snapshot/merge add counters and histograms; gauges sum, health is the worst', () => {
    const g = { sessionsOpen: 2, sessionsIdle: 1, inFlight: 0, reinitializations: 0, keyCopies: 3 };
    const a = new Metrics('v', () => ({ ...g, health: 1 }));
    const b = new Metrics('v', () => ({ ...g, health: 0.5 }));
    a.route('Encrypt', '/p').record('ok', 0.0002);
    b.route('Encrypt', '/p').record('ok', 0.002);
    b.route('Decrypt', '/p').record('InvalidCiphertextException', 0.001);
    b.hsm('encrypt').observe(0.0001);
    b.unmatched = 3;
    const snaps = [a.snapshot(), structuredClone(b.snapshot())];
    const total = new Metrics('v', () => sumGauges(snaps.map((s) => s.gauges)));
    for (const s of snaps) total.merge(s);
    const m = samples(total.render());
    expect(m.get('xks_requests_total{operation="Encrypt",prefix="/p",outcome="ok"}')).toBe(2);
    expect(m.get('xks_requests_total{operation="Decrypt",prefix="/p",outcome="InvalidCiphertextException"}')).toBe(1);
    expect(m.get('xks_request_duration_seconds_count{operation="Encrypt",prefix="/p"}')).toBe(2);
    expect(m.get('xks_request_duration_seconds_bucket{operation="Encrypt",prefix="/p",le="0.00025"}')).toBe(1);
    expect(m.get('xks_hsm_call_duration_seconds_count{call="encrypt"}')).toBe(1);
    expect(m.get('xks_unmatched_requests_total')).toBe(3);
    expect(m.get('xks_hsm_sessions_open')).toBe(4);
    expect(m.get('xks_hsm_sessions_in_use')).toBe(2);
    expect(m.get('xks_health_status')).toBe(0.5);
    expect(m.get('xks_hsm_key_copies')).toBe(6);
  });
});

let token: TestToken;
beforeAll(async () => {
  token = await makeKeyedToken('xks-workers');
});
afterAll(() => token?.cleanup());

describe('two event loops in process', () => {
  let proxy: TestProxy;
  let spec: SettingsSpec;
  const store = (over: Partial<StoreSpec> = {}): StoreSpec => ({
    prefix: PREFIX,
    accessKeyId: A.accessKeyId,
    secret: A.secret,
    keys: [TEST_KEYS.ordinary],
    credentials: [B],
    ...over,
  });

  beforeAll(async () => {
    spec = {
      token,
      workers: 2,
      poolMaxSize: 4,
      workerThreads: 2,
      metrics: { port: 0 },
      stores: [
        store(),
        {
          prefix: '/workers/quota/prefix',
          accessKeyId: 'AKIDWORKERSQQQQQQQQQ3',
          secret: A.secret,
          keys: [],
          requestsPerSecond: 1,
          burst: 4,
        },
      ],
    };
    proxy = await startTestProxy(spec, 'workers-settings.toml');
  });
  afterAll(async () => proxy?.stop());

  it('requests over many connections are served by both threads; encrypt/decrypt round trips across them', async () => {
    expect(proxy.workers).toBe(2);
    const N = 40;
    const data = Array.from({ length: N }, () => randomBytes(100));
    const aad = randomBytes(20);
    const sealed = await Promise.all(
      data.map((d) => post(proxy.port, `${API}/keys/${TEST_KEYS.ordinary}/encrypt`, encryptBody(d, aad), A)),
    );
    expect(sealed.map((r) => r.status)).toEqual(Array(N).fill(200));
    // Each ciphertext decrypted on another fresh connection (often the other thread).
    const opened = await Promise.all(
      sealed.map((r) =>
        post(
          proxy.port,
          `${API}/keys/${TEST_KEYS.ordinary}/decrypt`,
          {
            requestMetadata: { ...META, kmsOperation: 'Decrypt' },
            ciphertext: r.json.ciphertext,
            initializationVector: r.json.initializationVector,
            authenticationTag: r.json.authenticationTag,
            additionalAuthenticatedData: aad.toString('base64'),
            encryptionAlgorithm: 'AES_GCM',
          },
          B,
        ),
      ),
    );
    expect(opened.map((r) => r.status)).toEqual(Array(N).fill(200));
    expect(opened.map((r) => Buffer.from(String(r.json.plaintext), 'base64').equals(data[opened.indexOf(r)]!))).toEqual(
      Array(N).fill(true),
    );

    // /metrics (the main thread's [metrics] listener): the sum over both loops.
    for (let i = 0; i < 6; i++) {
      const res = await get(proxy.metricsPort!, '/metrics');
      expect(res.status).toBe(200);
      const m = samples(res.text);
      expect(m.get(`xks_requests_total{operation="Encrypt",prefix="${PREFIX}",outcome="ok"}`)).toBe(N);
      expect(m.get(`xks_requests_total{operation="Decrypt",prefix="${PREFIX}",outcome="ok"}`)).toBe(N);
      expect(m.get(`xks_request_duration_seconds_count{operation="Encrypt",prefix="${PREFIX}"}`)).toBe(N);
      expect(m.get('xks_workers')).toBe(2);
      const w0 = m.get('xks_worker_requests_total{worker="0"}')!;
      const w1 = m.get('xks_worker_requests_total{worker="1"}')!;
      expect(w0).toBeGreaterThan(0);
      expect(w1).toBeGreaterThan(0);
      expect(w0 + w1).toBe(2 * N);
      // Each loop's engine holds its share of the pool: 4 sessions at most in total.
      expect(m.get('xks_hsm_sessions_open')).toBeLessThanOrEqual(4);
      expect(m.get('xks_hsm_sessions_open')).toBeGreaterThanOrEqual(2);
    }
    await proxy.log.flush();
    await new Promise((r) => setTimeout(r, 100));
    await proxy.log.flush();
    const lines = proxy
      .logText()
      .split('\n')
      .filter((l) => / INFO request .*op=Encrypt/.test(l));
    expect(lines).toHaveLength(N);
    expect(lines.some((l) => l.endsWith(' worker=1'))).toBe(true);
    expect(lines.some((l) => l.endsWith(' worker=0'))).toBe(true);
    // Every line is whole: timestamp first, worker last.
    for (const l of proxy
      .logText()
      .split('\n')
      .filter((x) => x !== ''))
      expect(l).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z (TRACE|DEBUG|INFO|WARN|ERROR) .* worker=[01]$/);
  });

  it('quotas are split between the loops: the keystore never takes more than its burst in total', async () => {
    const urlPath = '/workers/quota/prefix/kms/xks/v1/health';
    const cred = { accessKeyId: 'AKIDWORKERSQQQQQQQQQ3', secret: A.secret };
    const replies = await Promise.all(Array.from({ length: 24 }, () => post(proxy.port, urlPath, health, cred)));
    const ok = replies.filter((r) => r.status === 200).length;
    expect(replies.filter((r) => r.status !== 200).every((r) => r.json.errorName === 'ThrottlingException')).toBe(true);
    // burst 4 over 2 loops: 2 each (+ at most one refilled token each at 1/2 per second per loop);
    // without the split 8 would pass.
    expect(ok).toBeGreaterThanOrEqual(2);
    expect(ok).toBeLessThanOrEqual(5);
  });

  it('reload applies in both threads: a removed credential is refused on connections of either', async () => {
    expect((await post(proxy.port, `${API}/health`, health, B)).status).toBe(200);
    writeFileSync(
      proxy.settingsPath,
      settingsToml({ ...spec, stores: [store({ credentials: [] as StoreSpec['credentials'] }), spec.stores[1]!] }),
    );
    const before = samples((await get(proxy.metricsPort!, '/metrics')).text);
    const out = await proxy.reload();
    expect(out).toEqual({ ok: true, restartNeeded: [] });
    const replies = await Promise.all(Array.from({ length: 30 }, () => post(proxy.port, `${API}/health`, health, B)));
    expect(replies.map((r) => r.json.errorName)).toEqual(Array(30).fill('AuthenticationFailedException'));
    const after = samples((await get(proxy.metricsPort!, '/metrics')).text);
    const key = `xks_requests_total{operation="GetHealthStatus",prefix="${PREFIX}",outcome="AuthenticationFailedException"}`;
    expect((after.get(key) ?? 0) - (before.get(key) ?? 0)).toBe(30);
    // Both loops answered some of the refused requests.
    for (const w of ['0', '1']) {
      const k = `xks_worker_requests_total{worker="${w}"}`;
      expect(after.get(k)! - before.get(k)!).toBeGreaterThan(0);
    }
    expect((await post(proxy.port, `${API}/health`, health, A)).status).toBe(200);
  });

  it('a keep-alive connection on a worker thread sees the reload too', async () => {
    // Several keep-alive connections: some land on the worker thread; all refuse the removed key.
    const agents = Array.from({ length: 8 }, () => new Agent({ keepAlive: true, maxSockets: 1 }));
    try {
      for (const agent of agents) expect((await post(proxy.port, `${API}/health`, health, A, agent)).status).toBe(200);
      writeFileSync(
        proxy.settingsPath,
        settingsToml({
          ...spec,
          stores: [store({ accessKeyId: B.accessKeyId, secret: B.secret, credentials: [] as StoreSpec['credentials'] }), spec.stores[1]!],
        }),
      );
      expect((await proxy.reload()).ok).toBe(true);
      for (const agent of agents)
        expect((await post(proxy.port, `${API}/health`, health, A, agent)).json.errorName).toBe('AuthenticationFailedException');
    } finally {
      for (const a of agents) a.destroy();
    }
  });
});

describe('SIGTERM with two event loops', () => {
  it('requests in flight on both threads finish; the exit code is 0', async () => {
    const settings = path.join(token.dir, 'workers-sigterm.toml');
    writeFileSync(
      settings,
      settingsToml({
        token,
        workers: 2,
        poolMaxSize: 2,
        workerThreads: 2,
        stores: [{ prefix: PREFIX, accessKeyId: A.accessKeyId, secret: A.secret, keys: [TEST_KEYS.ordinary] }],
      }),
    );
    const proxy = await spawnProxyCli({ ...token.env, XKS_PROXY_SETTINGS_TOML: settings });
    const { child, port, exited } = proxy;
    // Idle keep-alive connections too: the stop must close them on the worker thread.
    const idle = Array.from({ length: 6 }, () => new Agent({ keepAlive: true, maxSockets: 1 }));
    for (const agent of idle) expect((await post(port, `${API}/health`, health, A, agent)).status).toBe(200);
    const inFlight = Array.from({ length: 120 }, () =>
      post(port, `${API}/keys/${TEST_KEYS.ordinary}/encrypt`, encryptBody(randomBytes(4300)), A).then(
        (r) => r.status,
        (e: { code?: string }) => (e.code === 'ECONNREFUSED' ? 'refused' : String(e.code ?? e)),
      ),
    );
    await Promise.race(inFlight);
    child.kill('SIGTERM');
    const results = await Promise.all(inFlight);
    expect(await exited).toBe(0);
    for (const a of idle) a.destroy();
    expect(
      results.every((s) => s === 200 || s === 'refused'),
      JSON.stringify(results),
    ).toBe(true);
    expect(results.filter((s) => s === 200).length).toBeGreaterThan(0);
    const out = proxy.output();
    expect(out).toMatch(/workers=2/);
    expect(out).toMatch(/ INFO request .* worker=1\n/);
    expect(out).toMatch(/signal=SIGTERM/);
    expect(out).toMatch(/xks-proxy stopped/);
    expect(out).not.toMatch(/uv_loop_close|Assertion|still in flight/);
  });
});
