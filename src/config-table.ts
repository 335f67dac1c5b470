/**
 * The machinery of settings.toml's tables (src/config.ts holds the tables): typed accessors that
 * name the failing key (Reader), field descriptions (type, range, default, secret-ness,
 * required-ness, checks), and the two uses of a table: reading a section and summarizing it
 * without secrets. Every problem is a ConfigError `<file>: <dotted.key>: <problem>`.
 */

export class ConfigError extends Error {
  readonly file: string;
  /** Dotted key path, e.g. `external_key_stores[1].uri_path_prefix`; undefined for file-level problems. */
  readonly key: string | undefined;
  readonly problem: string;

  constructor(file: string, key: string | undefined, problem: string) {
    super(oneLine(key === undefined ? `${file}: ${problem}` : `${file}: ${key}: ${problem}`));
    this.name = 'ConfigError';
    this.file = file;
    this.key = key;
    this.problem = problem;
  }
}

export type Table = { [key: string]: unknown };

export function isTable(v: unknown): v is Table {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const proto: unknown = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

interface StrOpts {
  secret?: boolean;
  nonEmpty?: boolean;
}

export interface IntOpts {
  min: number;
  max: number;
  what: string;
}

export const U16 = 65535;
export const U32 = 4294967295;
export const SAFE = Number.MAX_SAFE_INTEGER;

/** Typed accessors that throw ConfigError naming the key and collect unknown-key warnings. */
export class Reader {
  readonly warnings: string[] = [];
  constructor(readonly file: string) {}

  fail(key: string, problem: string): never {
    throw new ConfigError(this.file, key, problem);
  }

  warn(key: string, note: string): void {
    this.warnings.push(oneLine(`${this.file}: ${key}: ${note}`));
  }

  /** Warns about keys of `t` not in `known`. */
  unknown(t: Table, path: string, known: readonly string[]): void {
    for (const k of Object.keys(t)) if (!known.includes(k)) this.warn(join(path, k), 'unknown key (ignored)');
  }

  table(t: Table, path: string, key: string, required: true): Table;
  table(t: Table, path: string, key: string, required: false): Table | undefined;
  table(t: Table, path: string, key: string, required: boolean): Table | undefined;
  table(t: Table, path: string, key: string, required: boolean): Table | undefined {
    const v = t[key];
    const p = join(path, key);
    if (v === undefined) {
      if (required) this.fail(p, 'missing table');
      return undefined;
    }
    if (!isTable(v)) this.fail(p, `expected a table, got ${describe(v)}`);
    return v;
  }

  str(t: Table, path: string, key: string, required: true, o?: StrOpts): string;
  str(t: Table, path: string, key: string, required: false, o?: StrOpts): string | undefined;
  str(t: Table, path: string, key: string, required: boolean, o?: StrOpts): string | undefined;
  str(t: Table, path: string, key: string, required: boolean, o: StrOpts = {}): string | undefined {
    const v = t[key];
    const p = join(path, key);
    if (v === undefined) {
      if (required) this.fail(p, 'missing key');
      return undefined;
    }
    if (typeof v !== 'string') this.fail(p, `expected a string, got ${o.secret ? typeName(v) : describe(v)}`);
    if (o.nonEmpty && v === '') this.fail(p, 'must not be empty');
    return v;
  }

  bool(t: Table, path: string, key: string, required: true): boolean;
  bool(t: Table, path: string, key: string, required: false): boolean | undefined;
  bool(t: Table, path: string, key: string, required: boolean): boolean | undefined;
  bool(t: Table, path: string, key: string, required: boolean): boolean | undefined {
    const v = t[key];
    const p = join(path, key);
    if (v === undefined) {
      if (required) this.fail(p, 'missing key');
      return undefined;
    }
    if (typeof v !== 'boolean') this.fail(p, `expected a boolean (true or false), got ${describe(v)}`);
    return v;
  }

  int(t: Table, path: string, key: string, required: true, o: IntOpts): number;
  int(t: Table, path: string, key: string, required: false, o: IntOpts): number | undefined;
  int(t: Table, path: string, key: string, required: boolean, o: IntOpts): number | undefined;
  int(t: Table, path: string, key: string, required: boolean, o: IntOpts): number | undefined {
    const v = t[key];
    const p = join(path, key);
    if (v === undefined) {
      if (required) this.fail(p, 'missing key');
      return undefined;
    }
    if (typeof v !== 'number' || !Number.isInteger(v) || v < o.min || v > o.max) this.fail(p, `expected ${o.what}, got ${describe(v)}`);
    return v;
  }
}

// Fields -----------------------------------------------------------------------------------------------------
//
// A table lists a section's keys in order with their type, range, default, secret-ness, required-ness and
// checks; readFields reads a section with it (unknown keys first, then every key in table order, each key's
// checks right after it is read), and summarize shapes the redacted summary with it. `Fields<T>` checks a
// table against the section's interface: every key of the interface has an entry of its type, and no other.

/** Values of a section read so far (table order); `ctx` is what the caller hands in (an enclosing section). */
export type Seen = Readonly<Record<string, unknown>>;
type When = boolean | ((seen: Seen, ctx: Seen) => boolean);

/** A key's warnings and refusals, bound to its dotted name. */
export interface At {
  warn(note: string): void;
  fail(problem: string): never;
}

interface FieldBase<V> {
  /** Absent key: `missing key` (`missing table`) when true. Default false. */
  required?: When;
  /** The value when the key is absent. */
  default?: V | ((seen: Seen, ctx: Seen) => V);
  /** Runs once the value is known (read or defaulted): warnings, and refusals that need the value. */
  check?: (v: V, at: At, seen: Seen, ctx: Seen) => void;
  /** This key's entries of the redacted summary (default `{ [key]: value }`; secrets: whether set). */
  summary?: (v: V | undefined, section: Seen) => Record<string, unknown>;
  /** Read by the section's reader itself (cross-key rules), not by readFields. */
  byHand?: true;
}
interface IntField extends FieldBase<number> {
  kind: 'int';
  range: IntOpts;
  /** Larger values are used as this, with a warning (the Rust proxy takes them; the engine cannot). */
  atMost?: number;
}
interface BoolField extends FieldBase<boolean> {
  kind: 'bool';
}
interface StrField<V = string> extends FieldBase<V> {
  kind: 'str';
  /** Never in a message, the summary, JSON or util.inspect (a non-enumerable property). */
  secret?: boolean;
  nonEmpty?: When;
  /** The value kept for the string read; undefined keeps the default. Default: the string. */
  parse?: (raw: string, at: At, seen: Seen) => V | undefined;
}
interface TableField<V> extends FieldBase<V> {
  kind: 'table';
  fields: Fields<V>;
}
/** Arrays and lists of tables: always read by the section's reader. */
interface CustomField<V> extends FieldBase<V> {
  kind: 'custom';
}
type FieldOf<V> = [NonNullable<V>] extends [number]
  ? IntField | StrField<number>
  : [NonNullable<V>] extends [boolean]
    ? BoolField
    : [NonNullable<V>] extends [string]
      ? StrField<NonNullable<V>>
      : TableField<NonNullable<V>> | CustomField<V>;
/** The table of a section T: an entry for every key of T. */
export type Fields<T> = { [K in keyof T]-?: FieldOf<T[K]> };
export type AnyField = IntField | BoolField | StrField<unknown> | TableField<unknown> | CustomField<unknown>;

function when(w: When | undefined, seen: Seen, ctx: Seen): boolean {
  return typeof w === 'function' ? w(seen, ctx) : w === true;
}

function entries(fields: object): [string, AnyField][] {
  return Object.entries(fields) as [string, AnyField][];
}

/** Reads table `t` (at `path`) with `fields`: unknown-key warnings, then each key in order. */
export function readFields<T>(r: Reader, t: Table, path: string, fields: Fields<T>, ctx: Seen = {}): T {
  r.unknown(t, path, Object.keys(fields));
  const out: Record<string, unknown> = {};
  for (const [key, f] of entries(fields)) {
    if (f.kind === 'custom' || f.byHand) continue;
    const v = readField(r, t, path, key, f, out, ctx);
    if (v === undefined) continue;
    if (f.kind === 'str' && f.secret === true) withHidden(out, key, v as string);
    else out[key] = v;
  }
  return out as T;
}

/** One key of `t` with its field: the value read, parsed, defaulted and checked (undefined when absent). */
export function readField(r: Reader, t: Table, path: string, key: string, f: AnyField, seen: Seen, ctx: Seen): unknown {
  const dotted = join(path, key);
  const at: At = { warn: (note) => r.warn(dotted, note), fail: (problem) => r.fail(dotted, problem) };
  const required = when(f.required, seen, ctx);
  let v: unknown;
  switch (f.kind) {
    case 'int':
      v = r.int(t, path, key, required, f.range);
      if (v !== undefined && f.atMost !== undefined) v = atMost(r, dotted, v as number, f.atMost);
      break;
    case 'bool':
      v = r.bool(t, path, key, required);
      break;
    case 'str': {
      const raw = r.str(t, path, key, required, { secret: f.secret === true, nonEmpty: when(f.nonEmpty, seen, ctx) });
      v = raw !== undefined && f.parse ? f.parse(raw, at, seen) : raw;
      break;
    }
    case 'table': {
      const sub = r.table(t, path, key, required);
      if (sub !== undefined) v = readFields(r, sub, dotted, f.fields as Fields<unknown>, seen);
      break;
    }
    case 'custom':
      throw new Error(`${dotted} is read by its section's reader`);
  }
  if (v === undefined && f.default !== undefined)
    v = typeof f.default === 'function' ? (f.default as (s: Seen, c: Seen) => unknown)(seen, ctx) : f.default;
  if (v !== undefined) (f.check as ((v: unknown, at: At, seen: Seen, ctx: Seen) => void) | undefined)?.(v, at, seen, ctx);
  return v;
}

/** The redacted summary of a section, in table order: secrets only say whether they are set. */
export function summarize<T>(section: T, fields: Fields<T>): Record<string, unknown> {
  const s = section as Seen;
  const out: Record<string, unknown> = {};
  for (const [key, f] of entries(fields)) {
    const v = s[key];
    if (f.summary) Object.assign(out, (f.summary as (v: unknown, s: Seen) => Record<string, unknown>)(v, s));
    else if (f.kind === 'str' && f.secret === true) out[key] = v === '' ? '<empty>' : '<redacted>';
    else if (f.kind === 'table') out[key] = v === undefined ? undefined : summarize(v, f.fields as Fields<unknown>);
    else out[key] = v;
  }
  return out;
}

/** `value`, or `max` with a warning when it is above. */
function atMost(r: Reader, key: string, value: number, max: number): number {
  if (value <= max) return value;
  r.warn(key, `${value} is above ${max}, the most this proxy supports: ${max} is used`);
  return max;
}

export const POSITIVE: IntOpts = { min: 1, max: SAFE, what: 'a positive integer' };
export const NON_NEGATIVE: IntOpts = { min: 0, max: SAFE, what: 'a non-negative integer' };
export const PORT: IntOpts = { min: 0, max: U16, what: 'a port number (0..65535; 0 picks a free port)' };
/** Adds a read-only, non-enumerable property: kept out of JSON.stringify, util.inspect and spreads. */
export function withHidden<T extends object, K extends string>(obj: T, key: K, value: string): T & Record<K, string> {
  Object.defineProperty(obj, key, { value, enumerable: false, writable: false });
  return obj as T & Record<K, string>;
}

export function join(path: string, key: string): string {
  return path === '' ? key : `${path}.${key}`;
}

export function typeName(v: unknown): string {
  if (Array.isArray(v)) return 'an array';
  if (v instanceof Date) return 'a date';
  if (isTable(v)) return 'a table';
  if (typeof v === 'number') return Number.isInteger(v) ? 'an integer' : 'a float';
  if (typeof v === 'string') return 'a string';
  if (typeof v === 'boolean') return 'a boolean';
  return 'a TOML date';
}

/** A short, printable rendering of a (non-secret) value for messages. */
export function describe(v: unknown): string {
  if (typeof v === 'string') {
    const s = JSON.stringify(v.length > 60 ? `${v.slice(0, 60)}...` : v);
    return s.replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  }
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  return typeName(v);
}

export function oneLine(s: string): string {
  return s.replace(/[\x00-\x1f\x7f\u2028\u2029]/g, ' ');
}
