/** XKS GetKeyMetadata: key type, size and usage from the HSM's attributes. */
import { requestMetadata, type Json, type RequestMetadata } from '../validate.js';
import type { OpContext } from './context.js';
import type { Operation } from './operation.js';
import { policyOption, policyString, type PolicyOption } from './policy-fields.js';

export async function getKeyMetadata(ctx: OpContext, keyId: string): Promise<string> {
  const meta = await ctx.hsm.keyMetadata(keyId);
  return JSON.stringify({ keySpec: meta.keySpec, keyUsage: meta.keyUsage, keyStatus: 'ENABLED' });
}

/** What a policy sees of a GetKeyMetadata (the Rust proxy's struct; kmsKeyArn is optional there). */
export class GetKeyMetadata {
  readonly awsPrincipalArn: string | null;
  readonly kmsOperation: string;
  readonly kmsKeyArn: PolicyOption;
  readonly awsSourceVpc: PolicyOption;
  readonly awsSourceVpce: PolicyOption;
  readonly kmsViaService: PolicyOption;
  constructor(m: RequestMetadata) {
    this.awsPrincipalArn = policyString(m.awsPrincipalArn);
    this.kmsOperation = m.kmsOperation;
    this.kmsKeyArn = policyOption(m.kmsKeyArn);
    this.awsSourceVpc = policyOption(m.awsSourceVpc);
    this.awsSourceVpce = policyOption(m.awsSourceVpce);
    this.kmsViaService = policyOption(m.kmsViaService);
  }
}

export const metadataOperation: Operation<RequestMetadata, undefined> = {
  name: 'GetKeyMetadata',
  route: '/keys/:keyId/metadata',
  namesKey: true,
  policy: { action: 'metadata', resource: GetKeyMetadata, className: 'GetKeyMetadata', enforced: true },
  shape: (o: Json) => requestMetadata(o, true, false),
  metadata: (m) => m,
  decode: () => undefined,
  run: getKeyMetadata,
};
