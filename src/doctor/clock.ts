/**
 * Doctor, group "clock": KMS signs with its own clock and the proxy rejects a signature more
 * than 5 minutes off, so the host clock must be synchronized. Checked without the network:
 * systemd-timesyncd's or chrony's synchronized flag (timedatectl), and a lower bound (the clock
 * cannot be earlier than the trusted-CA list this build ships).
 */
import { execFileSync } from 'node:child_process';
import { ok, problem, type Finding } from './report.js';
import { TRUSTED_CAS_SOURCE } from './trusted-cas-list.js';

const G = 'clock';
const SKEW = 'INVALID_CREDENTIALS (every signature more than 5 minutes off: 401 AuthenticationFailedException)';

/** timedatectl's NTPSynchronized: true, false, or undefined when it cannot tell. */
function synchronized(): boolean | undefined {
  try {
    const v = execFileSync('timedatectl', ['show', '--property=NTPSynchronized', '--value'], {
      timeout: 3000,
      stdio: ['ignore', 'pipe', 'ignore'],
    })
      .toString()
      .trim();
    return v === 'yes' ? true : v === 'no' ? false : undefined;
  } catch {
    return undefined;
  }
}

export function checkClock(now: number = Date.now()): Finding[] {
  const floor = Date.parse(`${TRUSTED_CAS_SOURCE.date}T00:00:00Z`);
  if (now < floor) {
    return [
      problem(
        'fail',
        G,
        'time',
        `the clock says ${new Date(now).toISOString()}, before this build's data (${TRUSTED_CAS_SOURCE.date})`,
        SKEW,
        'set the clock and run an NTP client (chrony, systemd-timesyncd)',
      ),
    ];
  }
  const sync = synchronized();
  const at = `now ${new Date(now).toISOString()}`;
  if (sync === true) return [ok(G, 'time', `${at}; timedatectl: synchronized by NTP`)];
  if (sync === false)
    return [
      problem(
        'warn',
        G,
        'time',
        `${at}; timedatectl: not synchronized by NTP`,
        `${SKEW} once it drifts`,
        'enable an NTP client (chrony, systemd-timesyncd); on EC2 use the Amazon Time Sync Service',
      ),
    ];
  // Nothing says it is off (e.g. a container without systemd): not a warning.
  return [
    ok(
      G,
      'time',
      `${at}; no timedatectl answer, so whether NTP synchronizes it is unknown (doctor --endpoint compares with the proxy's Date)`,
    ),
  ];
}
