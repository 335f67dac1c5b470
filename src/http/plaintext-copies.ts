/**
 * Request plaintext sits in a few Buffers on its way to the HSM: the body's copies out of uWS's
 * receive buffer, the joined body, the decoded plaintext. Each is wiped (fill(0)) before its
 * request ends, on every path, the error paths included. Each is passed through plaintextCopy()
 * where it is made, so that a test can hold on to all of them and check that they are zero once
 * the answer is out. (JavaScript strings made from them, such as the one JSON.parse reads, cannot
 * be wiped; see docs/security.md.) Not exported from the command's entry point.
 */

let watcher: ((copy: Buffer) => void) | undefined;

/** Returns `copy` (a Buffer that holds, or will hold, request plaintext) after showing it to the watcher. */
export function plaintextCopy(copy: Buffer): Buffer {
  if (watcher !== undefined) watcher(copy);
  return copy;
}

/** Test hook: `w` sees every later plaintext copy of this thread; undefined stops watching. */
export function watchPlaintextCopies(w: ((copy: Buffer) => void) | undefined): void {
  watcher = w;
}
