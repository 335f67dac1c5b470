/**
 * XKS GetHealthStatus: the token of the first slot, reported as the Rust proxy does.
 *
 * With a deep health check ([health_check], src/health/checker.ts) the answer comes from
 * its cached verdict at once (ACTIVE, DEGRADED or UNAVAILABLE) and the token info of its
 * last successful check. Without one, the token info is read per request and the status
 * is ACTIVE, or UNAVAILABLE (instead of an error) when the HSM cannot answer.
 */
import { XksError } from '../errors.js';
import type { HealthState, TokenInfo } from '../hsm/hsm.js';
import { requestMetadata, type Json, type RequestMetadata } from '../validate.js';
import type { OpContext } from './context.js';
import type { Operation } from './operation.js';

export const PROXY_VENDOR = 'xks-proxy open source project';

function body(model: string, t: TokenInfo | undefined, healthStatus: HealthState): string {
  if (t === undefined) {
    return JSON.stringify({
      xksProxyFleetSize: 1,
      xksProxyVendor: PROXY_VENDOR,
      xksProxyModel: model,
      ekmVendor: 'unknown',
      ekmFleetDetails: [{ id: 'unknown', model: 'unknown', healthStatus }],
    });
  }
  return JSON.stringify({
    xksProxyFleetSize: 1,
    xksProxyVendor: PROXY_VENDOR,
    xksProxyModel: model,
    ekmVendor: `${t.manufacturerId} (serial number: ${t.serialNumber})`,
    ekmFleetDetails: [
      {
        id: t.label,
        model:
          `${t.model} (firmware version: ${t.firmwareVersion.major}.${t.firmwareVersion.minor}, ` +
          `hardware version: ${t.hardwareVersion.major}.${t.hardwareVersion.minor})`,
        healthStatus,
      },
    ],
  });
}

export async function getHealthStatus(ctx: OpContext): Promise<string> {
  const model = `xks-proxy (TypeScript/C++) v${ctx.version}`;
  // [audit] on_failure = "fail-closed": key use is refused while the trail cannot be written.
  const refusing = ctx.audit?.failClosed === true && ctx.audit.failed();
  const deep = ctx.hsm.healthSource();
  if (deep !== undefined) {
    const v = deep.current();
    return body(model, v.token, refusing ? 'UNAVAILABLE' : v.state);
  }
  try {
    return body(model, await ctx.hsm.tokenInfo(), refusing ? 'UNAVAILABLE' : 'ACTIVE');
  } catch (e) {
    if (!(e instanceof XksError) || (e.errorName !== 'InternalException' && e.errorName !== 'DependencyTimeoutException')) throw e;
    return body(model, undefined, 'UNAVAILABLE');
  }
}

/** What a policy would see of a GetHealthStatus (registered as GetHealthMetadata, as the Rust proxy does). */
export class GetHealthMetadata {
  readonly kmsOperation: string;
  constructor(m: RequestMetadata) {
    this.kmsOperation = m.kmsOperation;
  }
}

export const healthOperation: Operation<RequestMetadata, undefined> = {
  name: 'GetHealthStatus',
  route: '/health',
  namesKey: false,
  // Per the XKS spec GetHealthStatus is never subject to secondary authorization (the Rust proxy
  // applies it); its class is registered so that the Rust proxy's policy files load unchanged.
  policy: { action: 'health', resource: GetHealthMetadata, className: 'GetHealthMetadata', enforced: false },
  shape: (o: Json) => requestMetadata(o, false, false),
  metadata: (m) => m,
  decode: () => undefined,
  run: getHealthStatus,
};
