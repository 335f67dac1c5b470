import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { TracingSection } from '../src/config.js';
import { createLogger, formatLine, formatRequestLine, rollingFileName, type BufferedLogger, type RequestLogLine } from '../src/log.js';

/** A real Writable that records what reached it. */
class Capture extends Writable {
  chunks: string[] = [];
  override _write(chunk: Buffer | string, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.chunks.push(chunk.toString());
    cb();
  }
  get text(): string {
    return this.chunks.join('');
  }
  get lines(): string[] {
    return this.text.split('\n').filter((l) => l !== '');
  }
}

const stdoutOnly = (level: TracingSection['level'] = 'INFO'): TracingSection => ({
  is_stdout_writer_enabled: true,
  is_file_writer_enabled: false,
  level,
  rotation_kind: 'HOURLY',
});

const T0 = new Date('2026-11-30T02:56:26.123Z');
const LINE_RE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (TRACE|DEBUG|INFO|WARN|ERROR) /;

let dir: string;
let loggers: BufferedLogger[] = [];
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'xks-log-'));
  loggers = [];
});
afterEach(async () => {
  for (const l of loggers) await l.close();
  rmSync(dir, { recursive: true, force: true });
});

function make(tracing: TracingSection, opts: Parameters<typeof createLogger>[1] = {}): BufferedLogger {
  const l = createLogger(tracing, opts);
  loggers.push(l);
  return l;
}

describe('format', () => {
  it('timestamp, level, message, logfmt fields', () => {
    expect(formatLine(T0, 'INFO', 'message', { key: 'value', key2: 'quoted value', n: 42, b: false, skip: undefined })).toBe(
      '2026-11-30T02:56:26.123Z INFO message key=value key2="quoted value" n=42 b=false\n',
    );
  });

  it('escapes quotes, backslashes, newlines and control characters; one call is one line', () => {
    const evil = 'x"\\\n2026-11-30T00:00:00.000Z ERROR forged=1\r\t\u0000\u001b[31m\u2028\u202e\u0085';
    const line = formatLine(T0, 'WARN', evil, { [evil]: evil, empty: '' });
    expect(line.endsWith('\n')).toBe(true);
    expect(line.slice(0, -1)).not.toMatch(/[\x00-\x1f\x7f-\x9f\u2028\u2029\u202e]/);
    expect(line.split('\n')).toHaveLength(2);
    expect(line).toContain('"x\\"\\\\\\n2026-11-30T00:00:00.000Z ERROR forged=1\\r\\t\\u0000\\u001b[31m\\u2028\\u202e\\u0085"');
    expect(line).toContain(' empty=""');
    // The key is reduced to safe characters, so it cannot fake '=' or spaces.
    expect(line).toMatch(/ x___2026-11-30T00_00_00.000Z_ERROR_forged_1_____31m___=/);
  });

  it('messages that look like fields are quoted; plain ones are bare', () => {
    expect(formatLine(T0, 'INFO', 'starting up')).toBe('2026-11-30T02:56:26.123Z INFO starting up\n');
    expect(formatLine(T0, 'INFO', 'a b=c')).toBe('2026-11-30T02:56:26.123Z INFO "a b=c"\n');
    expect(formatLine(T0, 'INFO', '')).toBe('2026-11-30T02:56:26.123Z INFO ""\n');
  });

  it('keeps valid non-ASCII text, escapes lone surrogates, truncates huge values', () => {
    expect(formatLine(T0, 'INFO', 'm', { v: 'héllo 😀' })).toContain(' v="héllo 😀"');
    expect(formatLine(T0, 'INFO', 'm', { v: 'a\ud800b' })).toContain(' v="a\\ud800b"');
    const long = formatLine(T0, 'INFO', 'm', { v: 'a'.repeat(5000) });
    expect(long.length).toBeLessThan(1200);
    expect(long).toContain('...(3976 more)');
  });
});

