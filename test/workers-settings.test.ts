/**
 * Worker threads never read settings.toml: the main thread reads and parses it, and hands every
 * event loop the parsed Config (secrets in their own field, re-attached hidden), at start-up and on
 * every reload. Real SoftHSM2, real worker threads, real sockets.
 *
 * Start-up: the proxy starts from settings whose file does not exist; the worker thread serves them.
 * Reload: the file is changed again right after the main thread read it (the main thread's read is
 * observed through node:fs, the file is rewritten at once, before any worker thread could read it);
 * every loop still answers with what the main thread read.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs, { existsSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { syncBuiltinESMExports } from 'node:module';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { inspect } from 'node:util';
import { parseConfig } from '../src/config.js';
import { fromSettingsMessage, toSettingsMessage } from '../src/workers/protocol.js';
import { startProxy, type RunningProxy } from '../src/main.js';
import { REGION, SERVICE, settingsToml, type SettingsSpec, type StoreSpec } from './helpers/proxy.js';
import { makeKeyedToken } from './helpers/keyed-token.js';
import { signRequest } from './helpers/sign.js';
import type { TestToken } from './helpers/softhsm.js';

const PREFIX = '/loops/same/settings';
const X = { accessKeyId: 'AKIDLOOPSXXXXXXXXXX1', secret: 'bG9vcHMtc2VjcmV0LXgtbG9vcHMtc2VjcmV0LXgtbG9vcHM=' };
const Y = { accessKeyId: 'AKIDLOOPSYYYYYYYYYY2', secret: 'bG9vcHMtc2VjcmV0LXktbG9vcHMtc2VjcmV0LXktbG9vcHM=' };
const health = { requestMetadata: { kmsRequestId: 'loops-h', kmsOperation: 'KmsHealthCheck' } };

/** GetHealthStatus signed with `cred`, over a fresh connection (the kernel picks the event loop). */
async function healthStatus(port: number, cred: { accessKeyId: string; secret: string }): Promise<string> {
  const urlPath = `${PREFIX}/kms/xks/v1/health`;
  const raw = JSON.stringify(health);
  const { headers } = await signRequest({
    url: `http://127.0.0.1:${port}${urlPath}`,
    body: raw,
    accessKeyId: cred.accessKeyId,
    secretAccessKey: cred.secret,
    region: REGION,
    service: SERVICE,
  });
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method: 'POST', path: urlPath, headers, agent: false }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve(res.statusCode === 200 ? 'ok' : String((JSON.parse(text) as { errorName?: string }).errorName)));
    });
    req.on('error', reject);
    req.end(raw);
  });
}

/** Requests answered by each event loop so far (the [metrics] listener sums the loops). */
async function perLoop(metricsPort: number): Promise<number[]> {
  const text = await new Promise<string>((resolve, reject) => {
    request({ host: '127.0.0.1', port: metricsPort, path: '/metrics', agent: false }, (res) => {
      let t = '';
      res.on('data', (c: Buffer) => (t += c.toString()));
      res.on('end', () => resolve(t));
    })
      .on('error', reject)
      .end();
  });
  return [0, 1].map((w) => Number(new RegExp(`^xks_worker_requests_total\\{worker="${w}"\\} (\\d+)$`, 'm').exec(text)?.[1] ?? 'NaN'));
}

/** `n` requests with `cred` over fresh connections: their answers, and how many each loop answered. */
async function ask(proxy: RunningProxy, cred: typeof X, n: number): Promise<{ answers: string[]; loops: number[] }> {
  const before = await perLoop(proxy.metricsPort!);
  const answers = await Promise.all(Array.from({ length: n }, () => healthStatus(proxy.port, cred)));
  const after = await perLoop(proxy.metricsPort!);
  return { answers, loops: after.map((a, i) => a - before[i]!) };
}

let token: TestToken;
let proxy: RunningProxy | undefined;
let spec: SettingsSpec;
let file: string;
const store = (credentials: StoreSpec['credentials']): StoreSpec => ({
  prefix: PREFIX,
  accessKeyId: 'AKIDLOOPSLEGACYAAAA0',
  secret: X.secret,
  keys: [],
  credentials,
});

