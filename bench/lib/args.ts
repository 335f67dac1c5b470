/**
 * The command-line parser of every bench program (run, soak, uws-empty, experiments/*):
 * `--name value` / `--name=value` options and `--flag` switches over node:util's parseArgs,
 * numbers checked, `--help` printed from the same table. An unknown option, a missing value
 * or a value that is not a number prints the reason and exits 2, never ignored.
 */
import { parseArgs as parseNodeArgs } from 'node:util';

export type OptionSpec =
  | { type: 'flag'; help: string }
  | { type: 'string'; help: string; default?: string /** In the help, e.g. FILE. */; value?: string }
  | { type: 'number'; help: string; default?: number };

export type Options = Record<string, OptionSpec>;

/** What parseArgs returns: a flag is a boolean; a value with a default is always there. */
export type Parsed<O extends Options> = {
  [K in keyof O]: O[K] extends { type: 'flag' }
    ? boolean
    : O[K] extends { type: 'number'; default: number }
      ? number
      : O[K] extends { type: 'number' }
        ? number | undefined
        : O[K] extends { type: 'string'; default: string }
          ? string
          : string | undefined;
};

/** The --help text: `usage`, then one line per option. */
export function helpText(usage: string, options: Options): string {
  const rows = Object.entries(options).map(([name, o]) => {
    const left = o.type === 'flag' ? `--${name}` : `--${name} ${o.type === 'number' ? 'N' : (o.value ?? 'VALUE')}`;
    const def = o.type !== 'flag' && o.default !== undefined ? ` (default ${o.default})` : '';
    return [left, `${o.help}${def}`] as const;
  });
  const w = Math.max(0, ...rows.map(([l]) => l.length));
  return [usage, ...rows.map(([l, r]) => `  ${l.padEnd(w)}  ${r}`)].join('\n') + '\n';
}

/** Parses `argv` (default: this process's arguments); on --help / -h prints the help and exits 0. */
export function parseArgs<O extends Options>(usage: string, options: O, argv: string[] = process.argv.slice(2)): Parsed<O> {
  const spec: Record<string, { type: 'boolean' | 'string'; short?: string }> = { help: { type: 'boolean', short: 'h' } };
  for (const [name, o] of Object.entries(options)) spec[name] = { type: o.type === 'flag' ? 'boolean' : 'string' };
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseNodeArgs({ args: argv, options: spec, strict: true, allowPositionals: false }));
  } catch (e) {
    return usageError(usage, e instanceof Error ? e.message : String(e));
  }
  if (values.help === true) {
    process.stdout.write(helpText(usage, options));
    process.exit(0);
  }
  const out: Record<string, string | number | boolean | undefined> = {};
  for (const [name, o] of Object.entries(options)) {
    const v = values[name];
    if (o.type === 'flag') out[name] = v === true;
    else if (v === undefined) out[name] = o.default;
    else if (o.type === 'string') out[name] = String(v);
    else {
      const n = Number(v);
      if (String(v).trim() === '' || !Number.isFinite(n)) usageError(usage, `--${name} needs a number, got ${JSON.stringify(v)}`);
      out[name] = n;
    }
  }
  return out as Parsed<O>;
}

function usageError(usage: string, why: string): never {
  process.stderr.write(`${why}\nusage: ${usage} (--help lists the options)\n`);
  process.exit(2);
}