describe('level filter', () => {
  it('drops lines below the level and reports enabled()', async () => {
    const out = new Capture();
    const log = make(stdoutOnly('WARN'), { stdout: out, now: () => T0 });
    log.trace('t');
    log.debug('d');
    log.info('i');
    log.warn('w', { a: 1 });
    log.error('e');
    expect(log.enabled('INFO')).toBe(false);
    expect(log.enabled('WARN')).toBe(true);
    expect(log.enabled('ERROR')).toBe(true);
    await log.flush();
    expect(out.lines).toEqual(['2026-11-30T02:56:26.123Z WARN w a=1', '2026-11-30T02:56:26.123Z ERROR e']);
  });

  it('disabled levels do not even read the clock (return before formatting)', () => {
    let calls = 0;
    const log = make(stdoutOnly('ERROR'), {
      stdout: new Capture(),
      now: () => {
        calls++;
        return T0;
      },
    });
    calls = 0;
    for (let i = 0; i < 1000; i++) log.debug('x', { i });
    expect(calls).toBe(0);
  });

  it('no writer enabled: nothing is enabled', () => {
    const log = make({ ...stdoutOnly('TRACE'), is_stdout_writer_enabled: false });
    expect(log.enabled('ERROR')).toBe(false);
  });
});

describe('request lines', () => {
  it('formatRequestLine is formatLine of the same fields in the same order, hostile values included', () => {
    const t = new Date('2026-11-30T05:00:00.123Z');
    const lines: RequestLogLine[] = [
      {
        op: 'Encrypt',
        prefix: '/p',
        keyId: 'k1',
        kmsRequestId: 'r-1',
        outcome: 'ok',
        status: 200,
        micros: 321,
        kmsOperation: 'GenerateDataKey',
        awsPrincipalArn: 'arn:aws:iam::1:role/x',
      },
      { op: 'Decrypt', prefix: '', outcome: 'ValidationException', status: 400, micros: 0, detail: 'bad "x"\nINFO forged=1' },
      {
        op: 'Encrypt',
        prefix: '/p',
        keyId: 'k\u2028',
        kmsRequestId: 'a b',
        outcome: 'InternalException',
        status: 500,
        micros: 7,
        kmsKeyArn: '\u0000',
        kmsViaService: 'x'.repeat(2000),
        awsSourceVpc: 'vpc',
        awsSourceVpce: '\ud800',
      },
    ];
    for (const l of lines) {
      const level = l.status >= 500 ? 'ERROR' : 'INFO';
      const fields = {
        op: l.op,
        prefix: l.prefix,
        keyId: l.keyId,
        kmsRequestId: l.kmsRequestId,
        outcome: l.outcome,
        status: l.status,
        micros: l.micros,
        detail: l.detail,
        kmsOperation: l.kmsOperation,
        awsPrincipalArn: l.awsPrincipalArn,
        kmsKeyArn: l.kmsKeyArn,
        kmsViaService: l.kmsViaService,
        awsSourceVpc: l.awsSourceVpc,
        awsSourceVpce: l.awsSourceVpce,
      };
      expect(formatRequestLine(t, level, l)).toBe(formatLine(t, level, 'request', fields));
    }
  });

  it('INFO for success and 4xx, ERROR for 5xx, one line each', async () => {
    const out = new Capture();
    const log = make(stdoutOnly('INFO'), { stdout: out, now: () => T0 });
    log.request({
      op: 'encrypt',
      prefix: '/example/uri/path/prefix',
      keyId: 'foo',
      kmsRequestId: 'a1b2-c3',
      outcome: 'ok',
      status: 200,
      micros: 412,
    });
    log.request({ op: 'decrypt', prefix: '', keyId: 'foo', outcome: 'InvalidCiphertextException', status: 400, micros: 90 });
    log.request({ op: 'health', prefix: '', outcome: 'InternalException', status: 500, micros: 5, detail: 'Session pool exhaustion' });
    await log.flush();
    expect(out.lines).toEqual([
      '2026-11-30T02:56:26.123Z INFO request op=encrypt prefix=/example/uri/path/prefix keyId=foo kmsRequestId=a1b2-c3 outcome=ok status=200 micros=412',
      '2026-11-30T02:56:26.123Z INFO request op=decrypt prefix="" keyId=foo outcome=InvalidCiphertextException status=400 micros=90',
      '2026-11-30T02:56:26.123Z ERROR request op=health prefix="" outcome=InternalException status=500 micros=5 detail="Session pool exhaustion"',
    ]);
  });

  it('ERROR level hides successful requests but keeps 5xx', async () => {
    const out = new Capture();
    const log = make(stdoutOnly('ERROR'), { stdout: out, now: () => T0 });
    log.request({ op: 'encrypt', prefix: '', outcome: 'ok', status: 200, micros: 1 });
    log.request({ op: 'encrypt', prefix: '', outcome: 'InternalException', status: 500, micros: 1 });
    await log.flush();
    expect(out.lines).toHaveLength(1);
    expect(out.lines[0]).toMatch(/ ERROR request .*status=500/);
  });
});

