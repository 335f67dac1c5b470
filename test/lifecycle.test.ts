/**
 * Operating the proxy: Prometheus metrics, and graceful stop with requests in flight
 * (in-process and through SIGTERM to the real CLI).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { writeFileSync } from 'node:fs';
import { parseConfig, redactedSummary } from '../src/config.js';
import { restartNeeded } from '../src/reload.js';
import { freePort } from '../src/workers/serving.js';
import { call, META, REGION, SERVICE, settingsToml, startTestProxy, type CallOptions, type TestProxy } from './helpers/proxy.js';
import { spawn } from 'node:child_process';
import { BIN, spawnProxyCli } from './helpers/cli.js';
import { signRequest } from './helpers/sign.js';
import { makeKeyedToken } from './helpers/keyed-token.js';
import { TEST_KEYS, type TestToken } from './helpers/softhsm.js';

const PREFIX = '/lifecycle/test/prefix';
const API = `${PREFIX}/kms/xks/v1`;
const CREDS: CallOptions = { accessKeyId: 'AKIDLIFECYCLE00000001', secret: 'bGlmZWN5Y2xlLWxpZmVjeWNsZS1saWZlY3ljbGUtbGlmZQ==' };

let token: TestToken;

beforeAll(async () => {
  token = await makeKeyedToken('xks-lifecycle');
});

afterAll(() => token?.cleanup());

const encryptBody = (n: number) => ({
  requestMetadata: META,
  plaintext: randomBytes(n).toString('base64'),
  encryptionAlgorithm: 'AES_GCM',
});

/** Signs `n` encrypt requests up front, so that sending them takes no time. */
async function presign(base: string, n: number): Promise<{ url: string; headers: Record<string, string>; body: string }[]> {
  const url = `${base}${API}/keys/${TEST_KEYS.ordinary}/encrypt`;
  const out = [];
  for (let i = 0; i < n; i++) {
    const body = JSON.stringify(encryptBody(4300));
    const { headers } = await signRequest({
      url,
      body,
      accessKeyId: CREDS.accessKeyId,
      secretAccessKey: CREDS.secret,
      region: REGION,
      service: SERVICE,
    });
    delete headers.host;
    out.push({ url, headers, body });
  }
  return out;
}

/** Status, or 'refused' when the connection was refused (never opened); any other failure is returned as its code. */
function send(r: { url: string; headers: Record<string, string>; body: string }): Promise<number | string> {
  return fetch(r.url, { method: 'POST', headers: r.headers, body: r.body }).then(
    async (res) => {
      await res.arrayBuffer();
      return res.status;
    },
    (e: { cause?: { code?: string } }) => (e.cause?.code === 'ECONNREFUSED' ? 'refused' : String(e.cause?.code ?? e)),
  );
}

/** A strict reading of the Prometheus text exposition format 0.0.4. */
function parsePrometheus(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  const types = new Map<string, string>();
  expect(text.endsWith('\n')).toBe(true);
  for (const line of text.slice(0, -1).split('\n')) {
    if (line.startsWith('# HELP ')) {
      expect(line).toMatch(/^# HELP [a-zA-Z_:][a-zA-Z0-9_:]* \S.*$/);
      continue;
    }
    if (line.startsWith('# TYPE ')) {
      const m = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
      expect(m, line).not.toBeNull();
      types.set(m![1]!, m![2]!);
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*\})? (-?[0-9.e+]+|\+Inf|NaN)$/.exec(
      line,
    );
    expect(m, line).not.toBeNull();
    samples.set(`${m![1]}${m![2] ?? ''}`, Number(m![3]));
  }
  expect(types.get('xks_requests_total')).toBe('counter');
  expect(types.get('xks_request_duration_seconds')).toBe('histogram');
  return samples;
}

