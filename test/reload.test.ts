/**
 * Credential rotation and live reload: both credentials of a keystore verify; after a reload (in-process
 * and through a real SIGHUP to the CLI) a removed credential is refused on the same keep-alive
 * connection; prefixes, key ids and the Oso policy follow the file; a bad file changes nothing.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import path from 'node:path';
import { META, REGION, SERVICE, settingsToml, startTestProxy, type SettingsSpec, type StoreSpec, type TestProxy } from './helpers/proxy.js';
import { makeKeyedToken } from './helpers/keyed-token.js';
import { signRequest } from './helpers/sign.js';
import type { TestToken } from './helpers/softhsm.js';

const PREFIX = '/reload/tenant/prefix';
const NEW_PREFIX = '/reload/tenant/newcomer';
const A = { accessKeyId: 'AKIDRELOADAAAAAAAAAA1', secret: 'cmVsb2FkLXNlY3JldC1hLXJlbG9hZC1zZWNyZXQtYS1yZWw=' };
const B = { accessKeyId: 'AKIDRELOADBBBBBBBBBB2', secret: 'cmVsb2FkLXNlY3JldC1iLXJlbG9hZC1zZWNyZXQtYi1yZWw=' };
const C = { accessKeyId: 'AKIDRELOADCCCCCCCCCC3', secret: 'cmVsb2FkLXNlY3JldC1jLXJlbG9hZC1zZWNyZXQtYy1yZWw=' };

interface Reply {
  status: number;
  errorName: string | undefined;
  reused: boolean;
}

/** A signed POST over node:http through `agent` (keep-alive), reporting whether the socket was reused. */
async function post(
  agent: Agent,
  port: number,
  urlPath: string,
  body: unknown,
  cred: { accessKeyId: string; secret: string },
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
        let errorName: string | undefined;
        try {
          errorName = (JSON.parse(text) as { errorName?: string }).errorName;
        } catch {
          // not JSON
        }
        resolve({ status: res.statusCode ?? 0, errorName, reused: req.reusedSocket });
      });
    });
    req.on('error', reject);
    req.end(raw);
  });
}

const health = (id = 'reload-h'): unknown => ({ requestMetadata: { kmsRequestId: id, kmsOperation: 'KmsHealthCheck' } });
const metadata = { requestMetadata: { ...META, kmsOperation: 'DescribeKey' } };

let token: TestToken;
beforeAll(async () => {
  token = await makeKeyedToken('xks-reload');
});
afterAll(() => token?.cleanup());

