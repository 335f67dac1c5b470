/** A fresh SoftHSM2 token holding the standard test keys (see softhsm.ts), for one test file. */
import { loadAddon, type NativeEngine } from '../../src/hsm/addon.js';
import { createTestKeys, makeToken, type TestToken } from './softhsm.js';

/** `more`: further keys made with the same engine (e.g. an HMAC key). */
export async function makeKeyedToken(label: string, more?: (engine: NativeEngine) => Promise<void>): Promise<TestToken> {
  const token = makeToken(label);
  process.env.SOFTHSM2_CONF = token.env.SOFTHSM2_CONF;
  const { Engine } = loadAddon();
  const engine = new Engine({
    modulePath: token.modulePath,
    userPin: token.pin,
    poolMaxSize: 2,
    poolTimeoutMs: 1000,
    eagerClose: false,
    threads: 1,
    ivMode: 'random',
  });
  await engine.open();
  await createTestKeys(engine);
  await more?.(engine);
  await engine.close();
  return token;
}
