/**
 * The XKS API's typed errors (spec section "Error Codes"). Every failure a client can
 * see is one of these; the server turns it into `{"errorName", "errorMessage"}` with
 * the matching HTTP status. Messages are fixed, printable ASCII and never carry
 * request data, key material or secrets.
 */
export type XksErrorName =
  | 'ValidationException'
  | 'InvalidStateException'
  | 'InvalidCiphertextException'
  | 'InvalidKeyUsageException'
  | 'AuthenticationFailedException'
  | 'AccessDeniedException'
  | 'KeyNotFoundException'
  | 'InvalidUriPathException'
  | 'PayloadTooLargeException'
  | 'ThrottlingException'
  | 'UnsupportedOperationException'
  | 'DependencyTimeoutException'
  | 'InternalException';

const STATUS: Record<XksErrorName, number> = {
  ValidationException: 400,
  InvalidStateException: 400,
  InvalidCiphertextException: 400,
  InvalidKeyUsageException: 400,
  AuthenticationFailedException: 401,
  AccessDeniedException: 403,
  KeyNotFoundException: 404,
  InvalidUriPathException: 404,
  PayloadTooLargeException: 413,
  ThrottlingException: 429,
  UnsupportedOperationException: 501,
  DependencyTimeoutException: 503,
  InternalException: 500,
};

/** HTTP status line text for the statuses we send (uWS wants "code text"). */
export const STATUS_LINE: Record<number, string> = {
  200: '200 OK',
  400: '400 Bad Request',
  401: '401 Unauthorized',
  403: '403 Forbidden',
  404: '404 Not Found',
  413: '413 Payload Too Large',
  429: '429 Too Many Requests',
  500: '500 Internal Server Error',
  501: '501 Not Implemented',
  503: '503 Service Unavailable',
};

export class XksError extends Error {
  readonly errorName: XksErrorName;
  readonly status: number;
  /** Operator-only detail for the log (never sent to the client, never secret). */
  readonly detail: string | undefined;

  constructor(errorName: XksErrorName, message: string, detail?: string) {
    super(sanitizeMessage(message));
    this.name = 'XksError';
    this.errorName = errorName;
    this.status = STATUS[errorName];
    this.detail = detail;
  }

  /** The JSON body the spec prescribes. */
  toBody(): string {
    return JSON.stringify({ errorName: this.errorName, errorMessage: this.message });
  }
}

/** Printable ASCII only, shorter than 512 characters (spec). */
export function sanitizeMessage(message: string): string {
  let out = message.replace(/[^\x20-\x7e]/g, '?');
  if (out.length > 511) out = out.slice(0, 508) + '...';
  return out;
}

export const validation = (message: string): XksError => new XksError('ValidationException', message);
