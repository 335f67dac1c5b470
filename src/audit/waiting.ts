/**
 * The records of one event loop that a request waits for (before-response), by id: a ring indexed
 * by the id's low bits, grown when the ids in flight outspan it. Ids are handed out in order and
 * come back in about that order, so a slot is free again long before its id comes round.
 *
 * Not a Map: a Map that takes and deletes an entry per request made V8 promote each request's
 * objects (1.6 MB per scavenge against 0.08 MB with the trail off) and run 5 times the full
 * collections, which cost a tenth of the throughput and doubled p99 in the closed loop
 * (bench/results/history.md).
 */
import type { Written } from './sink.js';

const MAX_ID = 0xffff_ffff;

export class Waiting {
  /** ids[i]: the id waiting in slot i, 0 when free (0 is never an id). */
  private ids: Uint32Array;
  private slots: (Written | undefined)[];
  private mask: number;
  private nextId: number;
  private count = 0;

  /** `firstId`: where ids begin (tests start near the wrap). */
  constructor(capacity = 1024, firstId = 1) {
    this.nextId = firstId;
    let c = 16;
    while (c < capacity) c *= 2;
    this.ids = new Uint32Array(c);
    this.slots = new Array<Written | undefined>(c).fill(undefined);
    this.mask = c - 1;
  }

  get size(): number {
    return this.count;
  }

  /** Keeps `w` under a new id (never 0). */
  add(w: Written): number {
    const id = this.nextId;
    this.nextId = id === MAX_ID ? 1 : id + 1;
    while (this.ids[id & this.mask] !== 0) this.grow();
    const i = id & this.mask;
    this.ids[i] = id;
    this.slots[i] = w;
    this.count++;
    return id;
  }

  /** The callback waiting under `id`, now removed; undefined when none is. */
  take(id: number): Written | undefined {
    const i = id & this.mask;
    if (id === 0 || this.ids[i] !== id) return undefined;
    const w = this.slots[i];
    this.ids[i] = 0;
    this.slots[i] = undefined;
    this.count--;
    return w;
  }

  /** Every callback still waiting, removed (oldest id first is not promised). */
  takeAll(): Written[] {
    const out: Written[] = [];
    for (let i = 0; i < this.ids.length; i++) {
      if (this.ids[i] === 0) continue;
      out.push(this.slots[i]!);
      this.ids[i] = 0;
      this.slots[i] = undefined;
    }
    this.count = 0;
    return out;
  }

  private grow(): void {
    const ids = this.ids;
    const slots = this.slots;
    const c = ids.length * 2;
    this.ids = new Uint32Array(c);
    this.slots = new Array<Written | undefined>(c).fill(undefined);
    this.mask = c - 1;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (id === 0) continue;
      this.ids[id & this.mask] = id;
      this.slots[id & this.mask] = slots[i];
    }
  }
}
