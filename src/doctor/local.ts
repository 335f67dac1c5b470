/**
 * `xks-proxy doctor [FILE]`: the local checks, in the order a start-up meets them: the file,
 * SigV4 and the URI paths, the clock, TLS, the HSM, then every key.
 */
import { checkClock } from './clock.js';
import { checkHsm } from './hsm.js';
import { checkKeys } from './keys.js';
import type { Finding } from './report.js';
import { checkSettings } from './settings.js';
import { checkSigv4 } from './sigv4.js';
import { checkTls } from './tls.js';

export async function diagnoseLocal(file: string): Promise<Finding[]> {
  const { loaded, findings } = checkSettings(file);
  if (loaded === undefined) return findings;
  const { config } = loaded;
  findings.push(...checkSigv4(config), ...checkClock(), ...(await checkTls(config)));
  const { hsm, findings: hsmFindings } = await checkHsm(config);
  findings.push(...hsmFindings);
  if (hsm !== undefined) {
    try {
      findings.push(...(await checkKeys(config, hsm)));
    } finally {
      await hsm.close();
    }
  }
  return findings;
}
