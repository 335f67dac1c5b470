/**
 * `xks-proxy audit verify|list|reconcile`: the auditor's commands over the trail files.
 *   verify    the chain across the files and every checkpoint's HMAC in the HSM; the first break.
 *   list      the matching uses (chain checked, HMACs not: no HSM needed).
 *   reconcile the uses against CloudTrail's KMS events.
 * Exit 0 verified (or nothing wrong found), 1 a break (or, for reconcile, a discrepancy), 2 usage or
 * I/O error (a file unreadable, the HSM unreachable).
 */
import { readCloudTrail, type KmsEvent } from './cloudtrail.js';
import { AuditSetupError, loadAuditSettings, openCheckpointMac } from './hsm-mac.js';
import { reconcile, type Reconciliation } from './reconcile.js';
import { readTrail, TrailReadError } from './trail-files.js';
import { collectUses, formatUse, type ListedUse, parseBound, type UseFilter } from './uses.js';
import { type CheckpointMac, type Verdict, verifyTrail } from './verify.js';
import type { Config } from '../../config.js';

export const AUDIT_USAGE = `Usage: xks-proxy audit verify [FILE|DIR...] [--range] [--config FILE] [filters] [--json]
       xks-proxy audit list [FILE|DIR...] [--range] [--config FILE] [filters] [--json]
       xks-proxy audit reconcile --cloudtrail FILE [--cloudtrail FILE...] [FILE|DIR...] [--range]
                                 [--config FILE] [--custom-key-store-id ID] [--json]

The trail: the files and directories named (a directory: its *.jsonl files), else the [audit]
directory of the settings file (--config FILE, else $XKS_PROXY_SETTINGS_TOML, else the one
configuration/bootstrap.toml names).

verify     checks the hash chain across the files and every checkpoint's HMAC in the HSM (the
           settings file's [pkcs11] module and PIN), each with the key it names; prints the first
           break with file, line and kind (edited, inserted, deleted, reordered, truncated,
           missing-file, forged-checkpoint, key-not-in-hsm). With filters it then lists the
           matching uses.
list       lists the matching uses; checks the chain (not the HMACs: no HSM needed).
reconcile  matches the uses to AWS KMS events in CloudTrail files (aws cloudtrail lookup-events
           output, or S3 trail files, .json or .json.gz) by the KMS request id; lists uses with no
           KMS event (not made through AWS KMS) and KMS events on external keys the proxy never saw.

Filters (verify, list):
  --since T         uses at or after T (RFC 3339, YYYY-MM-DD or YYYY-MM, UTC)
  --until T         uses before T
  --key K           the XKS key id or the KMS key ARN
  --principal ARN   requestMetadata.awsPrincipalArn
  --operation OP    Encrypt, Decrypt, GetKeyMetadata or GetHealthStatus
Options:
  --range           the files are a range of the trail (e.g. one day's files): they may begin
                    after its first file; checked from the first one given, and the output says
                    so (nothing before that file is proven). Without it the trail must begin
                    with its first file: a missing oldest file is a break.
  --json            JSON on stdout (verify, reconcile: one object; list: one use a line)
  --custom-key-store-id ID   reconcile: expect only this key store's events here

Exit: 0 verified / nothing found, 1 a break or a discrepancy, 2 usage or I/O error.
`;

interface Args {
  sub: 'verify' | 'list' | 'reconcile';
  paths: string[];
  config: string | undefined;
  json: boolean;
  range: boolean;
  filter: UseFilter;
  cloudtrail: string[];
  customKeyStoreId: string | undefined;
}

class UsageError extends Error {}

const VALUED = new Set(['--config', '--since', '--until', '--key', '--principal', '--operation', '--cloudtrail', '--custom-key-store-id']);