describe('rotation and reload (in process)', () => {
  let proxy: TestProxy;
  let spec: SettingsSpec;
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const store = (over: Partial<StoreSpec> = {}): StoreSpec => ({
    prefix: PREFIX,
    accessKeyId: A.accessKeyId,
    secret: A.secret,
    keys: ['xks-key', 'xks-known'],
    credentials: [B],
    ...over,
  });
  const rewrite = (s: SettingsSpec): void => writeFileSync(proxy.settingsPath, settingsToml(s));

  beforeAll(async () => {
    spec = { token, stores: [store()] };
    proxy = await startTestProxy(spec, 'reload-settings.toml');
  });
  afterAll(async () => {
    agent.destroy();
    await proxy?.stop();
  });

  it('accepts every credential of the keystore (legacy pair and sigv4_credentials)', async () => {
    expect((await post(agent, proxy.port, `${PREFIX}/kms/xks/v1/health`, health(), A)).status).toBe(200);
    expect((await post(agent, proxy.port, `${PREFIX}/kms/xks/v1/health`, health(), B)).status).toBe(200);
    expect((await post(agent, proxy.port, `${PREFIX}/kms/xks/v1/health`, health(), C)).status).toBe(401);
  });

  it('refuses a removed credential after reload on the same keep-alive connection; a new one works', async () => {
    expect((await post(agent, proxy.port, `${PREFIX}/kms/xks/v1/health`, health(), B)).status).toBe(200);
    rewrite({ token, stores: [store({ credentials: [C] })] });
    const out = await proxy.reload();
    expect(out).toEqual({ ok: true, restartNeeded: [] });
    const r = await post(agent, proxy.port, `${PREFIX}/kms/xks/v1/health`, health(), B);
    expect(r).toEqual({ status: 401, errorName: 'AuthenticationFailedException', reused: true });
    expect((await post(agent, proxy.port, `${PREFIX}/kms/xks/v1/health`, health(), C)).status).toBe(200);
    expect((await post(agent, proxy.port, `${PREFIX}/kms/xks/v1/health`, health(), A)).status).toBe(200);
  });

  it('applies key id sets, adds and removes prefixes', async () => {
    expect((await post(agent, proxy.port, `${PREFIX}/kms/xks/v1/keys/xks-known/metadata`, metadata, A)).status).toBe(200);
    rewrite({
      token,
      stores: [store({ keys: ['xks-key'] }), { prefix: NEW_PREFIX, accessKeyId: C.accessKeyId, secret: C.secret, keys: ['xks-known'] }],
    });
    expect((await proxy.reload()).ok).toBe(true);
    const gone = await post(agent, proxy.port, `${PREFIX}/kms/xks/v1/keys/xks-known/metadata`, metadata, A);
    expect(gone.errorName).toBe('KeyNotFoundException');
    expect((await post(agent, proxy.port, `${NEW_PREFIX}/kms/xks/v1/keys/xks-known/metadata`, metadata, C)).status).toBe(200);
    // C moved to the new keystore: the old prefix no longer takes it.
    expect((await post(agent, proxy.port, `${PREFIX}/kms/xks/v1/health`, health(), C)).status).toBe(401);

    rewrite({ token, stores: [store({ credentials: [C] })] });
    expect((await proxy.reload()).ok).toBe(true);
    const removed = await post(agent, proxy.port, `${NEW_PREFIX}/kms/xks/v1/keys/xks-known/metadata`, metadata, C);
    expect(removed).toMatchObject({ status: 404, errorName: 'InvalidUriPathException' });
    // Added back: the route registered earlier serves again.
    rewrite({ token, stores: [store(), { prefix: NEW_PREFIX, accessKeyId: C.accessKeyId, secret: C.secret, keys: ['xks-known'] }] });
    expect((await proxy.reload()).ok).toBe(true);
    expect((await post(agent, proxy.port, `${NEW_PREFIX}/kms/xks/v1/keys/xks-known/metadata`, metadata, C)).status).toBe(200);
  });

  it('an invalid file is refused with one log line and the running configuration stays', async () => {
    const before = proxy.logText().length;
    writeFileSync(
      proxy.settingsPath,
      `${settingsToml({ token, stores: [store()] })}\n[[external_key_stores]]\nuri_path_prefix = "bad prefix"\n`,
    );
    const out = await proxy.reload();
    expect(out.ok).toBe(false);
    expect(out.error).toMatch(/external_key_stores\[\d\]\.uri_path_prefix/);
    // A credential used by two keystores is refused too.
    rewrite({ token, stores: [store(), { prefix: NEW_PREFIX, accessKeyId: B.accessKeyId, secret: B.secret, keys: [] }] });
    const dup = await proxy.reload();
    expect(dup.ok).toBe(false);
    expect(dup.error).toMatch(/access key id "AKIDRELOADBBBBBBBBBB2" is also used by external_key_stores\[0\]/);
    await proxy.log.flush();
    const lines = proxy
      .logText()
      .slice(before)
      .split('\n')
      .filter((l) => l.includes('reload refused'));
    expect(lines).toHaveLength(2);
    expect(proxy.logText()).not.toContain(B.secret);
    expect((await post(agent, proxy.port, `${NEW_PREFIX}/kms/xks/v1/keys/xks-known/metadata`, metadata, C)).status).toBe(200);
  });

  it('names settings that need a restart, and applies the rest', async () => {
    rewrite({ token, stores: [store({ credentials: [] as StoreSpec['credentials'] })], poolMaxSize: 7, pingPort: 65000 });
    const out = await proxy.reload();
    expect(out.ok).toBe(true);
    expect(out.restartNeeded).toEqual(['pkcs11.session_pool_max_size', 'pkcs11.worker_threads', 'server.port_http_ping']);
    await proxy.log.flush();
    expect(proxy.logText()).toMatch(/WARN configuration reload: these changed settings need a restart .*pkcs11\.session_pool_max_size/);
    expect((await post(agent, proxy.port, `${PREFIX}/kms/xks/v1/health`, health(), B)).status).toBe(401);
  });

  it('turns the Oso policy on and off', async () => {
    const policy = path.resolve('test/fixtures/oso/policy.polar');
    rewrite({ token, stores: [store()], osoPolicy: policy });
    expect((await proxy.reload()).ok).toBe(true);
    const denied = await post(
      agent,
      proxy.port,
      `${PREFIX}/kms/xks/v1/keys/xks-key/metadata`,
      { requestMetadata: { ...META, kmsOperation: 'Encrypt' } },
      A,
    );
    expect(denied.errorName).toBe('AccessDeniedException');
    rewrite({ token, stores: [store()] });
    expect((await proxy.reload()).ok).toBe(true);
    const allowed = await post(
      agent,
      proxy.port,
      `${PREFIX}/kms/xks/v1/keys/xks-key/metadata`,
      { requestMetadata: { ...META, kmsOperation: 'Encrypt' } },
      A,
    );
    expect(allowed.status).toBe(200);
  });
});

describe('SIGHUP to the real CLI', () => {
  let child: ChildProcess | undefined;
  afterAll(() => {
    child?.kill('SIGTERM');
  });

  it('re-reads settings.toml: a removed credential is refused on the open keep-alive connection', async () => {
    const file = path.join(token.dir, 'sighup-settings.toml');
    const spec = (creds: (typeof B)[]): SettingsSpec => ({
      token,
      level: 'INFO',
      stores: [{ prefix: PREFIX, accessKeyId: A.accessKeyId, secret: A.secret, keys: ['xks-key'], credentials: creds }],
    });
    writeFileSync(file, settingsToml(spec([B])));
    child = spawn(process.execPath, ['bin/xks-proxy.js'], {
      env: { ...process.env, ...token.env, XKS_PROXY_SETTINGS_TOML: file },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (out += c.toString()));
    const waitFor = async (re: RegExp): Promise<RegExpMatchArray> => {
      for (let i = 0; i < 200; i++) {
        const m = out.match(re);
        if (m) return m;
        await new Promise((r) => setTimeout(r, 50));
      }
      throw new Error(`timed out waiting for ${re}; output: ${out}`);
    };
    const port = Number((await waitFor(/listening url=http:\/\/127\.0\.0\.1:(\d+)/))[1]);
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      expect((await post(agent, port, `${PREFIX}/kms/xks/v1/health`, health(), B)).status).toBe(200);
      writeFileSync(file, settingsToml(spec([C])));
      child.kill('SIGHUP');
      await waitFor(/configuration reloaded/);
      const r = await post(agent, port, `${PREFIX}/kms/xks/v1/health`, health(), B);
      expect(r).toEqual({ status: 401, errorName: 'AuthenticationFailedException', reused: true });
      expect((await post(agent, port, `${PREFIX}/kms/xks/v1/health`, health(), C)).status).toBe(200);
    } finally {
      agent.destroy();
    }
    expect(out).not.toContain(B.secret);
  });
});
