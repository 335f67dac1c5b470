/** The real `xks-proxy` command (bin/xks-proxy.js) as a child process, serving until stopped. */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';

export const BIN = path.resolve('bin/xks-proxy.js');

export interface CliProxy {
  child: ChildProcess;
  port: number;
  /** Exit code, once the process ends. */
  exited: Promise<number | null>;
  /** Everything it printed so far (stdout and stderr). */
  output(): string;
}

/**
 * Starts `xks-proxy` with these environment variables added and waits for its "listening" line;
 * `wrapper`: a command that runs node (e.g. ['prlimit', '--memlock=4096']); `bin`: this
 * checkout's bin/xks-proxy.js, or an installed one.
 */
export async function spawnProxyCli(env: Record<string, string>, wrapper: string[] = [], bin = BIN): Promise<CliProxy> {
  const [cmd, ...args] = [...wrapper, process.execPath, bin];
  const child = spawn(cmd!, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let out = '';
  child.stderr!.on('data', (c: Buffer) => (out += c.toString()));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`proxy did not start: ${out}`)), 15000);
    child.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      const m = /listening url=https?:\/\/[^ ]*:(\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`proxy exited ${code}: ${out}`));
    });
  });
  return { child, port, exited, output: () => out };
}
