/**
 * Cost of Oso secondary authorization per request (the Rust sample policy's rules,
 * test/fixtures/oso/policy.polar): cold decisions (cache off) and cached decisions.
 * Run: npx tsc -p tsconfig.json && node dist/bench/oso.js
 */
import path from 'node:path';
import { Bench } from 'tinybench';
import { OsoAuthorizer } from '../src/auth/oso.js';
import type { RequestMetadata } from '../src/validate.js';

const policy = path.resolve(process.argv[2] ?? 'test/fixtures/oso/policy.polar');
const cold = await OsoAuthorizer.fromFile(policy, { cache: false });
const cached = await OsoAuthorizer.fromFile(policy);
const meta: RequestMetadata = {
  kmsRequestId: '4112f4d6-db54-4af4-ae30-c55a22a8dfae',
  kmsOperation: 'Encrypt',
  awsPrincipalArn: 'arn:aws:iam::123456789012:user/Alice',
  kmsKeyArn: 'arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab',
  kmsViaService: 'ebs',
};
const prefix = '/example/uri/path/prefix';

const bench = new Bench({ time: 2000 });
bench
  .add('oso encrypt allow (no cache)', async () => {
    await cold.authorize(prefix, 'encrypt', meta);
  })
  .add('oso decrypt deny (no cache)', async () => {
    await cold.isAllowed(prefix, 'decrypt', { ...meta, kmsOperation: 'ReEncrypt' });
  })
  .add('oso encrypt allow (cached)', async () => {
    await cached.authorize(prefix, 'encrypt', meta);
  });
await bench.run();
for (const t of bench.tasks) {
  const r = t.result as { latency?: { mean?: number; p99?: number }; throughput?: { mean?: number } } | undefined;
  const mean = r?.latency?.mean ?? NaN;
  const p99 = r?.latency?.p99 ?? NaN;
  process.stdout.write(`${t.name.padEnd(32)} mean ${(mean * 1000).toFixed(1)} us  p99 ${(p99 * 1000).toFixed(1)} us\n`);
}