function parseArgs(argv: readonly string[]): Args {
  const [sub, ...rest] = argv;
  if (sub !== 'verify' && sub !== 'list' && sub !== 'reconcile')
    throw new UsageError(sub === undefined ? 'a subcommand is required' : `unknown subcommand "${sub}"`);
  const a: Args = { sub, paths: [], config: undefined, json: false, range: false, filter: {}, cloudtrail: [], customKeyStoreId: undefined };
  for (let i = 0; i < rest.length; i++) {
    const o = rest[i]!;
    if (o === '--json') a.json = true;
    else if (o === '--range') a.range = true;
    else if (VALUED.has(o)) {
      const v = rest[++i];
      if (v === undefined) throw new UsageError(`${o} needs a value`);
      if (o === '--config') a.config = v;
      else if (o === '--cloudtrail') a.cloudtrail.push(v);
      else if (o === '--custom-key-store-id') a.customKeyStoreId = v;
      else if (o === '--since' || o === '--until') {
        const t = parseBound(v);
        if (t === undefined) throw new UsageError(`${o}: "${v}" is not a time (RFC 3339, YYYY-MM-DD or YYYY-MM)`);
        a.filter[o === '--since' ? 'since' : 'until'] = t;
      } else if (o === '--key') a.filter.key = v;
      else if (o === '--principal') a.filter.principal = v;
      else a.filter.operation = v;
    } else if (o.startsWith('-')) throw new UsageError(`unknown option ${o}`);
    else a.paths.push(o);
  }
  const filtered = Object.keys(a.filter).length > 0;
  if (sub === 'reconcile') {
    if (a.cloudtrail.length === 0) throw new UsageError('reconcile needs --cloudtrail FILE');
    if (filtered) throw new UsageError('reconcile takes no filters');
  } else {
    if (a.cloudtrail.length > 0) throw new UsageError('--cloudtrail is for reconcile');
    if (a.customKeyStoreId !== undefined) throw new UsageError('--custom-key-store-id is for reconcile');
  }
  return a;
}

const out = (s: string): boolean => process.stdout.write(s);
const err = (s: string): boolean => process.stderr.write(s);

export async function auditCommand(argv: readonly string[]): Promise<number> {
  let a: Args;
  try {
    a = parseArgs(argv);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    err(`xks-proxy audit: ${e.message}\n\n${AUDIT_USAGE}`);
    return 2;
  }
  let mac: (CheckpointMac & { close(): Promise<void> }) | undefined;
  try {
    const settings = a.sub === 'verify' || a.paths.length === 0 ? loadAuditSettings(a.config) : undefined;
    const paths = a.paths.length > 0 ? a.paths : [trailDirectory(settings!)];
    // The settings' directory: only the files of its prefix.
    const files = readTrail(paths, a.paths.length > 0 ? undefined : settings!.config.audit!.file_prefix);
    if (files.length === 0) throw new TrailReadError(`no trail files (*.jsonl) in ${paths.join(', ')}`);
    if (settings !== undefined && a.sub === 'verify') mac = await openCheckpointMac(settings);
    const { sink, uses } = collectUses(a.sub === 'reconcile' ? {} : a.filter);
    const verdict = await verifyTrail(files, mac, sink, a.range);
    if (a.sub === 'verify') return reportVerify(verdict, Object.keys(a.filter).length > 0 ? uses : undefined, a.json);
    if (a.sub === 'list') return reportList(verdict, uses, a.json);
    const events: KmsEvent[] = a.cloudtrail.flatMap(readCloudTrail);
    return reportReconcile(verdict, reconcile(uses, events, a.customKeyStoreId), events.length, a.json);
  } catch (e) {
    if (e instanceof TrailReadError || e instanceof AuditSetupError) {
      err(`xks-proxy audit: ${e.message}\n`);
      return 2;
    }
    throw e;
  } finally {
    await mac?.close();
  }
}

function trailDirectory(settings: { path: string; config: Config }): string {
  const dir = settings.config.audit?.directory;
  if (dir === undefined) throw new AuditSetupError(`no trail files named, and ${settings.path} has no [audit] directory`);
  return dir;
}

function where(b: { file: string; line: number }): string {
  return `${b.file} line ${b.line}`;
}

function verdictSummary(v: Verdict, hmacs: boolean): string {
  const parts = `${v.files.length} file${v.files.length === 1 ? '' : 's'}, ${v.lines} lines (${v.uses} uses, ${v.checkpoints} checkpoints`;
  return hmacs ? `${parts}, ${v.hmacsVerified} HMACs verified in the HSM)` : `${parts}; HMACs not checked: use audit verify)`;
}

/** What a range leaves unproven, said plainly (the human output and --json). */
function rangeNote(v: Verdict): string | undefined {
  const r = v.range;
  if (r === undefined) return undefined;
  return `the range starts at ${r.file}, whose predecessor ${r.previousFile} was not given: nothing before ${r.file} is proven`;
}

