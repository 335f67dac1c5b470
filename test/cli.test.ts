/**
 * The real `xks-proxy` command in child processes: help/version, check-config, kms-config,
 * init-dev (a real SoftHSM2 token), serving from it, and failures with the key named.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { VERSION } from '../src/version.js';
import { BIN, spawnProxyCli } from './helpers/cli.js';

const execFileP = promisify(execFile);

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function cli(args: string[], env: Record<string, string> = {}): Promise<Run> {
  try {
    const { stdout, stderr } = await execFileP(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, timeout: 20000 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof err.code === 'number' ? err.code : -1, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
  }
}

let dir: string;

beforeAll(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'xks-cli-'));
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('xks-proxy CLI', () => {
  it('--help and --version', async () => {
    const help = await cli(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/check-config/);
    expect(help.stdout).toMatch(/kms-config/);
    expect(help.stdout).toMatch(/init-dev/);
    const version = await cli(['--version']);
    expect(version).toMatchObject({ code: 0, stdout: `${VERSION}\n` });
    const bad = await cli(['frobnicate']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/unknown command "frobnicate"/);
  });

  it('init-dev makes a token and settings; check-config, kms-config and serve use them', async () => {
    const dev = path.join(dir, 'dev');
    const init = await cli(['init-dev', dev]);
    expect(init.code, init.stderr).toBe(0);
    expect(init.stdout).toMatch(/curl --aws-sigv4/);
    const settings = path.join(dev, 'settings.toml');
    const text = readFileSync(settings, 'utf8');
    const akid = /sigv4_access_key_id = "([A-Z2-7]{20,30})"/.exec(text)?.[1];
    const secret = /sigv4_secret_access_key = "([A-Za-z0-9+/=]{43,64})"/.exec(text)?.[1];
    const pin = /user_pin = "(\d+)"/.exec(text)?.[1];
    expect(akid).toBeDefined();
    expect(secret).toBeDefined();
    expect(init.stdout).toContain(akid!);

    // A second init-dev into the same folder refuses to overwrite.
    const again = await cli(['init-dev', dev]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/already exists/);

    const check = await cli(['check-config', settings]);
    expect(check.code, check.stderr).toBe(0);
    expect(check.stdout).toContain('/example/uri/path/prefix');
    expect(check.stdout).not.toContain(secret!);
    expect(check.stdout).not.toContain(`"${pin}"`);

    const kms = await cli(['kms-config', '--prefix', '/example/uri/path/prefix', settings]);
    expect(kms.code, kms.stderr).toBe(0);
    expect(JSON.parse(kms.stdout)).toEqual({
      XksProxyUriPath: '/example/uri/path/prefix/kms/xks/v1',
      XksProxyAuthenticationCredential: { AccessKeyId: akid, RawSecretAccessKey: secret },
    });
    const none = await cli(['kms-config', '--prefix', '/no/such/prefix/here', settings]);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/no \[\[external_key_stores\]\]/);
    expect((await cli(['kms-config', settings])).code).toBe(2);

    // Serve from it on a free port, answer /ping, stop cleanly on SIGTERM.
    const served = path.join(dev, 'served.toml');
    writeFileSync(served, text.replace(/^port = \d+$/m, 'port = 0').replace(/^port_http_ping = \d+$/m, 'port_http_ping = 0'));
    const proxy = await spawnProxyCli({ XKS_PROXY_SETTINGS_TOML: served, SOFTHSM2_CONF: path.join(dev, 'softhsm2.conf') });
    try {
      const pong = await fetch(`http://127.0.0.1:${proxy.port}/ping`);
      expect(await pong.text()).toBe(`pong from xks-proxy v${VERSION}\n`);
      proxy.child.kill('SIGTERM');
      expect(await proxy.exited).toBe(0);
    } finally {
      proxy.child.kill('SIGKILL');
    }
  });

  it('a broken settings file stops start-up with one line naming the file and the key', async () => {
    const file = path.join(dir, 'broken.toml');
    writeFileSync(
      file,
      readFileSync('test/fixtures/config/settings_softhsmv2.toml', 'utf8').replace(/session_pool_max_size = \d+/, 'session_pool_max_size = "abc"'),
    );
    const serve = await cli([], { XKS_PROXY_SETTINGS_TOML: file });
    expect(serve.code).toBe(1);
    const lines = serve.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/broken\.toml: pkcs11\.session_pool_max_size: /);
    const check = await cli(['check-config', file]);
    expect(check.code).toBe(1);
    expect(check.stderr).toMatch(/pkcs11\.session_pool_max_size/);
  });
});
