/** The [audit] section of settings.toml (issue 14): absent = no trail; keys, defaults, refusals. */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfig, redactedSummary } from '../src/config.js';

const MIN = readFileSync(resolve(import.meta.dirname, 'fixtures/config/minimal.toml'), 'utf8');
const withAudit = (body: string): string => `${MIN}\n[audit]\n${body}\n`;

function failure(src: string): ConfigError {
  try {
    parseConfig(src, 'settings.toml', {});
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return e as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

describe('[audit]', () => {
  it('is absent by default', () => {
    expect(parseConfig(MIN, 'f', {}).config.audit).toBeUndefined();
  });

  it('directory and hmac_key_id are required; the rest have defaults', () => {
    expect(parseConfig(withAudit('directory = "/var/lib/xks/audit"\nhmac_key_id = "audit-hmac"'), 'f', {}).config.audit).toEqual({
      directory: '/var/lib/xks/audit',
      file_prefix: 'xks-audit',
      rotation_kind: 'HOURLY',
      hmac_key_id: 'audit-hmac',
      checkpoint_every: 1000,
      checkpoint_secs: 60,
      durability: 'before-response',
      on_failure: 'fail-closed',
      stdout: false,
    });
    expect(failure(withAudit('hmac_key_id = "h"')).message).toBe('settings.toml: audit.directory: missing key');
    expect(failure(withAudit('directory = "/a"')).message).toBe('settings.toml: audit.hmac_key_id: missing key');
    expect(failure(withAudit('directory = ""\nhmac_key_id = "h"')).message).toBe('settings.toml: audit.directory: must not be empty');
  });

  it('reads every key', () => {
    const a = parseConfig(
      withAudit(
        'directory = "/a"\nfile_prefix = "trail"\nrotation_kind = "daily"\nhmac_key_id = "h"\ncheckpoint_every = 10\ncheckpoint_secs = 5\ndurability = "batched"\non_failure = "fail-open"\nstdout = true',
      ),
      'f',
      {},
    ).config.audit;
    expect(a).toEqual({
      directory: '/a',
      file_prefix: 'trail',
      rotation_kind: 'DAILY',
      hmac_key_id: 'h',
      checkpoint_every: 10,
      checkpoint_secs: 5,
      durability: 'batched',
      on_failure: 'fail-open',
      stdout: true,
    });
  });

  it('refuses bad values, naming the key', () => {
    const base = 'directory = "/a"\nhmac_key_id = "h"\n';
    expect(failure(withAudit(`${base}durability = "sometimes"`)).message).toBe(
      'settings.toml: audit.durability: expected one of "before-response", "batched", got "sometimes"',
    );
    expect(failure(withAudit(`${base}on_failure = "ignore"`)).message).toBe(
      'settings.toml: audit.on_failure: expected one of "fail-closed", "fail-open", got "ignore"',
    );
    expect(failure(withAudit(`${base}rotation_kind = "weekly"`)).message).toMatch(/^settings\.toml: audit\.rotation_kind: expected one of/);
    expect(failure(withAudit(`${base}checkpoint_every = 0`)).message).toMatch(
      /^settings\.toml: audit\.checkpoint_every: expected an integer/,
    );
    expect(failure(withAudit(`${base}checkpoint_secs = 86401`)).message).toMatch(
      /^settings\.toml: audit\.checkpoint_secs: expected an integer/,
    );
    expect(failure(withAudit(`${base}file_prefix = "../x"`)).message).toMatch(/^settings\.toml: audit\.file_prefix: expected 1\.\.64/);
    expect(failure(withAudit(`${base}stdout = "yes"`)).message).toMatch(/^settings\.toml: audit\.stdout: expected a boolean/);
  });

  it('refuses an HMAC key that is also an XKS key', () => {
    const served = MIN.match(/xks_key_id_set\s*=\s*\[\s*"([^"]+)"/)?.[1];
    expect(served).toBeDefined();
    expect(failure(withAudit(`directory = "/a"\nhmac_key_id = "${served}"`)).message).toMatch(
      /^settings\.toml: audit\.hmac_key_id: .* must be its own$/,
    );
  });

  it('warns about unknown keys and is in the redacted summary', () => {
    const loaded = parseConfig(withAudit('directory = "/a"\nhmac_key_id = "h"\nretention = 3'), 'f', {});
    expect(loaded.warnings.some((w) => w.includes('audit.retention: unknown key'))).toBe(true);
    expect((redactedSummary(loaded.config) as { audit: { directory: string } }).audit.directory).toBe('/a');
  });
});

describe('the settings.toml writer with [audit]', () => {
  it('writes a section the proxy reads back', async () => {
    const { settingsToml } = await import('../src/dev/settings-toml.js');
    const text = settingsToml({
      port: 8000,
      region: 'us-east-1',
      service: 'kms-xks-proxy',
      tracing: { stdout: false, level: 'INFO', directory: '/tmp', rotation: 'HOURLY' },
      stores: [{ prefix: '/p', accessKeyId: 'AKIAIOSFODNN7EXAMPLE', secretAccessKey: 'a'.repeat(43), keys: ['k'] }],
      pkcs11: { pin: '1234', modulePath: '/usr/lib/softhsm/libsofthsm2.so', poolMaxSize: 2, poolTimeoutMs: 100 },
      audit: { directory: '/var/audit', hmacKeyId: 'hm', durability: 'batched', checkpointEvery: 7, stdout: true },
    });
    const a = parseConfig(text, 'f', {}).config.audit;
    expect(a).toMatchObject({ directory: '/var/audit', hmac_key_id: 'hm', durability: 'batched', checkpoint_every: 7, stdout: true });
  });
});
