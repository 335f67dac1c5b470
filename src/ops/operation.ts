/**
 * What an XKS operation declares (one file per operation, src/ops/<op>.ts; the registry is
 * src/ops/index.ts). src/http/pipeline.ts runs every operation through the same steps, in the
 * Rust proxy's order: route -> SigV4 -> quota -> shape -> key in set -> policy -> limits and
 * decoding -> run -> respond -> log and metrics.
 */
import type { Json, Limits, RequestMetadata } from '../validate.js';
import type { OpContext } from './context.js';

/** A class a Polar policy sees as `metadata`: built from the request's requestMetadata. */
export type PolicyResource = new (m: RequestMetadata) => object;

export interface OperationPolicy {
  /** The Oso action (`allow(uri_path_prefix, action, metadata)`). */
  readonly action: string;
  /** The class of `metadata`, registered in Oso under `className` (as the Rust proxy names it). */
  readonly resource: PolicyResource;
  readonly className: string;
  /** Whether the pipeline asks the policy; false: the class is only registered, so that policy files load. */
  readonly enforced: boolean;
}

/**
 * One XKS operation. `S` is its checked request shape, `I` its decoded input. The methods (not
 * function properties) let the registry hold operations of different S and I as one list.
 */
export interface Operation<S = unknown, I = unknown> {
  /** Its name in the log (`op`) and in the metrics (`operation` label). */
  readonly name: string;
  /** Its path after `<prefix>/kms/xks/v1`, e.g. `/keys/:keyId/encrypt`. */
  readonly route: string;
  /** Its route names a key (`:keyId`, the route's only parameter), which must be in the key store's set. */
  readonly namesKey: boolean;
  /** Secondary authorization ([security] secondary_auth = "Oso"). */
  readonly policy: OperationPolicy;
  /** Step "shape": the JSON's fields and types (400 ValidationException). */
  shape(json: Json): S;
  /** The shape's requestMetadata (for the policy and the log line). */
  metadata(shape: S): RequestMetadata;
  /** Step "limits": sizes ([limits], 501) and Base64 decoding (400). Wipes what it decoded when it throws. */
  decode(shape: S, limits: Limits): I;
  /** Step "run": the HSM's work and the JSON answer. Wipes any plaintext in `input`. */
  run(ctx: OpContext, keyId: string, input: I): Promise<string>;
}