describe('metrics', () => {
  let proxy: TestProxy;
  beforeAll(async () => {
    proxy = await startTestProxy({
      token,
      metrics: { port: 0 },
      stores: [{ prefix: PREFIX, accessKeyId: CREDS.accessKeyId, secret: CREDS.secret, keys: [TEST_KEYS.ordinary] }],
    });
  });
  afterAll(async () => proxy?.stop());

  it('GET /metrics on the [metrics] listener is Prometheus text with requests by operation, prefix and outcome, latency and pool gauges, no secrets', async () => {
    for (let i = 0; i < 3; i++)
      expect((await call(proxy.base, `${API}/keys/${TEST_KEYS.ordinary}/encrypt`, encryptBody(32), CREDS)).status).toBe(200);
    expect((await call(proxy.base, `${API}/keys/unknown-key/encrypt`, encryptBody(32), CREDS)).status).toBe(404);
    expect(
      (await call(proxy.base, `${API}/keys/${TEST_KEYS.ordinary}/encrypt`, encryptBody(32), { ...CREDS, secret: 'wrong' })).status,
    ).toBe(401);
    const res = await fetch(`${proxy.metricsBase!}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
    const text = await res.text();
    const m = parsePrometheus(text);
    expect(m.get(`xks_requests_total{operation="Encrypt",prefix="${PREFIX}",outcome="ok"}`)).toBe(3);
    expect(m.get(`xks_requests_total{operation="Encrypt",prefix="${PREFIX}",outcome="KeyNotFoundException"}`)).toBe(1);
    expect(m.get(`xks_requests_total{operation="Encrypt",prefix="${PREFIX}",outcome="AuthenticationFailedException"}`)).toBe(1);
    expect(m.get(`xks_request_duration_seconds_count{operation="Encrypt",prefix="${PREFIX}"}`)).toBe(5);
    expect(m.get(`xks_request_duration_seconds_bucket{operation="Encrypt",prefix="${PREFIX}",le="+Inf"}`)).toBe(5);
    // The HSM part of each request: three encrypts reached the HSM (the 404 and 401 did not).
    expect(m.get('xks_hsm_call_duration_seconds_count{call="encrypt"}')).toBe(3);
    expect(m.get('xks_hsm_call_duration_seconds_bucket{call="encrypt",le="+Inf"}')).toBe(3);
    expect(m.get('xks_hsm_sessions_open')).toBeGreaterThanOrEqual(1);
    expect(m.has('xks_hsm_sessions_in_use')).toBe(true);
    expect(m.get('xks_hsm_key_copies')).toBe(1); // the one key encrypted with, copied inside the HSM (the default)
    expect([...m.keys()].some((k) => k.startsWith('xks_proxy_build_info{'))).toBe(true);
    for (const secret of [CREDS.secret, token.pin, TEST_KEYS.ordinary]) expect(text.includes(secret), secret).toBe(false);
  });
});

describe('metrics: only where the operator asks ([metrics])', () => {
  const store = { prefix: PREFIX, accessKeyId: CREDS.accessKeyId, secret: CREDS.secret, keys: [TEST_KEYS.ordinary] };

  it('off by default: /metrics is 404 on the API port and on the ping port, and nothing else listens', async () => {
    const pingPort = await freePort('127.0.0.1');
    for (const ping of [undefined, pingPort]) {
      const proxy = await startTestProxy({ token, stores: [store], pingPort: ping }, 'metrics-off.toml');
      try {
        expect((await call(proxy.base, `${API}/keys/${TEST_KEYS.ordinary}/encrypt`, encryptBody(32), CREDS)).status).toBe(200);
        expect(proxy.metricsPort).toBeUndefined();
        for (const port of new Set([proxy.port, proxy.pingPort])) {
          const res = await fetch(`http://127.0.0.1:${port}/metrics`);
          expect(res.status, `port ${port}`).toBe(404);
          const text = await res.text();
          expect(text).not.toContain(PREFIX);
          expect(text).not.toContain('xks_requests_total');
        }
        await proxy.log.flush();
        expect(proxy.logText()).toMatch(/listening .*metrics=off/);
      } finally {
        await proxy.stop();
      }
    }
  });

  it('enabled: its own listener, on 127.0.0.1 unless set; still not on the API or ping port', async () => {
    const pingPort = await freePort('127.0.0.1');
    const proxy = await startTestProxy({ token, stores: [store], pingPort, metrics: { port: 0 } }, 'metrics-on.toml');
    try {
      expect((await call(proxy.base, `${API}/keys/${TEST_KEYS.ordinary}/encrypt`, encryptBody(32), CREDS)).status).toBe(200);
      const port = proxy.metricsPort!;
      expect([proxy.port, proxy.pingPort]).not.toContain(port);
      await proxy.log.flush();
      expect(proxy.logText()).toContain(`metrics=http://127.0.0.1:${port}/metrics`);
      const m = parsePrometheus(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text());
      expect(m.get(`xks_requests_total{operation="Encrypt",prefix="${PREFIX}",outcome="ok"}`)).toBe(1);
      for (const p of [proxy.port, proxy.pingPort]) expect((await fetch(`http://127.0.0.1:${p}/metrics`)).status).toBe(404);
      // The metrics listener serves /metrics only.
      expect((await fetch(`http://127.0.0.1:${port}/ping`)).status).toBe(404);
    } finally {
      await proxy.stop();
    }
  });

  it('[metrics] in settings.toml: defaults, a warning for a non-loopback address, a clash with server.port refused', () => {
    const base = settingsToml({ token, stores: [store] })
      .replace(/^port = 0$/m, 'port = 8000')
      .replace(/^port_http_ping = 0$/m, 'port_http_ping = 8080');
    const off = parseConfig(base, 'settings.toml');
    expect(off.config.metrics).toEqual({ enabled: false, ip: '127.0.0.1', port: 9464 });
    expect(redactedSummary(off.config)).toMatchObject({ metrics: { enabled: false, ip: '127.0.0.1', port: 9464 } });
    const on = parseConfig(`${base}\n[metrics]\nenabled = true\n`, 'settings.toml');
    expect(on.config.metrics).toEqual({ enabled: true, ip: '127.0.0.1', port: 9464 });
    expect(on.warnings.filter((w) => w.includes('metrics'))).toEqual([]);
    const wide = parseConfig(`${base}\n[metrics]\nenabled = true\nip = "0.0.0.0"\nport = 9100\n`, 'settings.toml');
    expect(wide.config.metrics).toEqual({ enabled: true, ip: '0.0.0.0', port: 9100 });
    expect(wide.warnings.join('\n')).toMatch(/metrics\.ip: "0\.0\.0\.0" is not a loopback address/);
    const idle = parseConfig(`${base}\n[metrics]\nport = 9100\n`, 'settings.toml');
    expect(idle.config.metrics.enabled).toBe(false);
    expect(idle.warnings.join('\n')).toMatch(/metrics\.enabled: is not true/);
    expect(() => parseConfig(`${base}\n[metrics]\nenabled = true\nip = "0.0.0.0"\nport = 8080\n`, 'settings.toml')).toThrow(
      /metrics\.port: 8080 is also server\.port_http_ping/,
    );
    expect(() => parseConfig(`${base}\n[metrics]\nenabled = "yes"\n`, 'settings.toml')).toThrow(/metrics\.enabled: expected a boolean/);
    // A SIGHUP cannot open or move the listener: the change is reported as needing a restart.
    expect(restartNeeded(off.config, wide.config)).toEqual(['metrics.enabled', 'metrics.ip', 'metrics.port']);
  });
});

