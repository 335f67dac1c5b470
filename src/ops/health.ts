/**
 * XKS GetHealthStatus: the token of the first slot, reported as the Rust proxy does,
 * with UNAVAILABLE (instead of an error) when the HSM cannot answer.
 */
import { XksError } from '../errors.js';
import type { OpContext } from './context.js';

export const PROXY_VENDOR = 'xks-proxy open source project';

export async function getHealthStatus(ctx: OpContext): Promise<string> {
  const model = `xks-proxy (TypeScript/C++) v${ctx.version}`;
  try {
    const t = await ctx.hsm.tokenInfo();
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
          healthStatus: 'ACTIVE',
        },
      ],
    });
  } catch (e) {
    if (!(e instanceof XksError) || e.errorName !== 'InternalException') throw e;
    return JSON.stringify({
      xksProxyFleetSize: 1,
      xksProxyVendor: PROXY_VENDOR,
      xksProxyModel: model,
      ekmVendor: 'unknown',
      ekmFleetDetails: [{ id: 'unknown', model: 'unknown', healthStatus: 'UNAVAILABLE' }],
    });
  }
}
