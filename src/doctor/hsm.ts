/**
 * Doctor, group "hsm": the PKCS#11 module loads, a slot has a token, the user PIN logs in, and
 * [hsm_capabilities] suits the HSM (Hsm.open's start-up IV test, the one serving runs).
 */
import { pkcs11LoggerEnv, type Config } from '../config.js';
import { Hsm, HsmOpenError } from '../hsm/hsm.js';
import { engineOptions } from '../workers/serving.js';
import { ok, problem, type Finding } from './report.js';

const G = 'hsm';
/** What KMS sees when the proxy cannot use its HSM: health answers UNAVAILABLE, keys answer 500. */
const NO_HSM = 'ConnectCustomKeyStore fails (GetHealthStatus reports the HSM UNAVAILABLE); key operations: KMSInvalidStateException';

const LOGIN_CODES = new Set([
  'CKR_PIN_INCORRECT',
  'CKR_PIN_INVALID',
  'CKR_PIN_LEN_RANGE',
  'CKR_PIN_EXPIRED',
  'CKR_PIN_LOCKED',
  'CKR_USER_PIN_NOT_INITIALIZED',
]);
const TOKEN_CODES = new Set(['CKR_TOKEN_NOT_PRESENT', 'CKR_TOKEN_NOT_RECOGNIZED', 'CKR_SLOT_ID_INVALID']);

/** The stage an open failure belongs to, from the function and code that failed. */
function stage(code: string, fn: string | undefined): 'module' | 'token' | 'login' {
  if (code === 'XKS_LOAD_FAILED' || fn === 'C_GetFunctionList' || fn === 'C_Initialize') return 'module';
  if (LOGIN_CODES.has(code) || fn === 'C_Login') return 'login';
  if (TOKEN_CODES.has(code) || fn === 'C_GetSlotList' || fn === 'C_OpenSession') return 'token';
  return 'module';
}

const FIX = {
  module:
    "check [pkcs11] PKCS11_HSM_MODULE (or env PKCS11_HSM_MODULE) names the vendor's PKCS#11 library and its configuration (e.g. SOFTHSM2_CONF) is readable by the proxy's user",
  token: "initialize a token in the first slot that has one, or point the module's configuration at the right partition",
  login: "set [pkcs11] user_pin to the token's CKU_USER PIN (not the SO PIN)",
} as const;

/** Opens the HSM as serving would (one session, one thread); the Hsm is undefined when that failed. */
export async function checkHsm(config: Config): Promise<{ hsm: Hsm | undefined; findings: Finding[] }> {
  Object.assign(process.env, pkcs11LoggerEnv(config));
  const module = config.pkcs11.module_path;
  let hsm: Hsm;
  try {
    hsm = await Hsm.open({ ...engineOptions(config, { poolMaxSize: 1, threads: 1 }), keyCopies: false });
  } catch (e) {
    if (!(e instanceof HsmOpenError)) throw e;
    if (e.ivTest) {
      return {
        hsm: undefined,
        findings: [
          ok(G, 'module', module),
          ok(G, 'token', 'a slot has a token'),
          ok(G, 'login', 'user_pin logs in'),
          problem(
            'fail',
            G,
            'iv mode',
            e.message,
            'the proxy does not start: XKS_PROXY_NOT_REACHABLE',
            'set [hsm_capabilities] can_generate_iv = false (the proxy then makes each IV with C_GenerateRandom)',
          ),
        ],
      };
    }
    const at = stage(e.code, e.fn);
    const findings: Finding[] = [];
    if (at !== 'module') findings.push(ok(G, 'module', module));
    if (at === 'login') findings.push(ok(G, 'token', 'a slot has a token'));
    findings.push(problem('fail', G, at, e.message, `the proxy does not start: XKS_PROXY_NOT_REACHABLE; ${NO_HSM}`, FIX[at]));
    return { hsm: undefined, findings };
  }
  const o = hsm.opened;
  if (!o.ready) {
    const code = o.downCode ?? 'unknown';
    const at = stage(code, o.downFn);
    const findings: Finding[] = [];
    if (at !== 'module') findings.push(ok(G, 'module', module));
    if (at === 'login') findings.push(ok(G, 'token', 'a slot has a token'));
    findings.push(problem('fail', G, at, `the HSM is down or unreachable (${o.downFn ?? 'C_Initialize'}: ${code})`, NO_HSM, FIX[at]));
    await hsm.close();
    return { hsm: undefined, findings };
  }
  const token = await hsm.tokenInfo();
  const findings = [
    ok(G, 'module', module),
    ok(G, 'token', `"${token.label}" (${token.manufacturerId} ${token.model}, serial ${token.serialNumber})`),
    ok(G, 'login', 'user_pin logs in'),
  ];
  for (const [level, note] of hsm.startupNotes()) {
    if (level === 'info') findings.push(ok(G, 'iv mode', note));
    else findings.push(problem('warn', G, 'start-up', note, 'none directly', 'see the note'));
  }
  if (o.ivCheck === undefined) findings.push(ok(G, 'iv mode', 'can_generate_iv = false: the proxy makes each IV with C_GenerateRandom'));
  return { hsm, findings };
}