describe('graceful stop', () => {
  it('in-flight requests finish, /ping turns 503 on open connections, then the HSM closes', async () => {
    const proxy = await startTestProxy({
      token,
      poolMaxSize: 1,
      workerThreads: 1,
      stores: [{ prefix: PREFIX, accessKeyId: CREDS.accessKeyId, secret: CREDS.secret, keys: [TEST_KEYS.ordinary] }],
    });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const ping = (): Promise<number> =>
      new Promise((resolve, reject) => {
        http
          .get(`${proxy.base}/ping`, { agent }, (res) => {
            res.resume();
            res.on('end', () => resolve(res.statusCode ?? 0));
          })
          .on('error', reject);
      });
    expect(await ping()).toBe(200);
    const requests = await presign(proxy.base, 300);
    const inFlight = requests.map(send);
    await Promise.race(inFlight);
    const stopped = proxy.stop();
    const pingDuringStop = ping().catch(() => 'refused');
    const results = await Promise.all(inFlight);
    await stopped;
    agent.destroy();
    // Requests the proxy accepted before the stop all finished with 200; none failed half-way.
    const statuses = new Set(results);
    expect([...statuses].every((s) => s === 200 || s === 'refused')).toBe(true);
    expect(results.filter((s) => s === 200).length).toBeGreaterThan(0);
    expect([503, 'refused']).toContain(await pingDuringStop);
    expect(proxy.logText()).toMatch(/xks-proxy stopped/);
  });

  it('SIGTERM to the real CLI with requests in flight: they finish and the exit code is 0', async () => {
    const settings = path.join(token.dir, 'sigterm.toml');
    writeFileSync(
      settings,
      settingsToml({
        token,
        poolMaxSize: 1,
        workerThreads: 1,
        stores: [{ prefix: PREFIX, accessKeyId: CREDS.accessKeyId, secret: CREDS.secret, keys: [TEST_KEYS.ordinary] }],
      }),
    );
    const proxy = await spawnProxyCli({ ...token.env, XKS_PROXY_SETTINGS_TOML: settings });
    const { child, port, exited } = proxy;
    const base = `http://127.0.0.1:${port}`;
    expect((await call(base, `${API}/keys/${TEST_KEYS.ordinary}/encrypt`, encryptBody(32), CREDS)).status).toBe(200);
    const requests = await presign(base, 200);
    const inFlight = requests.map(send);
    await Promise.race(inFlight);
    child.kill('SIGTERM');
    const results = await Promise.all(inFlight);
    expect(await exited).toBe(0);
    expect(results.every((s) => s === 200 || s === 'refused')).toBe(true);
    expect(results.filter((s) => s === 200).length).toBeGreaterThan(0);
    expect(proxy.output()).toMatch(/signal=SIGTERM/);
    expect(proxy.output()).toMatch(/xks-proxy stopped/);
  });

  it('a SIGTERM before the proxy listens stops it once it is up, with exit code 0', async () => {
    const settings = path.join(token.dir, 'sigterm-start.toml');
    const creds = { accessKeyId: 'AKIDSTARTSTOP0000001', secret: randomBytes(32).toString('base64') };
    writeFileSync(
      settings,
      settingsToml({
        token,
        port: await freePort(),
        workers: 2,
        stores: [{ prefix: '/start/stop', accessKeyId: creds.accessKeyId, secret: creds.secret, keys: [TEST_KEYS.ordinary] }],
      }),
    );
    const child = spawn(process.execPath, [BIN], {
      env: { ...process.env, ...token.env, XKS_PROXY_SETTINGS_TOML: settings },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
      child.once('exit', (code, signal) => resolve({ code, signal })),
    );
    let out = '';
    child.stderr.on('data', (c: Buffer) => (out += c.toString()));
    // The first line start-up logs (before any listener): the process is starting, not yet up.
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no output: ${out}`)), 15000);
      child.stdout.once('data', (c: Buffer) => {
        clearTimeout(timer);
        out += c.toString();
        resolve();
      });
    });
    const upBeforeSignal = /listening url=/.test(out);
    child.kill('SIGTERM');
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    expect(await exited).toEqual({ code: 0, signal: null });
    expect(upBeforeSignal).toBe(false);
    expect(out).toMatch(/listening url=/);
    expect(out).toMatch(/stopping signal=SIGTERM/);
    expect(out).toMatch(/xks-proxy stopped/);
  });
});