describe('buffering', () => {
  it('nothing is written synchronously; the timer or flush() writes', async () => {
    const out = new Capture();
    const log = make(stdoutOnly(), { stdout: out, flushIntervalMs: 20 });
    log.info('one');
    log.info('two');
    expect(out.chunks).toEqual([]);
    expect(log.stats().bufferedBytes).toBeGreaterThan(0);
    await new Promise((r) => setTimeout(r, 80));
    expect(out.lines).toHaveLength(2);
    expect(out.chunks).toHaveLength(1); // batched into one write
    log.info('three');
    expect(out.lines).toHaveLength(2);
    await log.flush();
    expect(out.lines.map((l) => l.replace(LINE_RE, ''))).toEqual(['one', 'two', 'three']);
    expect(log.stats()).toMatchObject({ dropped: 0, written: 3, bufferedBytes: 0 });
  });

  it('a full 64 KiB buffer drains without waiting for the timer', async () => {
    const out = new Capture();
    const log = make(stdoutOnly(), { stdout: out, flushIntervalMs: 60_000 });
    for (let i = 0; i < 1000; i++) log.info('bulk', { i, pad: 'x'.repeat(80) });
    expect(out.chunks).toEqual([]);
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setTimeout(r, 10));
    expect(out.lines).toHaveLength(1000);
  });

  it('no drop under normal load (2,000 request lines per 100 ms tick for 1 s)', async () => {
    const log = make({
      is_stdout_writer_enabled: false,
      is_file_writer_enabled: true,
      level: 'INFO',
      directory: dir,
      file_prefix: 'load.log',
      rotation_kind: 'NEVER',
    });
    for (let tick = 0; tick < 10; tick++) {
      for (let i = 0; i < 2000; i++) {
        log.request({
          op: 'encrypt',
          prefix: '/example/uri/path/prefix',
          keyId: 'foo',
          kmsRequestId: `req-${tick}-${i}`,
          outcome: 'ok',
          status: 200,
          micros: 300 + i,
        });
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    await log.flush();
    expect(log.stats().dropped).toBe(0);
    const lines = readFileSync(join(dir, 'load.log'), 'utf8')
      .split('\n')
      .filter((l) => l !== '');
    expect(lines).toHaveLength(20_000);
    expect(lines[19_999]).toContain('kmsRequestId=req-9-1999');
  });

  it('bounded memory: past the cap lines are dropped, counted and reported once', async () => {
    const out = new Capture();
    const log = make(stdoutOnly(), { stdout: out, maxBufferBytes: 4096, flushIntervalMs: 60_000, flushThresholdBytes: 1 << 30 });
    for (let i = 0; i < 500; i++) log.info('burst', { i });
    const { dropped, bufferedBytes } = log.stats();
    expect(dropped).toBeGreaterThan(300);
    expect(bufferedBytes).toBeLessThanOrEqual(4096);
    await log.flush();
    const warn = out.lines.filter((l) => l.includes('log lines dropped'));
    expect(warn).toHaveLength(1);
    expect(warn[0]).toMatch(new RegExp(` WARN log lines dropped: buffer full dropped=${dropped} total_dropped=${dropped}$`));
    expect(out.lines).toHaveLength(500 - dropped + 1);
    await log.flush();
    expect(out.lines.filter((l) => l.includes('log lines dropped'))).toHaveLength(1);
  });

  it('close() drains and later calls are ignored', async () => {
    const out = new Capture();
    const log = make(stdoutOnly(), { stdout: out });
    log.info('last words');
    await log.close();
    expect(out.lines).toHaveLength(1);
    log.info('after close');
    await log.flush();
    expect(out.lines).toHaveLength(1);
  });
});

describe('file writer', () => {
  it('names files as tracing-appender does (UTC)', () => {
    const d = new Date('2026-11-30T02:56:26.123Z');
    expect(rollingFileName('xks-proxy.log', 'MINUTELY', d)).toBe('xks-proxy.log.2026-11-30-02-56');
    expect(rollingFileName('xks-proxy.log', 'HOURLY', d)).toBe('xks-proxy.log.2026-11-30-02');
    expect(rollingFileName('xks-proxy.log', 'DAILY', d)).toBe('xks-proxy.log.2026-11-30');
    expect(rollingFileName('xks-proxy.log', 'NEVER', d)).toBe('xks-proxy.log');
    expect(rollingFileName('p', 'HOURLY', new Date('2027-01-05T23:00:00.000Z'))).toBe('p.2027-01-05-23');
  });

  it('creates the directory and rotates by the (injected) wall clock; lines keep their period', async () => {
    let clock = new Date('2026-11-30T02:59:59.900Z');
    const logDir = join(dir, 'nested', 'logs');
    const out = new Capture();
    const log = make(
      {
        is_stdout_writer_enabled: true,
        is_file_writer_enabled: true,
        level: 'DEBUG',
        directory: logDir,
        file_prefix: 'xks-proxy.log',
        rotation_kind: 'HOURLY',
      },
      { stdout: out, now: () => clock, flushIntervalMs: 60_000 },
    );
    expect(existsSync(join(logDir, 'xks-proxy.log.2026-11-30-02'))).toBe(true); // opened at start-up
    log.info('before the hour');
    clock = new Date('2026-11-30T03:00:00.100Z');
    log.info('after the hour');
    expect(log.currentFile()).toBe(join(logDir, 'xks-proxy.log.2026-11-30-03'));
    clock = new Date('2026-11-30T03:30:00.000Z');
    log.debug('same hour');
    // Nothing written yet: both lines are still in memory.
    expect(readFileSync(join(logDir, 'xks-proxy.log.2026-11-30-02'), 'utf8')).toBe('');
    await log.flush();
    expect(readFileSync(join(logDir, 'xks-proxy.log.2026-11-30-02'), 'utf8')).toBe('2026-11-30T02:59:59.900Z INFO before the hour\n');
    expect(readFileSync(join(logDir, 'xks-proxy.log.2026-11-30-03'), 'utf8')).toBe(
      '2026-11-30T03:00:00.100Z INFO after the hour\n2026-11-30T03:30:00.000Z DEBUG same hour\n',
    );
    expect(out.lines).toHaveLength(3);
    clock = new Date('2026-12-01T00:00:00.000Z');
    log.warn('next day');
    await log.flush();
    expect(readdirSync(logDir).sort()).toEqual([
      'xks-proxy.log.2026-11-30-02',
      'xks-proxy.log.2026-11-30-03',
      'xks-proxy.log.2026-12-01-00',
    ]);
  });

  it('appends to an existing file (restart within the same period)', async () => {
    const tracing: TracingSection = {
      is_stdout_writer_enabled: false,
      is_file_writer_enabled: true,
      level: 'INFO',
      directory: dir,
      file_prefix: 'a.log',
      rotation_kind: 'DAILY',
    };
    const a = createLogger(tracing, { now: () => T0 });
    a.info('first run');
    await a.close();
    const b = createLogger(tracing, { now: () => T0 });
    b.info('second run');
    await b.close();
    expect(readFileSync(join(dir, 'a.log.2026-11-30'), 'utf8')).toBe(
      '2026-11-30T02:56:26.123Z INFO first run\n2026-11-30T02:56:26.123Z INFO second run\n',
    );
  });

  it('MINUTELY rotation', async () => {
    let clock = new Date('2026-11-30T02:56:59.999Z');
    const log = make(
      {
        is_stdout_writer_enabled: false,
        is_file_writer_enabled: true,
        level: 'INFO',
        directory: dir,
        file_prefix: 'm',
        rotation_kind: 'MINUTELY',
      },
      { now: () => clock },
    );
    log.info('a');
    clock = new Date('2026-11-30T02:57:00.000Z');
    log.info('b');
    await log.flush();
    expect(readdirSync(dir).sort()).toEqual(['m.2026-11-30-02-56', 'm.2026-11-30-02-57']);
  });

  it('an unusable directory fails createLogger at start-up', async () => {
    const blocker = join(dir, 'file');
    await createLogger({
      is_stdout_writer_enabled: false,
      is_file_writer_enabled: true,
      level: 'INFO',
      directory: dir,
      file_prefix: 'file',
      rotation_kind: 'NEVER',
    }).close();
    expect(() =>
      createLogger({
        is_stdout_writer_enabled: false,
        is_file_writer_enabled: true,
        level: 'INFO',
        directory: join(blocker, 'sub'),
        file_prefix: 'x',
        rotation_kind: 'NEVER',
      }),
    ).toThrow(/ENOTDIR|EEXIST/);
  });
});

describe('[tracing] file_mode', () => {
  const fileOnly = (directory: string, file_mode?: number): TracingSection => ({
    is_stdout_writer_enabled: false,
    is_file_writer_enabled: true,
    level: 'INFO',
    directory,
    file_prefix: 'xks-proxy.log',
    rotation_kind: 'HOURLY',
    ...(file_mode === undefined ? {} : { file_mode }),
  });

  it('every file gets the mode, whatever the umask: the first, an existing one, the next period', async () => {
    const old = process.umask(0o077);
    try {
      let clock = new Date('2026-11-30T02:59:59.900Z');
      // An existing file of the first period, made with another mode (a restart after a change).
      await createLogger(fileOnly(dir), { now: () => clock }).close();
      expect(statSync(join(dir, 'xks-proxy.log.2026-11-30-02')).mode & 0o777).toBe(0o640);
      const log = make(fileOnly(dir, 0o644), { now: () => clock });
      log.info('before the hour');
      expect(statSync(join(dir, 'xks-proxy.log.2026-11-30-02')).mode & 0o777).toBe(0o644);
      clock = new Date('2026-11-30T03:00:00.100Z');
      log.info('after the hour');
      await log.flush();
      expect(statSync(join(dir, 'xks-proxy.log.2026-11-30-03')).mode & 0o777).toBe(0o644);
      expect(readFileSync(join(dir, 'xks-proxy.log.2026-11-30-03'), 'utf8')).toContain('after the hour');
    } finally {
      process.umask(old);
    }
  });

  it('without file_mode the files are 0640', async () => {
    const log = make(fileOnly(dir), { now: () => T0 });
    log.info('x');
    await log.flush();
    expect(statSync(join(dir, 'xks-proxy.log.2026-11-30-02')).mode & 0o777).toBe(0o640);
  });

  it.runIf(process.getuid?.() === 0)('a reader running as another user (nobody) reads a 0644 log, not a 0640 one', async () => {
    chmodSync(dir, 0o755);
    const readAsNobody = (file: string): number =>
      spawnSync('runuser', ['-u', 'nobody', '--', 'cat', file], { timeout: 10_000 }).status ?? -1;
    const shared = make({ ...fileOnly(join(dir, 'shared'), 0o644), rotation_kind: 'NEVER' });
    shared.info('for the shipper');
    await shared.flush();
    chmodSync(join(dir, 'shared'), 0o755);
    expect(readAsNobody(join(dir, 'shared', 'xks-proxy.log'))).toBe(0);
    const closed = make({ ...fileOnly(join(dir, 'closed')), rotation_kind: 'NEVER' });
    closed.info('not for others');
    await closed.flush();
    chmodSync(join(dir, 'closed'), 0o755);
    expect(readAsNobody(join(dir, 'closed', 'xks-proxy.log'))).not.toBe(0);
  });
});

describe('request lines: levels and outcomes', () => {
  it('a refused signature is a WARN line (as the Rust proxy\'s "SigV4 failure"); 5xx ERROR; the rest INFO', async () => {
    const out = new Capture();
    const log = make(stdoutOnly('WARN'), { stdout: out });
    const base = { op: 'Encrypt', prefix: '/xyz', keyId: 'abc123', micros: 10 };
    log.request({ ...base, outcome: 'AuthenticationFailedException', status: 401, detail: 'signature does not match' });
    log.request({ ...base, outcome: 'ok', status: 200 });
    log.request({ ...base, outcome: 'KeyNotFoundException', status: 404 });
    log.request({ ...base, outcome: 'InternalException', status: 500 });
    await log.flush();
    expect(out.lines).toHaveLength(2);
    expect(out.lines[0]).toMatch(
      / WARN request op=Encrypt prefix=\/xyz keyId=abc123 outcome=AuthenticationFailedException status=401 micros=10 detail="signature does not match"$/,
    );
    expect(out.lines[1]).toMatch(/ ERROR request op=Encrypt .* outcome=InternalException status=500/);
  });
});
