/**
 * The order of a trail's files: the chain, not the names. Each file's start record names its
 * predecessor (`previousFile`); the file whose start says "first" begins the chain. A file whose first
 * line is not a readable start record cannot be placed by its link, so it goes where its name sorts
 * (`<prefix>.<period>.<n>.jsonl`), for the verifier to name what is wrong with that line.
 *
 * A range (`audit verify --range`): the files given may begin mid-chain. Then the earliest file (by
 * name) whose predecessor is not given begins it; any other file whose predecessor is not given is a
 * gap inside the range (a missing file). Without --range the trail must begin with its first file.
 */
import type { TrailFile } from './trail-files.js';

export interface OrderBreak {
  file: string;
  problem: string;
}

/** Where a range begins: its first file, whose predecessor (named by its start record) was not given. */
export interface RangeStart {
  file: string;
  previousFile: string;
  /** The hash the range's first line chains from (its start record's prev). */
  previousHash: string;
}

export type Ordering = { files: TrailFile[]; range: RangeStart | undefined } | { break: OrderBreak };

/** Sort key from the name: period, then the counter (numerically). */
function nameKey(name: string): [string, number] {
  const m = /\.([0-9]{4}-[0-9]{2}-[0-9]{2}(?:-[0-9]{2}){0,2}|all)\.([0-9]+)\.jsonl$/.exec(name);
  return m ? [m[1]!, Number(m[2])] : [name, 0];
}

export function byName(a: TrailFile, b: TrailFile): number {
  const [pa, na] = nameKey(a.name);
  const [pb, nb] = nameKey(b.name);
  return pa < pb ? -1 : pa > pb ? 1 : na - nb;
}

interface Link {
  reason: string;
  previousFile: string | undefined;
  /** The start record's prev (for a range's first file: where it chains from). */
  prev: string;
}

function link(f: TrailFile): Link | undefined {
  const r = f.first?.record;
  if (r === undefined || typeof r === 'string' || r.type !== 'start') return undefined;
  return { reason: r.reason, previousFile: r.previousFile, prev: r.prev };
}

const notGiven = (f: TrailFile, previous: string): OrderBreak => ({
  file: f.name,
  problem: `its start record names the previous file ${previous}, which is not among the files given`,
});

/** `range`: the files may begin mid-chain (see above). */
export function orderTrail(input: readonly TrailFile[], range = false): Ordering {
  const files = [...input].sort(byName);
  const names = new Set(files.map((f) => f.name));
  const successors = new Map<string, TrailFile[]>();
  const roots: TrailFile[] = [];
  const unlinked: TrailFile[] = [];
  /** Files whose predecessor is not given, in name order. */
  const orphans: { file: TrailFile; link: Link & { previousFile: string } }[] = [];
  for (const f of files) {
    const l = link(f);
    if (l === undefined) unlinked.push(f);
    else if (l.reason === 'first' || l.previousFile === undefined) roots.push(f);
    else if (!names.has(l.previousFile)) orphans.push({ file: f, link: { ...l, previousFile: l.previousFile } });
    else successors.set(l.previousFile, [...(successors.get(l.previousFile) ?? []), f]);
  }
  let start: RangeStart | undefined;
  if (orphans.length > 0) {
    const [o, gap] = orphans;
    if (roots.length > 0 || !range) {
      const b = notGiven(o!.file, o!.link.previousFile);
      if (roots.length === 0) b.problem += ' (the trail does not begin here: --range verifies the files given from their first one on)';
      return { break: b };
    }
    if (gap !== undefined) return { break: notGiven(gap.file, gap.link.previousFile) };
    start = { file: o!.file.name, previousFile: o!.link.previousFile, previousHash: o!.link.prev };
    roots.push(o!.file);
  }
  if (roots.length > 1)
    return { break: { file: roots[1]!.name, problem: `a second first file (${roots.map((r) => r.name).join(', ')}): two chains` } };
  const chain: TrailFile[] = [];
  if (roots.length === 1) {
    for (let f: TrailFile | undefined = roots[0]; f !== undefined; ) {
      chain.push(f);
      const next = successors.get(f.name) ?? [];
      if (next.length > 1)
        return { break: { file: next[1]!.name, problem: `${next.map((n) => n.name).join(' and ')} both continue ${f.name}` } };
      // A file with no complete line (a crash right after it was made) has no link back, but its successor names it.
      f = next[0] ?? unlinked.find((u) => byName(f!, u) < 0 && successors.has(u.name));
    }
  }
  const placed = new Set(chain.map((f) => f.name));
  const stray = files.filter((f) => !placed.has(f.name) && !unlinked.includes(f));
  const rest = unlinked.filter((u) => !placed.has(u.name));
  if (stray.length > 0) return { break: { file: stray[0]!.name, problem: 'its chain does not lead back to the first file (a cycle)' } };
  // Files without a readable start record: where their names sort, between the chained files.
  for (const u of rest) {
    const at = chain.findIndex((c) => byName(u, c) < 0);
    chain.splice(at === -1 ? chain.length : at, 0, u);
  }
  return { files: chain, range: start };
}
