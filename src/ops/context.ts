import type { AuditSink } from '../audit/sink.js';
import type { Hsm } from '../hsm/hsm.js';

/** What the operations need from the running proxy. */
export interface OpContext {
  readonly hsm: Hsm;
  /** Decoded [server].ciphertext_metadata_b64, returned with every ciphertext. */
  readonly ciphertextMetadata: Buffer | undefined;
  /** The same, Base64, as configured. */
  readonly ciphertextMetadataB64: string | undefined;
  /** Product name and version for GetHealthStatus. */
  readonly version: string;
  /** The audit trail ([audit]); undefined when there is none. */
  readonly audit?: AuditSink | undefined;
}
