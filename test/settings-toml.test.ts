import { describe, expect, it } from 'vitest';
import { parseConfig } from '../src/config.js';
import { settingsToml, type SettingsSpec } from '../src/dev/settings-toml.js';

const FULL: SettingsSpec = {
  header: ['generated'],
  port: 8443,
  pingPort: 8080,
  workers: 2,
  region: 'eu-west-1',
  service: 'kms-xks-proxy',
  ciphertextMetadataB64: Buffer.from('v1').toString('base64'),
  tracing: { stdout: false, level: 'WARN', directory: '/tmp/logs "quoted"', rotation: 'DAILY' },
  sigv4: true,
  tls: { certFile: '/etc/x/cert.pem', keyFile: '/etc/x/key.pem', mtls: { caFile: '/etc/x/ca.pem', dnsName: 'client.example.com' } },
  osoPolicy: '/etc/x/policy.polar',
  stores: [
    {
      prefix: '/first/prefix/one',
      accessKeyId: 'AKIAAAAAAAAAAAAAAAAA',
      secretAccessKey: 'c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==',
      keys: ['k1', 'k2'],
      credentials: [{ accessKeyId: 'AKIABBBBBBBBBBBBBBBB', secretAccessKey: 'b3RoZXItb3RoZXItb3RoZXItb3RoZXItb3RoZXItb3RoZXI=' }],
      requestsPerSecond: 100,
      burst: 200,
    },
  ],
  pkcs11: {
    pin: 'p"in',
    modulePath: '/usr/lib/softhsm/libsofthsm2.so',
    poolMaxSize: 6,
    poolTimeoutMs: 250,
    eagerClose: true,
    workerThreads: 3,
    operationTimeoutMs: 90,
  },
  maxPlaintextB64: 6000,
  maxAadB64: 12000,
  healthCheck: { keyId: 'probe', intervalSecs: 5, degradedLatencyMs: 30 },
};

describe('the settings.toml writer of init-dev, the tests and the bench', () => {
  it('writes every key it is given, in the Rust format the config module reads back', () => {
    const { config, warnings } = parseConfig(settingsToml(FULL), 'generated.toml', {});
    expect(warnings.filter((w) => /unknown/.test(w))).toEqual([]);
    expect(config.server).toMatchObject({ port: 8443, port_http_ping: 8080, workers: 2, region: 'eu-west-1' });
    expect(config.server.ciphertext_metadata?.toString()).toBe('v1');
    expect(config.tracing).toMatchObject({
      is_stdout_writer_enabled: false,
      level: 'WARN',
      directory: '/tmp/logs "quoted"',
      rotation_kind: 'DAILY',
    });
    expect(config.security).toMatchObject({ is_tls_enabled: true, is_mtls_enabled: true, secondary_auth: 'Oso' });
    expect(config.tls).toMatchObject({ mtls_client_dns_name: 'client.example.com' });
    const ks = config.external_key_stores[0]!;
    expect([...ks.xks_key_id_set]).toEqual(['k1', 'k2']);
    expect(ks.sigv4_credentials.map((c) => c.access_key_id)).toEqual(['AKIAAAAAAAAAAAAAAAAA', 'AKIABBBBBBBBBBBBBBBB']);
    expect(ks).toMatchObject({ requests_per_second: 100, burst: 200 });
    expect(config.pkcs11).toMatchObject({
      session_pool_max_size: 6,
      session_pool_timeout_milli: 250,
      session_eager_close: true,
      worker_threads: 3,
      operation_timeout_milli: 90,
    });
    expect(config.pkcs11.user_pin).toBe('p"in');
    expect(config.limits).toEqual({ max_plaintext_in_base64: 6000, max_aad_in_base64: 12000 });
    expect(config.health_check).toMatchObject({ key_id: 'probe', interval_secs: 5, degraded_latency_milli: 30 });
  });

  it('leaves optional keys out, so the proxy applies its own defaults', () => {
    const text = settingsToml({
      port: 0,
      region: 'us-east-1',
      service: 'kms-xks-proxy',
      tracing: { stdout: true, level: 'INFO', directory: 'logs', rotation: 'NEVER' },
      stores: [
        {
          prefix: '',
          accessKeyId: 'AKIAAAAAAAAAAAAAAAAA',
          secretAccessKey: 'c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==',
          keys: ['k'],
        },
      ],
      pkcs11: { pin: '1234', modulePath: '/m.so', poolMaxSize: 4, poolTimeoutMs: 100 },
    });
    for (const key of [
      'workers',
      'worker_threads',
      'operation_timeout_milli',
      'health_check',
      '[tls]',
      'secondary_auth',
      'ciphertext_metadata_b64',
    ]) {
      expect(text.includes(key), key).toBe(false);
    }
    const { config } = parseConfig(text, 'minimal.toml', {});
    expect(config.server.port_http_ping).toBe(0);
    expect(config.security.is_tls_enabled).toBe(false);
  });
});
