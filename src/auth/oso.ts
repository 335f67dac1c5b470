/**
 * Secondary authorization with Oso (`[security] secondary_auth = "Oso"`), compatible with the Rust
 * proxy's policy files: the query is `allow(uri_path_prefix, action, metadata)`. Each operation
 * declares its action and the class of `metadata` (src/ops/<op>.ts, `policy`; the fields a policy
 * sees: src/ops/policy-fields.ts); this file is the mechanism: it registers every operation's class,
 * asks Oso, caches decisions and turns them into the XKS errors.
 *
 * Since a policy only sees requestMetadata fields and Polar has no clock or I/O, a decision is a pure
 * function of (policy, prefix, action, fields): decisions are cached (bounded) per loaded policy.
 */
import { Oso } from 'oso';
import { XksError } from '../errors.js';
import { OPERATIONS } from '../ops/index.js';
import type { PolicyResource } from '../ops/operation.js';
import type { RequestMetadata } from '../validate.js';

/** Secondary authorization as the HTTP layer sees it. */
export interface Authorizer {
  /** Where the policy came from (for logs). */
  readonly source: string;
  /**
   * Resolves when allowed. Rejects with XksError AccessDeniedException (403) when the policy denies,
   * InvalidStateException (400, as the Rust proxy) when the policy engine fails.
   */
  authorize(prefix: string, action: string, meta: RequestMetadata): Promise<void>;
}

/** Each operation's action and the class its policy sees. */
const RESOURCES: ReadonlyMap<string, PolicyResource> = new Map(OPERATIONS.map((o) => [o.policy.action, o.policy.resource]));

/** Decisions kept per loaded policy before the cache is emptied and starts again. */
export const OSO_DECISION_CACHE_MAX = 4096;

export interface OsoOptions {
  /** Cache decisions (default true). */
  cache?: boolean;
}

export class OsoAuthorizer implements Authorizer {
  private readonly cache = new Map<string, boolean>();
  private readonly useCache: boolean;

  private constructor(
    private readonly oso: Oso,
    readonly source: string,
    o: OsoOptions,
  ) {
    this.useCache = o.cache ?? true;
  }

  /** Loads a policy file (must end in .polar, as for the Rust proxy). Throws an Error naming the file on any problem. */
  static async fromFile(file: string, o: OsoOptions = {}): Promise<OsoAuthorizer> {
    const oso = newOso();
    try {
      await oso.loadFiles([file]);
    } catch (e) {
      throw new Error(`${file}: cannot load the Oso policy: ${oneLine(e instanceof Error ? e.message : String(e))}`);
    }
    return new OsoAuthorizer(oso, file, o);
  }

  /** Loads policy text (tests, bench). */
  static async fromString(policy: string, name = 'policy.polar', o: OsoOptions = {}): Promise<OsoAuthorizer> {
    const oso = newOso();
    try {
      await oso.loadStr(policy, name);
    } catch (e) {
      throw new Error(`${name}: cannot load the Oso policy: ${oneLine(e instanceof Error ? e.message : String(e))}`);
    }
    return new OsoAuthorizer(oso, name, o);
  }

  /** The raw decision (true = allowed); rejects on a policy engine error. */
  async isAllowed(prefix: string, action: string, meta: RequestMetadata): Promise<boolean> {
    const key = this.useCache ? cacheKey(prefix, action, meta) : '';
    if (this.useCache) {
      const hit = this.cache.get(key);
      if (hit !== undefined) return hit;
    }
    const Resource = RESOURCES.get(action);
    if (Resource === undefined) throw new Error(`no operation has the action "${action}"`);
    const allowed = await this.oso.isAllowed(prefix, action, new Resource(meta));
    if (this.useCache) {
      if (this.cache.size >= OSO_DECISION_CACHE_MAX) this.cache.clear();
      this.cache.set(key, allowed);
    }
    return allowed;
  }

  async authorize(prefix: string, action: string, meta: RequestMetadata): Promise<void> {
    let allowed: boolean;
    try {
      allowed = await this.isAllowed(prefix, action, meta);
    } catch (e) {
      throw new XksError(
        'InvalidStateException',
        'Secondary authorization failed',
        oneLine(`policy engine error (${this.source}, action "${action}"): ${engineReason(e)}`).slice(0, 400),
      );
    }
    if (!allowed) {
      throw new XksError(
        'AccessDeniedException',
        'Denied by secondary authorization',
        oneLine(
          `no allow rule of ${this.source} matched action "${action}" with kmsOperation=${JSON.stringify(meta.kmsOperation)}` +
            ` awsPrincipalArn=${JSON.stringify(meta.awsPrincipalArn ?? null)} kmsViaService=${JSON.stringify(meta.kmsViaService ?? null)}`,
        ).slice(0, 600),
      );
    }
  }
}

function newOso(): Oso {
  const oso = new Oso();
  // Encrypt and Decrypt share a class: each class once.
  const registered = new Set<PolicyResource>();
  for (const { policy } of OPERATIONS) {
    if (registered.has(policy.resource)) continue;
    registered.add(policy.resource);
    oso.registerClass(policy.resource, { name: policy.className });
  }
  return oso;
}

function cacheKey(prefix: string, action: string, m: RequestMetadata): string {
  // Every field a policy can see, JSON-encoded so that no two different requests share a key.
  return JSON.stringify([
    prefix,
    action,
    m.kmsOperation,
    m.awsPrincipalArn ?? null,
    m.kmsKeyArn ?? null,
    m.awsSourceVpc ?? null,
    m.awsSourceVpce ?? null,
    m.kmsViaService ?? null,
  ]);
}

/** The useful line of a Polar error (its message starts with an evaluation trace). */
function engineReason(e: unknown): string {
  const m = e instanceof Error ? e.message : String(e);
  const lines = m.split('\n');
  const i = lines.findIndex((l) => /^[A-Za-z ]*error:/i.test(l));
  return (i >= 0 ? lines[i] : lines[0]) ?? 'unknown error';
}

function oneLine(s: string): string {
  return s.replace(/[\x00-\x1f\x7f\u2028\u2029]/g, ' ');
}
