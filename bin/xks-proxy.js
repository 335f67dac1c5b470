#!/usr/bin/env node
import { main } from '../dist/src/cli.js';

main(process.argv.slice(2)).then(
  (code) => {
    if (typeof code === 'number') process.exitCode = code;
  },
  (e) => {
    process.stderr.write(`xks-proxy: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  },
);
