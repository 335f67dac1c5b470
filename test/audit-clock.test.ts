/**
 * The writer's per-record clock work, made cheap (issue 14's bench): the time stamp formats one
 * Date per second, and rotation compares with the period's end instead of formatting the period.
 * Both must agree with the plain definitions they replace, at every boundary.
 */
import { createHash, randomInt } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { RotationKind } from '../src/config.js';
import { periodEnd, periodOf } from '../src/audit/files.js';
import { lineHash, rfc3339Micros } from '../src/audit/record.js';

/** RFC 3339 with microseconds from first principles (a Date per call). */
function plain(us: number): string {
  const ms = Math.floor(us / 1000);
  return `${new Date(ms).toISOString().slice(0, 23)}${String(us % 1000).padStart(3, '0')}Z`;
}

describe('audit clock', () => {
  it('rfc3339Micros matches the Date-based text, across seconds, minutes, days and years', () => {
    const t0 = Date.UTC(2026, 11, 31, 23, 59, 59) * 1000; // one second before a new year
    const cases: number[] = [];
    for (let d = -3; d <= 3; d++) cases.push(t0 + 1_000_000 + d, t0 + d, t0 + 999_999 + d);
    for (let i = 0; i < 2000; i++) cases.push(t0 + randomInt(0, 3_000_000));
    // Out of order as well: a cached second must never leak into another one.
    cases.push(t0 + 5, t0 + 2_000_005, t0 + 5, 1_700_000_000_000_001);
    for (const us of cases) expect(rfc3339Micros(us)).toBe(plain(us));
    expect(rfc3339Micros(Date.UTC(2026, 11, 2, 0, 5, 17) * 1000 + 123_456)).toBe('2026-12-02T00:05:17.123456Z');
    expect(rfc3339Micros(Date.UTC(2026, 11, 2, 0, 5, 17) * 1000 + 7)).toBe('2026-12-02T00:05:17.000007Z');
  });

  it('periodEnd is the first instant whose period differs, for every rotation kind', () => {
    const kinds: RotationKind[] = ['MINUTELY', 'HOURLY', 'DAILY'];
    const base = Date.UTC(2026, 11, 31, 23, 0, 0) * 1000;
    for (const kind of kinds) {
      for (let i = 0; i < 300; i++) {
        const t = base + randomInt(0, 2 * 86_400) * 1_000_000 + randomInt(0, 1_000_000);
        const end = periodEnd(kind, t);
        expect(end).toBeGreaterThan(t);
        expect(periodOf(kind, end - 1)).toBe(periodOf(kind, t));
        expect(periodOf(kind, end)).not.toBe(periodOf(kind, t));
      }
    }
    expect(periodEnd('NEVER', base)).toBe(Number.POSITIVE_INFINITY);
    expect(periodEnd('HOURLY', Date.UTC(2026, 11, 2, 0, 5, 17) * 1000)).toBe(Date.UTC(2026, 11, 2, 1) * 1000);
  });

  it('lineHash is the SHA-256 hex of the line as UTF-8', () => {
    for (const line of ['', '{"v":1}', '{"awsPrincipalArn":"arn:aws:iam::1:user/Ünïcödé ✓"}']) {
      expect(lineHash(line)).toBe(createHash('sha256').update(Buffer.from(line, 'utf8')).digest('hex'));
    }
  });
});
