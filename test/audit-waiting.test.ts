import { describe, expect, it } from 'vitest';
import { Waiting } from '../src/audit/waiting.js';

describe('audit Waiting (the records a request waits for, by id)', () => {
  it('gives each callback its own id and takes it back once', () => {
    const w = new Waiting(16);
    const got: string[] = [];
    const a = w.add(() => got.push('a'));
    const b = w.add(() => got.push('b'));
    expect(a).not.toBe(0);
    expect(b).not.toBe(a);
    expect(w.size).toBe(2);
    w.take(b)?.(true);
    expect(w.take(b)).toBeUndefined();
    w.take(a)?.(true);
    expect(got).toEqual(['b', 'a']);
    expect(w.size).toBe(0);
    expect(w.take(0)).toBeUndefined();
  });

  it('grows when the ids in flight outspan the ring, and keeps every one', () => {
    const w = new Waiting(16);
    const seen = new Set<number>();
    const ids: number[] = [];
    // One record stays waiting while thousands pass: its slot comes round again and again.
    const stuck = w.add((ok) => seen.add(ok ? -1 : -2));
    for (let i = 0; i < 5000; i++) {
      ids.push(w.add(() => seen.add(i)));
      if (ids.length > 40) w.take(ids.shift()!)?.(true);
    }
    expect(w.size).toBe(41);
    for (const id of ids) w.take(id)?.(true);
    expect(seen.size).toBe(5000);
    w.take(stuck)?.(false);
    expect(seen.has(-2)).toBe(true);
    expect(w.size).toBe(0);
  });

  it('wraps its ids past 2^32 - 1 without ever giving 0', () => {
    const w = new Waiting(16, 0xffff_fffe);
    const a = w.add(() => {});
    const b = w.add(() => {});
    const c = w.add(() => {});
    expect([a, b, c]).toEqual([0xffff_fffe, 0xffff_ffff, 1]);
    expect(w.take(b)).toBeTypeOf('function');
    expect(w.take(a)).toBeTypeOf('function');
    expect(w.take(c)).toBeTypeOf('function');
  });

  it('takeAll hands back every waiting callback and empties the ring', () => {
    const w = new Waiting(16);
    const ids = [1, 2, 3].map(() => w.add(() => {}));
    expect(w.takeAll()).toHaveLength(3);
    expect(w.size).toBe(0);
    for (const id of ids) expect(w.take(id)).toBeUndefined();
  });
});
