import { describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { base64Refusal, cdivSha256, decodeBase64Strict, hsmAad } from '../src/codec.js';

describe('strict base64', () => {
  it('decodes canonical padded base64 of every length', () => {
    for (let n = 0; n < 40; n++) {
      const b = Buffer.alloc(n, 0xa5);
      expect(decodeBase64Strict(b.toString('base64'))).toEqual(b);
    }
  });
  it('rejects junk, missing padding, url-safe alphabet and non-canonical trailing bits', () => {
    for (const s of [
      'abc',
      'ab=c',
      'a b=',
      'SGVsbG8gV29ybGQh!',
      '-_-_',
      'QQ',
      'QR==',
      'QUI=',
      'QUJ=',
      '====',
      'é===',
      'QUI=QUI=',
      ' QUI',
      'QU\nI',
    ]) {
      expect(decodeBase64Strict(s) !== undefined, s).toBe(s === 'QUI=');
    }
  });
  it('base64Refusal tells a bad alphabet or padding from non-zero trailing bits', () => {
    for (const s of ['abc', 'ab=c', 'a b=', 'SGVsbG8gV29ybGQh!', '-_-_', 'QQ', '====', 'é===', 'QUI=QUI=', ' QUI', 'QU\nI', 'ab!d']) {
      expect(decodeBase64Strict(s), s).toBeUndefined();
      expect(base64Refusal(s), s).toBe('alphabet');
    }
    for (const s of ['QR==', 'QUJ=', 'djB=']) {
      expect(decodeBase64Strict(s), s).toBeUndefined();
      expect(base64Refusal(s), s).toBe('trailing-bits');
    }
  });
});

describe('HSM AAD, byte-compatible with the Rust proxy', () => {
  it('absent AAD and no metadata is three bytes of lengths', () => {
    expect(hsmAad(undefined, undefined)).toEqual(Buffer.from([0, 0, 0]));
  });
  it('present-but-empty AAD still carries the digest of the empty string', () => {
    const empty = createHash('sha256').update(Buffer.alloc(0)).digest();
    expect(hsmAad(Buffer.alloc(0), undefined)).toEqual(Buffer.concat([Buffer.from([0, 0]), empty, Buffer.from([0])]));
  });
  it('AAD and metadata: u16 length, digest, u8 length, metadata', () => {
    const aad = Buffer.alloc(300, 7);
    const ctm = Buffer.from('key_version=1');
    const digest = createHash('sha256').update(aad).digest();
    expect(hsmAad(aad, ctm)).toEqual(Buffer.concat([Buffer.from([1, 44]), digest, Buffer.from([13]), ctm]));
  });
});

describe('CDIV', () => {
  it("reproduces the spec's Appendix C example", () => {
    const aad = Buffer.from('project=nile,department=marketing');
    const ctm = Buffer.from('a2V5X3ZlcnNpb249MQ==', 'base64');
    const iv = Buffer.from('HMrlRw85cAJUd5Ax', 'base64');
    const ct = Buffer.from('ghxkK1txeDNn3q8Y', 'base64');
    const tag = Buffer.from('vBxN2ncH1oEkR8WVXpmyYQ==', 'base64');
    expect(cdivSha256(aad, ctm, iv, ct, tag)).toBe('qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc=');
    expect(Buffer.from(cdivSha256(aad, ctm, iv, ct, tag), 'base64').toString('hex')).toBe(
      'a8703f2260bd8791ec2d15ea0b23e65a0631eedcf2a13a65cc82db3f47cf5ec7',
    );
  });
  it('absent fields are empty strings in the hash', () => {
    const iv = Buffer.alloc(12, 1);
    const ct = Buffer.alloc(5, 2);
    const tag = Buffer.alloc(16, 3);
    const expected = createHash('sha256')
      .update(Buffer.concat([iv, ct, tag]))
      .digest('base64');
    expect(cdivSha256(undefined, undefined, iv, ct, tag)).toBe(expected);
  });
});
