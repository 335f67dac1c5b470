/**
 * Where a start continues the chain from (src/audit/files.ts chainTail): a file that ends in a
 * checkpoint is a clean end; a checkpoint followed by part of a line (a write cut short) is torn,
 * and the next start record must say so with the bytes after the last newline. Zeros at the end
 * (blocks a before-response writer prepared, then was killed) are not data: skipped, and cut off.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { chainTail, cutZeros } from '../src/audit/files.js';
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

  it('zeros after a checkpoint (a killed writer): not clean, the zeros are not torn bytes; cutZeros removes them', async () => {
    const text = `${start}\n${checkpoint}\n`;
    const f = path.join(dir, 'd.all.1.jsonl');
    // More zeros than one backwards read (64 KiB), so the scan crosses chunks.
    writeFileSync(f, Buffer.concat([Buffer.from(text), Buffer.alloc(70_000)]));
    const tail = await chainTail(dir, 'd');
    expect(tail).toMatchObject({ clean: false, tornBytes: 0, zeros: 70_000, dataBytes: text.length, lastHash: lineHash(checkpoint) });
    await cutZeros(f, tail!.dataBytes);
    expect(readFileSync(f, 'utf8')).toBe(text);
    expect(await chainTail(dir, 'd')).toMatchObject({ clean: true, zeros: 0 });
  });

  it('part of a line, then zeros: torn with the bytes of that part', async () => {
    writeFileSync(path.join(dir, 'e.all.1.jsonl'), Buffer.concat([Buffer.from(`${start}\n${use}\n{"v":1,"ty`), Buffer.alloc(4096)]));
    expect(await chainTail(dir, 'e')).toMatchObject({ clean: false, tornBytes: 10, zeros: 4096, lastHash: lineHash(use) });
  });
});
