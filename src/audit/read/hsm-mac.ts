/**
 * The checkpoint HMACs, checked in the HSM the settings file names ([pkcs11] module, PIN; the key
 * labelled [audit] hmac_key_id), the way the proxy opens it. The key never leaves the HSM: the HSM
 * says whether a MAC verifies. A checkpoint naming another key than the settings' is not trusted.
 */
import { ConfigError, loadConfig, resolveSettingsPath, type Config } from '../../config.js';
import { Hsm } from '../../hsm/hsm.js';
import { XksError } from '../../errors.js';
import { engineOptions } from '../../workers/serving.js';
import type { CheckpointMac } from './verify.js';

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

export async function openCheckpointMac(settings: { path: string; config: Config }): Promise<CheckpointMac & { close(): Promise<void> }> {
  const { config, path } = settings;
  const label = config.audit?.hmac_key_id;
  if (label === undefined) throw new AuditSetupError(`${path}: no [audit] section: it names the HMAC key (hmac_key_id)`);
  let hsm: Hsm;
  try {
    hsm = await Hsm.open(engineOptions(config, { poolMaxSize: 2, threads: 1 }));
  } catch (e) {
    throw new AuditSetupError(e instanceof Error ? e.message : String(e));
  }
  return {
    async verify(keyLabel: string, message: Buffer, mac: Buffer): Promise<boolean> {
      if (keyLabel !== label) return false;
      try {
        return await hsm.hmacVerify(label, message, mac);
      } catch (e) {
        const why = e instanceof XksError ? `${e.message}${e.detail ? ` (${e.detail})` : ''}` : String(e);
        throw new AuditSetupError(`the HSM cannot check HMACs with the key labelled ${label}: ${why}`);
      }
    },
    close: () => hsm.close(),
  };
}
