/**
 * The checkpoint HMACs, checked in the HSM the settings file names ([pkcs11] module and PIN), the
 * way the proxy opens it. Each checkpoint is checked with the key it names (`hmacKeyId`, a label):
 * a trail written before the operator switched [audit] hmac_key_id holds checkpoints of both keys.
 * The key never leaves the HSM: the HSM says whether a MAC verifies. A label the HSM does not hold
 * is `absent` (its own finding); a key that is not a CKK_GENERIC_SECRET key cannot have made the
 * checkpoint (`invalid`); a label held twice is the HSM's set-up to fix (exit 2).
 */
import { ConfigError, loadConfig, resolveSettingsPath, type Config } from '../../config.js';
import { Hsm } from '../../hsm/hsm.js';
import { XksError } from '../../errors.js';
import { engineOptions } from '../../workers/serving.js';
import type { CheckpointMac, MacCheck } from './verify.js';

/** The settings file or the HSM cannot be used (exit 2, not a break). */
export class AuditSetupError extends Error {}

export function loadAuditSettings(file: string | undefined): { path: string; config: Config } {
  const path = file ?? resolveSettingsPath();
  try {
    return { path, config: loadConfig(path).config };
  } catch (e) {
    if (e instanceof ConfigError) throw new AuditSetupError(e.message);
    throw e;
  }
}

/** The native code of a failed HSM call (its detail is "<function>: <code>"). */
const codeOf = (e: XksError): string | undefined => e.detail?.split(': ').at(-1);

export async function openCheckpointMac(settings: { path: string; config: Config }): Promise<CheckpointMac & { close(): Promise<void> }> {
  let hsm: Hsm;
  try {
    hsm = await Hsm.open(engineOptions(settings.config, { poolMaxSize: 2, threads: 1 }));
  } catch (e) {
    throw new AuditSetupError(e instanceof Error ? e.message : String(e));
  }
  return {
    async verify(label: string, message: Buffer, mac: Buffer): Promise<MacCheck> {
      try {
        return (await hsm.hmacVerify(label, message, mac)) ? 'valid' : 'invalid';
      } catch (e) {
        const code = e instanceof XksError ? codeOf(e) : undefined;
        if (code === 'XKS_KEY_NOT_FOUND') return 'absent';
        if (code === 'XKS_HMAC_KEY_SPEC') return 'invalid';
        if (code === 'XKS_KEY_AMBIGUOUS')
          throw new AuditSetupError(`the HSM holds more than one key labelled ${label}: keep one (checkpoints name their key by label)`);
        const why = e instanceof XksError ? `${e.message}${e.detail ? ` (${e.detail})` : ''}` : String(e);
        throw new AuditSetupError(`the HSM cannot check HMACs with the key labelled ${label}: ${why}`);
      }
    },
    close: () => hsm.close(),
  };
}
