/**
 * How requestMetadata fields reach a Polar policy, as the Rust proxy's structs reach it (each
 * operation's policy class uses these; src/auth/oso.ts is the mechanism):
 * - fields the Rust proxy declares as plain strings are Polar strings, nil if a client left them out
 *   (policyString);
 * - fields the Rust proxy declares optional are nil when absent and otherwise a one-element list,
 *   which behaves like the Rust proxy's Option: `metadata.kmsViaService = nil` and
 *   `"ebs" in metadata.kmsViaService` work as there (policyOption);
 * - kmsRequestId is not visible to policies (as in the Rust proxy).
 */

/** A Rust `Option<String>` as Polar sees it. */
export type PolicyOption = readonly [string] | null;

export const policyOption = (v: string | undefined): PolicyOption => (v === undefined ? null : Object.freeze([v] as const));

export const policyString = (v: string | undefined): string | null => (v === undefined ? null : v);
