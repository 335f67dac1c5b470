/** Parent side of the load generator: forks bench/loadgen.js and runs jobs in it. */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import type { Job, LoadResult } from '../loadgen.js';

export type { Job, LoadResult };

type Reply = { id: number; result?: LoadResult; error?: string } | { ready: true };

export class LoadGen {
  readonly name = 'Node (net, setImmediate spin)';
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (r: LoadResult) => void; reject: (e: Error) => void }>();

  private constructor(private readonly child: ChildProcess) {
    child.on('message', (m: Reply) => {
      if ('ready' in m) return;
      const w = this.waiting.get(m.id);
      if (!w) return;
      this.waiting.delete(m.id);
      if (m.result) w.resolve(m.result);
      else w.reject(new Error(`load generator: ${m.error ?? 'no result'}`));
    });
    child.on('exit', (code) => {
      for (const w of this.waiting.values()) w.reject(new Error(`load generator exited (${code})`));
      this.waiting.clear();
    });
  }

  static start(): Promise<LoadGen> {
    const here = path.dirname(fileURLToPath(import.meta.url));
    const child = fork(path.join(here, '..', 'loadgen.js'), ['--child'], {
      serialization: 'advanced',
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    return new Promise((resolve, reject) => {
      const onMsg = (m: Reply): void => {
        if ('ready' in m) {
          child.off('message', onMsg);
          resolve(new LoadGen(child));
        }
      };
      child.on('message', onMsg);
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`load generator exited early (${code})`)));
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  run(job: Job): Promise<LoadResult> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.child.send({ id, job });
    });
  }

  close(): Promise<void> {
    if (this.child.exitCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      this.child.once('exit', () => resolve());
      this.child.kill('SIGTERM');
    });
  }
}
