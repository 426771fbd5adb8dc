/**
 * Error classification (DESIGN.md §4.4) from the upstream's status, headers and body, covering
 * every error form in the seeds:
 * - seed 000 (cailag) / 001 (cnaitoken, one-api): OpenAI envelope `{error:{message,type,code}}`,
 *   402 and `code: insufficient_quota`; one-api 403 "额度" (quota) messages;
 * - seed 002: 402 balance, 403 model allowlist, 429 rate limit *or* "token quota exhausted";
 * - seed 004 (dieyuyun): `{error:{code:"RATE_LIMIT"|"MODEL_NOT_FOUND"|"UPSTREAM_ERROR"|
 *   "GATEWAY_TIMEOUT"|…, message, request_id}}`;
 * - Anthropic `{type:"error", error:{type:"billing_error"|…}, request_id}` (docs.anthropic.com/en/api/errors);
 * - DashScope native `{code:"Arrearage", message, request_id}` (help.aliyun.com, "错误码");
 * - MiniMax `base_resp.status_code` (1008 insufficient balance) inside HTTP 200.
 * Codes beat status (one-api sends model_not_found with 503, DashScope Arrearage with 400).
 */
import type { ErrorType } from '../record.js';
import { header, obj, parseJson, str, type HeaderRecord, type JsonObject } from './shared.js';

export interface ClassifyInput {
  status: number | null;
  headers: HeaderRecord;
  body?: string;
  streamError?: { message: string; code?: string };
  /** The request's API key, if known, so it can be scrubbed from the message verbatim. */
  apiKey?: string;
}

export interface Classification {
  errorType: ErrorType | null;
  /** The upstream's message, key-scrubbed and truncated to 500 characters. */
  message?: string;
  upstreamRequestId?: string;
}

const MAX_MESSAGE = 500;

const REQUEST_ID_HEADERS = ['x-request-id', 'request-id', 'x-oneapi-request-id', 'x-new-api-request-id'];

/** Error codes/types (lower-cased) that mean "out of money", whatever the status. */
const QUOTA_CODES = new Set([
  'insufficient_quota', // OpenAI, one-api (seed 001)
  'insufficient_user_quota', // new-api
  'pre_consume_token_quota_failed', // one-api
  'insufficient_balance',
  'billing_error', // Anthropic (402)
  'billing_not_active',
  'arrearage', // DashScope
  'payment_required',
  '1008', // MiniMax base_resp: insufficient balance
]);

const CODE_CLASSES: Record<string, ErrorType> = {
  model_not_found: 'model_not_found', // seed 004 MODEL_NOT_FOUND, OpenAI, one-api
  not_found_error: 'model_not_found', // Anthropic 404
  rate_limit: 'rate_limited', // seed 004 RATE_LIMIT
  rate_limit_exceeded: 'rate_limited',
  rate_limit_error: 'rate_limited', // Anthropic
  '1002': 'rate_limited', // MiniMax RPM/TPM limit
  upstream_error: 'upstream_error', // seed 004
  overloaded_error: 'upstream_error', // Anthropic 529
  api_error: 'upstream_error', // Anthropic 500
  internal_error: 'upstream_error',
  server_error: 'upstream_error',
  gateway_timeout: 'timeout', // seed 004
  timeout: 'timeout',
  unauthorized: 'auth', // seed 004
  forbidden: 'auth',
  invalid_api_key: 'auth', // seed 000
  authentication_error: 'auth', // Anthropic
  permission_error: 'auth',
  '1004': 'auth', // MiniMax authentication failure
  invalid_params: 'bad_request', // seed 004
  invalid_request_error: 'bad_request',
  context_length_exceeded: 'bad_request',
};

/** Messages that state a balance/quota problem (one-api/new-api speak Chinese: 额度 quota, 余额 balance, 欠费 arrears). */
const QUOTA_MESSAGE =
  /insufficient[ _](quota|balance|funds|credit)|exceeded your current quota|credit balance|balance is (too low|insufficient)|quota (exhausted|used up)|top.?up|recharge|arrear|余额|额度|欠费|充值/i;

interface BodyError {
  /** The body is an error envelope (not merely a body that has a message field). */
  isError: boolean;
  message?: string;
  codes: readonly string[];
  requestId?: string;
}

const NO_BODY_ERROR: BodyError = Object.freeze({ isError: false, codes: Object.freeze([]) });

