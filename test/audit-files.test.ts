/**
 * Where a start continues the chain from (src/audit/files.ts chainTail): a file that ends in a
 * checkpoint is a clean end; a checkpoint followed by part of a line (a write cut short) is torn,
 * and the next start record must say so with the bytes after the last newline.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { chainTail } from '../src/audit/files.js';
import { lineHash } from '../src/audit/record.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'xks-audit-files-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const start = '{"v":1,"type":"start","seq":0}';
const use = '{"v":1,"type":"use","seq":1}';
const checkpoint = '{"v":1,"type":"checkpoint","seq":2}';

describe('chainTail', () => {
  it('a checkpoint as the last line, nothing after it: clean', async () => {
    writeFileSync(path.join(dir, 'a.all.1.jsonl'), `${start}\n${use}\n${checkpoint}\n`);
    expect(await chainTail(dir, 'a')).toMatchObject({ file: 'a.all.1.jsonl', clean: true, tornBytes: 0, lastHash: lineHash(checkpoint) });
  });

  it('a checkpoint then part of a line: torn, with its bytes', async () => {
    writeFileSync(path.join(dir, 'b.all.1.jsonl'), `${start}\n${checkpoint}\n{"v":1,"ty`);
    expect(await chainTail(dir, 'b')).toMatchObject({ clean: false, tornBytes: 10, lastHash: lineHash(checkpoint) });
  });

  it('a use record as the last line: not clean (a crash)', async () => {
    writeFileSync(path.join(dir, 'c.all.1.jsonl'), `${start}\n${checkpoint}\n${use}\n`);
    expect(await chainTail(dir, 'c')).toMatchObject({ clean: false, tornBytes: 0, lastHash: lineHash(use) });
  });
});
