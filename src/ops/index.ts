/**
 * The XKS operations this proxy serves, in the order their routes are registered and their
 * metrics listed. A new operation is one file (src/ops/<op>.ts exporting an Operation) and one
 * line here.
 */
import { decryptOperation } from './decrypt.js';
import { encryptOperation } from './encrypt.js';
import { healthOperation } from './health.js';
import { metadataOperation } from './metadata.js';
import type { Operation } from './operation.js';

export const OPERATIONS: readonly Operation[] = [healthOperation, metadataOperation, encryptOperation, decryptOperation];