/** Pull message, codes and request id out of whichever error envelope the body uses. */
function readBodyError(body: string | undefined): BodyError {
  // Most responses (every 2xx body) are not read: one shared, frozen answer for them.
  if (body === undefined) return NO_BODY_ERROR;
  const codes: string[] = [];
  const result: BodyError = { isError: false, codes };
  if (body.trim() === '') return result;
  const parsed = parseJson(body);
  const root = obj(parsed);
  if (!root) {
    // Plain-text or HTML error pages (nginx 502s): the text itself is the message.
    if (parsed === undefined) result.message = body.trim();
    else if (typeof parsed === 'string') result.message = parsed;
    return result;
  }
  const addCode = (v: unknown): void => {
    if (typeof v === 'string' && v !== '') codes.push(v);
    else if (typeof v === 'number') codes.push(String(v));
  };
  const error: JsonObject | undefined = obj(root.error);
  const baseResp = obj(root.base_resp);
  if (error) {
    result.isError = true;
    result.message = str(error.message) ?? str(error.msg);
    addCode(error.code);
    addCode(error.type);
    result.requestId = str(error.request_id);
  } else if (typeof root.error === 'string' && root.error !== '') {
    result.isError = true;
    result.message = root.error;
  }
  if (baseResp && typeof baseResp.status_code === 'number' && baseResp.status_code !== 0) {
    result.isError = true;
    result.message ??= str(baseResp.status_msg);
    addCode(baseResp.status_code);
  }
  result.message ??= str(root.message) ?? str(root.msg) ?? str(root.detail);
  // DashScope native `{code:"Arrearage",message}` and flat variants; `code: 0`/"success" wrappers are not errors.
  if (
    root.code !== undefined &&
    root.code !== 0 &&
    root.code !== '0' &&
    root.code !== 'success' &&
    root.code !== null
  ) {
    addCode(root.code);
    if (result.message !== undefined) result.isError = true;
  }
  result.requestId ??= str(root.request_id) ?? str(root.requestId);
  return result;
}

function classOfCodes(codes: string[], message: string | undefined): ErrorType | undefined {
  const lower = codes.map((c) => c.toLowerCase());
  if (lower.some((c) => QUOTA_CODES.has(c))) return 'insufficient_quota';
  if (message !== undefined && QUOTA_MESSAGE.test(message)) return 'insufficient_quota';
  for (const c of lower) {
    const cls = CODE_CLASSES[c];
    if (cls) return cls;
  }
  return undefined;
}

function classOfStatus(status: number): ErrorType | null {
  if (status < 400) return null;
  if (status === 401 || status === 403) return 'auth';
  if (status === 402) return 'insufficient_quota';
  if (status === 404) return 'model_not_found';
  if (status === 408 || status === 504 || status === 524) return 'timeout';
  if (status === 429) return 'rate_limited';
  if (status < 500) return 'bad_request';
  return 'upstream_error';
}

/** Remove anything that could be a credential before a message is stored or logged (§12). */
export function scrubSecrets(message: string, apiKey?: string): string {
  let out = message;
  if (apiKey !== undefined && apiKey.length >= 4) out = out.split(apiKey).join('[redacted]');
  return out
    .replace(/\bBearer\s+\S+/gi, 'Bearer [redacted]')
    .replace(/\b(sk|ak|pk|rk)-[A-Za-z0-9_\-*.]{6,}/g, '[redacted]')
    .replace(/\b[A-Za-z0-9_-]{32,}\b/g, (m) => (/\d/.test(m) && /[A-Za-z]/.test(m) ? '[redacted]' : m));
}

export function classifyResponse(input: ClassifyInput): Classification {
  const bodyError = readBodyError(input.body);
  let upstreamRequestId: string | undefined;
  for (const h of REQUEST_ID_HEADERS) {
    upstreamRequestId = header(input.headers, h);
    if (upstreamRequestId !== undefined) break;
  }
  upstreamRequestId ??= bodyError.requestId;

  let errorType: ErrorType | null = null;
  let message: string | undefined;
  const status = input.status;
  if (status !== null && status >= 400) {
    message = bodyError.message ?? input.streamError?.message;
    const codes = [...bodyError.codes, ...(input.streamError?.code ? [input.streamError.code] : [])];
    const byCode = classOfCodes(codes, message);
    const byStatus = classOfStatus(status);
    // A quota marker wins at any status (429 insufficient_quota, 403 one-api quota, 400 Arrearage);
    // other codes refine the status only within the same family.
    if (byCode === 'insufficient_quota') errorType = byCode;
    else if (status === 429 || status === 401 || byStatus === 'timeout') errorType = byStatus;
    else if (byCode === 'bad_request' && status >= 500)
      errorType = byStatus; // a 5xx is never the client's fault
    else errorType = byCode ?? byStatus;
  } else if (status !== null && (input.streamError !== undefined || bodyError.isError)) {
    // An error inside a 2xx body or stream. Out-of-money is still reported as such (MiniMax
    // base_resp 1008, one-api quota chunks) so the quota alert fires; anything else is stream_error.
    const err = input.streamError ?? { message: bodyError.message ?? 'error', code: bodyError.codes[0] };
    message = err.message;
    errorType =
      classOfCodes(err.code ? [err.code] : [], message) === 'insufficient_quota'
        ? 'insufficient_quota'
        : 'stream_error';
  }

  const out: Classification = { errorType };
  if (message !== undefined && message !== '') {
    const clean = scrubSecrets(message, input.apiKey);
    out.message = clean.length > MAX_MESSAGE ? `${clean.slice(0, MAX_MESSAGE - 1)}…` : clean;
  }
  if (upstreamRequestId !== undefined) out.upstreamRequestId = upstreamRequestId;
  return out;
}
