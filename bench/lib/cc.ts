/** Compiles a bench C program (bench/NAME.c) with the system C compiler into dist/bench/NAME-c. */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { ROOT } from './procs.js';

/** The binary, rebuilt unless newer than its source; or why no compiler could build it. */
export function compileBenchC(name: string): { binary: string } | { error: string } {
  const src = path.join(ROOT, 'bench', `${name}.c`);
  const binary = path.join(ROOT, 'dist', 'bench', `${name}-c`);
  try {
    if (existsSync(binary) && statSync(binary).mtimeMs >= statSync(src).mtimeMs) return { binary };
    mkdirSync(path.dirname(binary), { recursive: true });
    execFileSync(process.env.CC ?? 'cc', ['-O2', '-pthread', '-o', binary, src], { stdio: ['ignore', 'ignore', 'pipe'] });
    return { binary };
  } catch (e) {
    return { error: e instanceof Error ? (e.message.split('\n')[0] ?? e.message) : String(e) };
  }
}
