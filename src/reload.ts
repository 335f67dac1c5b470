/**
 * Live configuration: what the HTTP layer routes and authorizes with (keystores, credentials, key id
 * sets, quotas, the Oso policy), built from a Config, and SIGHUP reload of it.
 *
 * A reload re-reads settings.toml (in the main thread; worker threads are handed what it read, see
 * apply), builds a complete new snapshot (including loading the Oso policy) and only then swaps it in
 * with one assignment: a bad file or policy changes nothing and is reported in one log line. Listeners
 * are never closed; requests in flight finish with the snapshot they started with. Settings the
 * running process cannot change (ports, TLS, HSM, pool, limits, logging, ...) are named in a warning
 * when they differ and take effect at the next restart.
 */
import { loadConfig, redactedSummary, type Config, type LoadedConfig } from './config.js';
import { OsoAuthorizer, type Authorizer } from './auth/oso.js';
import { TokenBucket } from './auth/quota.js';
import type { KeyStoreRoute, RunningServer } from './http/server.js';
import type { Logger } from './log.js';

/**
 * The routes of a config's keystores. A keystore whose quota did not change keeps its bucket (and so
 * its state) from `previous`. With `share` event loops (`[server] workers`), each loop's bucket gets
 * 1/share of the rate and of the burst (at least 1): the sum is the configured quota (docs/operating.md, "All cores").
 */
export function keyStoreRoutes(config: Config, previous?: ReadonlyMap<string, KeyStoreRoute>, share = 1): KeyStoreRoute[] {
  return config.external_key_stores.map((s) => {
    let quota: TokenBucket | undefined;
    if (s.requests_per_second !== undefined) {
      const rate = s.requests_per_second / share;
      const burst = Math.max(1, (s.burst ?? s.requests_per_second) / share);
      const old = previous?.get(s.uri_path_prefix)?.quota;
      quota = old instanceof TokenBucket && old.sameAs(rate, burst) ? old : new TokenBucket(rate, burst);
    }
    return {
      prefix: s.uri_path_prefix,
      credentials: s.sigv4_credentials.map((c) => ({ accessKeyId: c.access_key_id, secretAccessKey: c.secret_access_key })),
      keyIds: s.xks_key_id_set,
      quota,
    };
  });
}

/** The secondary authorization the config asks for (the policy file is read now). */
export async function loadAuthorizer(config: Config): Promise<Authorizer | undefined> {
  if (config.security.secondary_auth !== 'Oso') return undefined;
  const file = config.security.oso?.polar_file_path;
  if (file === undefined) throw new Error('security.oso.polar_file_path: missing');
  return OsoAuthorizer.fromFile(file);
}

/** Dotted keys whose change needs a restart (everything but keystores and secondary authorization). */
export function restartNeeded(old: Config, next: Config): string[] {
  const strip = (c: Config): Record<string, unknown> => {
    const s = redactedSummary(c) as Record<string, unknown>;
    delete s.external_key_stores;
    const sec = { ...(s.security as Record<string, unknown>) };
    delete sec.secondary_auth;
    delete sec.oso;
    s.security = sec;
    return s;
  };
  const a = flatten(strip(old));
  const b = flatten(strip(next));
  const out = new Set<string>();
  for (const k of new Set([...a.keys(), ...b.keys()])) if (a.get(k) !== b.get(k)) out.add(k);
  if (old.pkcs11.user_pin !== next.pkcs11.user_pin) out.add('pkcs11.user_pin');
  return [...out].sort();
}

function flatten(v: unknown, prefix = '', out = new Map<string, string>()): Map<string, string> {
  if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
    for (const [k, x] of Object.entries(v)) flatten(x, prefix === '' ? k : `${prefix}.${k}`, out);
  } else if (v !== undefined) {
    out.set(prefix, JSON.stringify(v));
  }
  return out;
}

export interface ReloadOutcome {
  ok: boolean;
  /** One line, when !ok. */
  error?: string;
  /** Changed settings that were not applied (need a restart). */
  restartNeeded: string[];
}

export class Reloader {
  private config: Config;
  private lastApplied: LoadedConfig;
  private routes: ReadonlyMap<string, KeyStoreRoute>;
  private chain: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly file: string,
    loaded: LoadedConfig,
    initial: readonly KeyStoreRoute[],
    private readonly server: Pick<RunningServer, 'apply'>,
    private readonly log: Logger,
    private readonly env: NodeJS.ProcessEnv = process.env,
    /** Event loops sharing each quota (see keyStoreRoutes). */
    private readonly share = 1,
  ) {
    this.config = loaded.config;
    this.lastApplied = loaded;
    this.routes = new Map(initial.map((k) => [k.prefix, k]));
  }

  /** Re-reads the settings file and applies it; reloads run one at a time, in call order. */
  reload(): Promise<ReloadOutcome> {
    return this.queue(() => loadConfig(this.file, this.env));
  }

  /**
   * Applies settings another thread read (the main thread's, handed to a worker thread): every event
   * loop runs the same parsed file, never a later edit of it. Queued like reload().
   */
  apply(next: LoadedConfig): Promise<ReloadOutcome> {
    return this.queue(() => next);
  }

  /** The settings file as last read and applied (what apply() of the other event loops gets). */
  get applied(): LoadedConfig {
    return this.lastApplied;
  }

  private queue(read: () => LoadedConfig): Promise<ReloadOutcome> {
    const run = this.chain.then(() => this.doReload(read));
    this.chain = run.catch(() => undefined);
    return run;
  }

  private async doReload(read: () => LoadedConfig): Promise<ReloadOutcome> {
    let next: LoadedConfig;
    let authorizer: Authorizer | undefined;
    try {
      next = read();
      authorizer = await loadAuthorizer(next.config);
    } catch (e) {
      const error = (e instanceof Error ? e.message : String(e)).replace(/[\r\n]+/g, ' ');
      this.log.error('configuration reload refused; the running configuration stays', { error });
      return { ok: false, error, restartNeeded: [] };
    }
    for (const w of next.warnings) this.log.warn(w);
    const pending = restartNeeded(this.config, next.config);
    const routes = keyStoreRoutes(next.config, this.routes, this.share);
    this.server.apply(routes, authorizer);
    this.routes = new Map(routes.map((k) => [k.prefix, k]));
    this.lastApplied = next;
    // Keep the settings that were not applied as they run, so the warning repeats until a restart.
    const security = { ...this.config.security };
    delete security.secondary_auth;
    delete security.oso;
    if (next.config.security.secondary_auth !== undefined) security.secondary_auth = next.config.security.secondary_auth;
    if (next.config.security.oso !== undefined) security.oso = next.config.security.oso;
    this.config = { ...this.config, external_key_stores: next.config.external_key_stores, security };
    if (pending.length > 0) {
      this.log.warn('configuration reload: these changed settings need a restart and were not applied', { keys: pending.join(',') });
    }
    this.log.info('configuration reloaded', {
      file: this.file,
      key_stores: routes.length,
      credentials: routes.reduce((n, r) => n + r.credentials.length, 0),
      secondary_auth: authorizer === undefined ? 'none' : 'Oso',
    });
    return { ok: true, restartNeeded: pending };
  }
}
