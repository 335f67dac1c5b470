/** XKS GetKeyMetadata: key type, size and usage from the HSM's attributes. */
import type { OpContext } from './context.js';

export async function getKeyMetadata(ctx: OpContext, keyId: string): Promise<string> {
  const meta = await ctx.hsm.keyMetadata(keyId);
  return JSON.stringify({ keySpec: meta.keySpec, keyUsage: meta.keyUsage, keyStatus: 'ENABLED' });
}
