/** Doctor, group "settings": the file loads (check-config's messages) and its warnings. */
import { statSync } from 'node:fs';
import { ACCESS_KEY_ID_NOTE, ConfigError, loadConfig, SECRET_NOTE, type LoadedConfig } from '../config.js';
import { ok, problem, type Finding } from './report.js';

const G = 'settings';

/** Warnings the "sigv4" group reports itself, with the KMS error they cause. */
function reportedElsewhere(w: string): boolean {
  return w.endsWith(ACCESS_KEY_ID_NOTE) || w.endsWith(SECRET_NOTE) || /\.uri_path_prefix: .*KMS/.test(w);
}

export function checkSettings(file: string): { loaded: LoadedConfig | undefined; findings: Finding[] } {
  let loaded: LoadedConfig;
  try {
    loaded = loadConfig(file);
  } catch (e) {
    const message = e instanceof ConfigError ? e.message : e instanceof Error ? e.message : String(e);
    return {
      loaded: undefined,
      findings: [
        problem(
          'fail',
          G,
          'parses',
          message,
          'none yet: the proxy does not start, so KMS would report XKS_PROXY_NOT_REACHABLE',
          'correct the key the message names (xks-proxy check-config FILE checks only the file)',
        ),
      ],
    };
  }
  const findings = [ok(G, 'parses', `${file} loads`)];
  // It holds the user PIN and the SigV4 secrets.
  const mode = statSync(file).mode & 0o777;
  if ((mode & 0o007) !== 0) {
    findings.push(
      problem(
        'warn',
        G,
        'permissions',
        `${file} is mode 0${mode.toString(8)}: every user of the host can read the PIN and the SigV4 secrets`,
        'none directly; anyone with the secret can sign as KMS',
        `chmod 0640 ${file} (owner root or the proxy's user, group the proxy's)`,
      ),
    );
  } else findings.push(ok(G, 'permissions', `mode 0${mode.toString(8)}: not readable by other users`));
  for (const w of loaded.warnings.filter((x) => !reportedElsewhere(x))) {
    findings.push(problem('warn', G, 'warning', w, 'none directly', 'see the warning; xks-proxy check-config prints the same'));
  }
  return { loaded, findings };
}
