/** Summarises a V8 .cpuprofile (node --cpu-prof): self time per function. */
import { readFileSync } from 'node:fs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  hitCount?: number;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

export interface SelfTime {
  fn: string;
  where: string;
  selfMs: number;
  /** Percent of all samples (idle included). */
  pct: number;
}

export function topSelfTime(file: string, limit = 25): { totalMs: number; idlePct: number; top: SelfTime[] } {
  const prof = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  for (const n of prof.nodes) byId.set(n.id, n);
  // Self time from samples + timeDeltas when present (more exact than hitCount).
  const selfUs = new Map<number, number>();
  const samples = prof.samples ?? [];
  const deltas = prof.timeDeltas ?? [];
  for (let i = 0; i < samples.length; i++) {
    const dt = deltas[i + 1] ?? deltas[i] ?? 0;
    selfUs.set(samples[i]!, (selfUs.get(samples[i]!) ?? 0) + dt);
  }
  const totalUs = prof.endTime - prof.startTime;
  const agg = new Map<string, SelfTime>();
  let idleUs = 0;
  for (const [id, us] of selfUs) {
    const n = byId.get(id);
    if (!n) continue;
    const cf = n.callFrame;
    const name = cf.functionName || '(anonymous)';
    if (name === '(idle)') idleUs += us;
    const where = cf.url ? `${cf.url.replace(/^file:\/\/.*?\/(dist|node_modules)\//, '$1/')}:${cf.lineNumber + 1}` : '';
    const key = `${name}@${where}`;
    const e = agg.get(key) ?? { fn: name, where, selfMs: 0, pct: 0 };
    e.selfMs += us / 1000;
    agg.set(key, e);
  }
  const top = [...agg.values()].sort((a, b) => b.selfMs - a.selfMs).slice(0, limit);
  for (const t of top) t.pct = (100 * t.selfMs * 1000) / totalUs;
  return { totalMs: totalUs / 1000, idlePct: (100 * idleUs) / totalUs, top };
}