beforeAll(async () => {
  token = await makeKeyedToken('xks-loops');
  Object.assign(process.env, token.env);
  spec = { token, workers: 2, poolMaxSize: 2, workerThreads: 2, metrics: { port: 0 }, stores: [store([X])] };
  file = path.join(token.dir, 'never-written-settings.toml');
  const out = new PassThrough();
  out.resume(); // the log is not checked here
  proxy = await startProxy(parseConfig(settingsToml(spec), file), { stdout: out });
});
afterAll(async () => {
  await proxy?.stop();
  token?.cleanup();
});

describe('the settings message (structured clone)', () => {
  it('carries the secrets in their own field and re-attaches them hidden; the metadata is a Buffer again', () => {
    const text = settingsToml({ ...spec, ciphertextMetadataB64: 'a2V5X3ZlcnNpb249MQ==', stores: [store([X, Y])] });
    const sent = parseConfig(text, file);
    const got = fromSettingsMessage(structuredClone(toSettingsMessage(sent)));
    expect(got.config).toEqual(sent.config);
    expect(got.file).toBe(file);
    expect(got.config.pkcs11.user_pin).toBe(token.pin);
    const ks = got.config.external_key_stores[0]!;
    expect(ks.sigv4_secret_access_key).toBe(X.secret);
    expect(ks.sigv4_credentials.map((c) => c.secret_access_key)).toEqual([X.secret, X.secret, Y.secret]);
    expect(Buffer.isBuffer(got.config.server.ciphertext_metadata)).toBe(true);
    expect(got.config.server.ciphertext_metadata?.toString()).toBe('key_version=1');
    // Hidden as loadConfig hides them: out of JSON, util.inspect and spreads.
    for (const shown of [JSON.stringify(got.config), inspect(got.config, { depth: 10 }), JSON.stringify({ ...got.config.pkcs11 })]) {
      for (const secret of [token.pin, X.secret, Y.secret]) expect(shown).not.toContain(secret);
    }
    // The clone alone has no secret: structured cloning drops non-enumerable properties.
    const bare = structuredClone(sent.config);
    expect(bare.pkcs11.user_pin).toBeUndefined();
  });
});

describe('every event loop runs the settings the main thread read', () => {
  it('start-up: the worker thread serves settings whose file does not exist', async () => {
    expect(existsSync(file)).toBe(false);
    expect(proxy!.workers).toBe(2);
    const { answers, loops } = await ask(proxy!, X, 30);
    expect(answers).toEqual(Array(30).fill('ok'));
    // Both loops answered: the worker thread has the keystore, though it could read no file.
    expect(loops[0]).toBeGreaterThan(0);
    expect(loops[1]).toBeGreaterThan(0);
  });

  it('reload: a change right after the main thread read the file reaches no loop', async () => {
    const read = settingsToml({ ...spec, stores: [store([Y])] }); // what the main thread reads: Y, not X
    const later = settingsToml({ ...spec, stores: [store([X])] }); // the edit that follows at once
    writeFileSync(file, read);
    const original = fs.readFileSync;
    let reads = 0;
    fs.readFileSync = ((...args: Parameters<typeof original>) => {
      const out = original(...args);
      if (args[0] === file) {
        reads++;
        fs.writeFileSync(file, later); // before readFileSync returns to the main thread's reloader
      }
      return out;
    }) as typeof original;
    syncBuiltinESMExports();
    let outcome;
    try {
      outcome = await proxy!.reload();
    } finally {
      fs.readFileSync = original;
      syncBuiltinESMExports();
    }
    expect(outcome).toEqual({ ok: true, restartNeeded: [] });
    expect(reads).toBe(1); // the main thread's read, and no other in this thread
    expect(fs.readFileSync(file, 'utf8')).toBe(later);

    // Every loop runs what the main thread read: Y verifies, X does not, whichever loop answers.
    const y = await ask(proxy!, Y, 30);
    expect(y.answers).toEqual(Array(30).fill('ok'));
    const x = await ask(proxy!, X, 30);
    expect(x.answers).toEqual(Array(30).fill('AuthenticationFailedException'));
    for (const loops of [y.loops, x.loops]) {
      expect(loops[0]).toBeGreaterThan(0);
      expect(loops[1]).toBeGreaterThan(0);
    }
  });
});
