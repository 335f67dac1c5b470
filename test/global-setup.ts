import { execFileSync } from 'node:child_process';

/** CLI tests run the real `bin/xks-proxy.js`, which loads dist/: compile the TypeScript first. */
export default function setup(): void {
  execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { stdio: 'inherit' });
}
