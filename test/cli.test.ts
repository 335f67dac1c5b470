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

const GUIDE = path.resolve(import.meta.dirname, 'fixtures/config/settings_vault_guide.toml');
const GUIDE_SECRET = '1234567890123456789012345678901234567890123=';

describe('xks-proxy CLI', () => {
  it('every command answers --help and -h with its own usage, exit 0', async () => {
    const own: Record<string, RegExp> = {
      serve: /^Usage: xks-proxy \[serve\]\n/,
      'check-config': /^Usage: xks-proxy check-config \[FILE\]\n/,
      'kms-config': /^Usage: xks-proxy kms-config --prefix P \[options\] \[FILE\]\n[\s\S]*--endpoint URL[\s\S]*--show-secret/,
      'init-dev': /^Usage: xks-proxy init-dev \[DIR\]\n/,
    };
    for (const [command, usage] of Object.entries(own)) {
      for (const flag of ['--help', '-h']) {
        const r = await cli([command, flag]);
        expect(r.code, `${command} ${flag}: ${r.stderr}`).toBe(0);
        expect(r.stdout, `${command} ${flag}`).toMatch(usage);
        expect(r.stderr).toBe('');
      }
      const viaHelp = await cli(['help', command]);
      expect(viaHelp.code).toBe(0);
      expect(viaHelp.stdout).toMatch(usage);
    }
    // The help of a command with other arguments still only prints the usage (serves nothing, reads no file).
    expect((await cli(['kms-config', '--prefix', '/xyz', '/nonexistent.toml', '--help'])).stdout).toMatch(own['kms-config']!);
    const wrong = await cli(['init-dev', 'a', 'b']);
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toMatch(/^xks-proxy init-dev: unexpected argument "b"\n\nUsage: xks-proxy init-dev/);
  });

  it('serve with both writers off says so on stderr (nothing else would show it)', async () => {
    const quiet = path.join(dir, 'quiet.toml');
    writeFileSync(
      quiet,
      readFileSync(GUIDE, 'utf8')
        .replace('port = 8000', 'port = 0\nport_http_ping = 0')
        .replace('is_stdout_writer_enabled = true', 'is_stdout_writer_enabled = false')
        .replace('is_file_writer_enabled = true', 'is_file_writer_enabled = false'),
    );
    // The module does not exist here: start-up stops after the warnings, with one line.
    const r = await cli([], { XKS_PROXY_SETTINGS_TOML: quiet, PKCS11_HSM_MODULE: '/nonexistent/libpkcs11.so' });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      `xks-proxy: warning: ${quiet}: tracing: both the stdout and the file writer are disabled: nothing will be logged\n`,
    );
    expect(r.stdout).toBe('');
  });

  it("kms-config prints the guide's aws kms create-custom-key-store command; the secret only with --show-secret", async () => {
    const r = await cli(['kms-config', '--prefix', '/xyz', '--endpoint', 'https://xks.example.com', '--name', 'my xks', GUIDE]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).not.toContain(GUIDE_SECRET);
    const command = r.stdout.slice(r.stdout.indexOf('aws kms create-custom-key-store'));
    expect(command).toBe(
      [
        'aws kms create-custom-key-store',
        "  --custom-key-store-name 'my xks'",
        '  --custom-key-store-type EXTERNAL_KEY_STORE',
        '  --xks-proxy-connectivity PUBLIC_ENDPOINT',
        '  --xks-proxy-uri-endpoint https://xks.example.com',
        '  --xks-proxy-uri-path /xyz/kms/xks/v1',
        "  --xks-proxy-authentication-credential 'AccessKeyId=AKIA4GBY3I6JCE5M2HPM,RawSecretAccessKey=<secret access key: add --show-secret>'",
      ].join(' \\\n') + '\n',
    );
    const json = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'), r.stdout.indexOf('}\n}') + 3)) as Record<string, unknown>;
    expect(json).toEqual({
      XksProxyUriPath: '/xyz/kms/xks/v1',
      XksProxyAuthenticationCredential: {
        AccessKeyId: 'AKIA4GBY3I6JCE5M2HPM',
        RawSecretAccessKey: '<secret access key: add --show-secret>',
      },
    });

    const shown = await cli([
      'kms-config',
      '--prefix',
      '/xyz',
      '--show-secret',
      '--vpc-endpoint-service',
      'com.amazonaws.vpce.ap-northeast-2.vpce-svc-0abc',
      GUIDE,
    ]);
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.stdout).toContain(
      `  --xks-proxy-authentication-credential AccessKeyId=AKIA4GBY3I6JCE5M2HPM,RawSecretAccessKey=${GUIDE_SECRET}\n`,
    );
    expect(shown.stdout).toContain(`"RawSecretAccessKey": "${GUIDE_SECRET}"`);
    expect(shown.stdout).toContain(
      ' \\\n  --xks-proxy-connectivity VPC_ENDPOINT_SERVICE \\\n  --xks-proxy-vpc-endpoint-service-name com.amazonaws.vpce.ap-northeast-2.vpce-svc-0abc \\\n',
    );
    // Without --endpoint, a placeholder the shell does not take for a redirection.
    expect(shown.stdout).toContain("  --xks-proxy-uri-endpoint 'https://<host name of the proxy or its load balancer>' \\\n");

    const onlyJson = await cli(['kms-config', '--prefix', '/xyz', '--json', GUIDE]);
    expect(JSON.parse(onlyJson.stdout)).toEqual(json);

    for (const [endpoint, problem] of [
      ['http://xks.example.com', /--endpoint must start with https:\/\//],
      ['https://xks.example.com/xyz', /--endpoint is scheme and host only/],
      ['xks.example.com', /is not a URL/],
    ] as const) {
      const bad = await cli(['kms-config', '--prefix', '/xyz', '--endpoint', endpoint, GUIDE]);
      expect(bad.code).toBe(2);
      expect(bad.stderr).toMatch(problem);
    }
    expect((await cli(['kms-config', '--prefix', '/xyz', '--endpoint'])).stderr).toMatch(/--endpoint needs a value/);
  });

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

    const kms = await cli(['kms-config', '--prefix', '/example/uri/path/prefix', '--json', '--show-secret', settings]);
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
      readFileSync('test/fixtures/config/settings_softhsmv2.toml', 'utf8').replace(
        /session_pool_max_size = \d+/,
        'session_pool_max_size = "abc"',
      ),
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
