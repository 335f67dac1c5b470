/**
 * The npm package an operator installs: `npm pack` here, then `npm install -g` of the tarball into
 * a temporary prefix (the addon builds at install, from the shipped native/ sources), then the
 * installed command answers --version, check-config and a signed encrypt against SoftHSM2.
 * Dependencies come from a registry on 127.0.0.1 serving the lockfile's own tarballs.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnProxyCli, type CliProxy } from './helpers/cli.js';
import { makeKeyedToken } from './helpers/keyed-token.js';
import { startLocalRegistry, type LocalRegistry } from './helpers/npm-registry.js';
import { call, META, settingsToml } from './helpers/proxy.js';
import { TEST_KEYS, type TestToken } from './helpers/softhsm.js';

const ROOT = path.resolve('.');
const PKG = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
  name: string;
  version: string;
  devDependencies: Record<string, string>;
};
const PREFIX_PATH = '/packaged';
const KEY = TEST_KEYS.ordinary;
const ACCESS_KEY_ID = 'AKIAPACKAGEDTEST2345';
const SECRET = 'pAcKaGeD+tEsT/sEcReT+0123456789abcdefghijkl';

/** The environment of an operator's shell: no npm_* variables of the `npm test` that runs us. */
function operatorEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^npm_/i.test(k)) env[k] = v;
  return { ...env, ...extra };
}

let work: string;
let registry: LocalRegistry;
let token: TestToken;
let installed: string;
let packed: string[];
let proxy: CliProxy | undefined;

beforeAll(async () => {
  work = mkdtempSync(path.join(tmpdir(), 'xks-npm-package-'));
  // --ignore-scripts: the global setup compiled dist/ already, and prepare's tsc would rewrite it
  // under the other test files running now.
  const out = execFileSync('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', work], {
    cwd: ROOT,
    env: operatorEnv(),
    encoding: 'utf8',
  });
  const report = JSON.parse(out.slice(out.indexOf('['))) as { filename: string; files: { path: string }[] }[];
  packed = report[0]!.files.map((f) => f.path);
  registry = await startLocalRegistry(ROOT);
  const prefix = path.join(work, 'prefix');
  const npmArgs = ['install', '-g', '--prefix', prefix, '--registry', registry.url, '--cache', path.join(work, 'npm-cache')];
  npmArgs.push('--allow-scripts=xks-proxy', '--no-audit', '--no-fund', '--loglevel=error', path.join(work, report[0]!.filename));
  // Asynchronous: the registry answers from this process's event loop.
  const r = await run('npm', npmArgs, 240_000);
  if (r.status !== 0) throw new Error(`npm install -g failed (${r.status}): ${r.stderr.slice(-3000)}`);
  installed = path.join(prefix, 'bin', 'xks-proxy');
  token = await makeKeyedToken('xks-npm-package');
}, 300_000);

afterAll(async () => {
  if (proxy && proxy.child.exitCode === null) {
    proxy.child.kill('SIGTERM');
    await proxy.exited;
  }
  await registry?.close();
  token?.cleanup();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('npm pack, then npm install -g of the tarball', () => {
  it('ships the built JavaScript and the addon sources, not the tests or the test tools', () => {
    expect(packed).toContain('dist/src/cli.js');
    expect(packed).toContain('bin/xks-proxy.js');
    expect(packed).toContain('binding.gyp');
    expect(packed).toContain('native/engine.cc');
    expect(packed).toContain('deploy/systemd/xks-proxy.service');
    expect(packed.filter((f) => /^(test|native-test|bench|src|dist\/bench)\//.test(f))).toEqual([]);
  });

  it('built the three addons at install, no test tool, no devDependency', () => {
    const pkgDir = path.join(path.dirname(path.dirname(installed)), 'lib', 'node_modules', PKG.name);
    const built = readdirSync(path.join(pkgDir, 'build', 'Release')).filter((f) => f.endsWith('.node'));
    expect(built.sort()).toEqual(['xks_audit.node', 'xks_pkcs11.node', 'xks_tls.node']);
    for (const dev of Object.keys(PKG.devDependencies)) expect(existsSync(path.join(pkgDir, 'node_modules', dev)), dev).toBe(false);
    expect(registry.tarballRequests()).toBe(registry.served.length);
  });

  it('answers --version with the package version', () => {
    expect(execFileSync(installed, ['--version'], { encoding: 'utf8' }).trim()).toBe(PKG.version);
  });

  it('check-config passes a good file and fails a broken one, naming the key', () => {
    const good = path.join(work, 'settings.toml');
    writeFileSync(good, settingsFor(token));
    const ok = spawnSync(installed, ['check-config', good], { encoding: 'utf8', env: operatorEnv(token.env) });
    expect(ok.status, ok.stderr).toBe(0);
    expect(ok.stdout).not.toContain(SECRET);
    expect(ok.stdout).toContain(PREFIX_PATH);
    const bad = path.join(work, 'bad.toml');
    writeFileSync(bad, settingsFor(token).replace(/^user_pin = .*$/m, ''));
    const no = spawnSync(installed, ['check-config', bad], { encoding: 'utf8', env: operatorEnv(token.env) });
    expect(no.status).toBe(1);
    expect(no.stderr).toContain('user_pin');
  });

  it('serves: /ping and a signed encrypt that decrypts back', async () => {
    const settings = path.join(work, 'settings.toml');
    const realBin = path.join(path.dirname(path.dirname(installed)), 'lib', 'node_modules', PKG.name, 'bin', 'xks-proxy.js');
    proxy = await spawnProxyCli({ ...token.env, XKS_PROXY_SETTINGS_TOML: settings }, [], realBin);
    const base = `http://127.0.0.1:${proxy.port}`;
    expect((await fetch(`${base}/ping`)).status).toBe(200);
    const auth = { accessKeyId: ACCESS_KEY_ID, secret: SECRET };
    const plaintext = Buffer.from('packaged proxy round trip').toString('base64');
    const enc = await call(
      base,
      `${PREFIX_PATH}/kms/xks/v1/keys/${KEY}/encrypt`,
      { requestMetadata: META, plaintext, encryptionAlgorithm: 'AES_GCM' },
      auth,
    );
    expect(enc.status, enc.text).toBe(200);
    const dec = await call(
      base,
      `${PREFIX_PATH}/kms/xks/v1/keys/${KEY}/decrypt`,
      {
        requestMetadata: { ...META, kmsOperation: 'Decrypt' },
        encryptionAlgorithm: 'AES_GCM',
        ciphertext: enc.json.ciphertext,
        initializationVector: enc.json.initializationVector,
        authenticationTag: enc.json.authenticationTag,
      },
      auth,
    );
    expect(dec.status, dec.text).toBe(200);
    expect(dec.json.plaintext).toBe(plaintext);
  });
});

function run(cmd: string, args: string[], timeoutMs: number): Promise<{ status: number | null; stderr: string }> {
  return new Promise((resolve) => {
    // JOBS: node-gyp compiles the addon with make -j (one job per core).
    const child = spawn(cmd, args, { env: operatorEnv({ JOBS: 'max' }), stdio: ['ignore', 'ignore', 'pipe'], timeout: timeoutMs });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.once('close', (status) => resolve({ status, stderr }));
  });
}

function settingsFor(t: TestToken): string {
  return settingsToml({ token: t, stores: [{ prefix: PREFIX_PATH, accessKeyId: ACCESS_KEY_ID, secret: SECRET, keys: [KEY] }] });
}