function printVerdict(v: Verdict, hmacs: boolean): void {
  const note = rangeNote(v);
  if (note !== undefined) err(`note: ${note}\n`);
  if (v.break !== undefined) err(`BROKEN: ${v.break.kind} at ${where(v.break)}: ${v.break.message}\n`);
  for (const w of v.warnings) err(`warning: ${where(w)}: ${w.message}\n`);
  if (v.break === undefined) err(`${hmacs ? 'verified' : 'chain intact'}: ${verdictSummary(v, hmacs)}\n`);
  else err(`checked before the break: ${verdictSummary(v, hmacs)}\n`);
}

function verdictJson(v: Verdict): Record<string, unknown> {
  return {
    ok: v.break === undefined,
    break: v.break ?? null,
    warnings: v.warnings,
    files: v.files,
    lines: v.lines,
    uses: v.uses,
    checkpoints: v.checkpoints,
    hmacsVerified: v.hmacsVerified,
    range: v.range === undefined ? null : { ...v.range, message: rangeNote(v) },
  };
}

const useJson = (u: ListedUse): Record<string, unknown> => ({ file: u.file, line: u.line, ...u.record });

function reportVerify(v: Verdict, uses: ListedUse[] | undefined, json: boolean): number {
  if (json) {
    const o = verdictJson(v);
    if (uses !== undefined) o['matches'] = uses.map(useJson);
    out(`${JSON.stringify(o)}\n`);
  } else {
    printVerdict(v, true);
    if (uses !== undefined) for (const u of uses) out(`${formatUse(u)}\n`);
  }
  return v.break === undefined ? 0 : 1;
}

function reportList(v: Verdict, uses: ListedUse[], json: boolean): number {
  for (const u of uses) out(json ? `${JSON.stringify(useJson(u))}\n` : `${formatUse(u)}\n`);
  printVerdict(v, false);
  return v.break === undefined ? 0 : 1;
}

function eventLine(e: KmsEvent): string {
  return [
    e.eventTime,
    e.eventName,
    `requestID=${e.requestID}`,
    `xksKeyId=${e.xksKeyId ?? '-'}`,
    `principal=${e.principal ?? '-'}`,
    ...(e.errorCode === undefined ? [] : [`errorCode=${e.errorCode}`]),
  ].join(' ');
}

function reportReconcile(v: Verdict, r: Reconciliation, events: number, json: boolean): number {
  const discrepancies = r.unmatchedUses.length + r.unseenEvents.length + r.mismatches.length;
  if (json) {
    out(
      `${JSON.stringify({
        ok: discrepancies === 0 && v.break === undefined,
        chain: verdictJson(v),
        kmsEvents: events,
        matched: r.matched,
        refused: r.refused,
        outsideSpan: r.outsideSpan,
        unmatchedUses: r.unmatchedUses.map(useJson),
        unseenEvents: r.unseenEvents,
        unseenFailedEvents: r.unseenFailedEvents,
        mismatches: r.mismatches.map((m) => ({ use: useJson(m.use), event: m.event, problem: m.problem })),
      })}\n`,
    );
  } else {
    out(`proxy uses with no AWS KMS event (not made through KMS: who holds their credential?): ${r.unmatchedUses.length}\n`);
    for (const u of r.unmatchedUses) out(`  ${formatUse(u)} accessKeyId=${u.record.accessKeyId ?? '-'} client=${u.record.client}\n`);
    out(`AWS KMS events on external keys the proxy never saw: ${r.unseenEvents.length}\n`);
    for (const e of r.unseenEvents) out(`  ${eventLine(e)}\n`);
    if (r.unseenFailedEvents.length > 0) {
      out(`failed AWS KMS events the proxy never saw (KMS may have refused them before calling it): ${r.unseenFailedEvents.length}\n`);
      for (const e of r.unseenFailedEvents) out(`  ${eventLine(e)}\n`);
    }
    if (r.mismatches.length > 0) {
      out(`uses whose CloudTrail event disagrees: ${r.mismatches.length}\n`);
      for (const m of r.mismatches) out(`  ${formatUse(m.use)}: ${m.problem}\n`);
    }
    out(
      `matched ${r.matched} uses to ${events} KMS events; ${r.refused} requests refused at authentication; ` +
        `${r.outsideSpan} KMS events outside the trail's time span\n`,
    );
    printVerdict(v, false);
  }
  return discrepancies === 0 && v.break === undefined ? 0 : 1;
}
