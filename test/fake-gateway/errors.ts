/**
 * Error bodies in the shape of the seed that documents each status. `family` is the endpoint's
 * API family: Anthropic endpoints (/messages*) always answer in Anthropic's error shape.
 */

export type ErrorFamily = 'openai' | 'anthropic';

/** Error bodies that differ from the status's default: the quota-like ones §4.4 classifies. */
export type ErrorVariant = 'error-429-quota' | 'error-arrearage' | 'error-403-quota';

export interface FakeError {
  status: number;
  headers: Record<string, string>;
  body: unknown;
}

/** Anthropic error `type` per status (docs.anthropic.com/en/api/errors). */
const ANTHROPIC_ERROR_TYPES: Record<number, string> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  402: 'billing_error',
  403: 'permission_error',
  404: 'not_found_error',
  413: 'request_too_large',
  429: 'rate_limit_error',
  500: 'api_error',
  502: 'api_error',
  503: 'api_error',
  504: 'timeout_error',
  529: 'overloaded_error',
};

function rateLimitedHeaders(): Record<string, string> {
  // Seed 002: X-RateLimit-Limit/Remaining/Reset (ISO 8601) and Retry-After: 60.
  return {
    'x-ratelimit-limit': '60',
    'x-ratelimit-remaining': '0',
    'x-ratelimit-reset': new Date(Date.now() + 60_000).toISOString(),
    'retry-after': '60',
  };
}

export function errorResponse(
  family: ErrorFamily,
  status: number,
  requestId: string,
  opts: { variant?: ErrorVariant; message?: string } = {},
): FakeError {
  const headers = status === 429 ? rateLimitedHeaders() : {};
  if (family === 'anthropic') {
    const type = ANTHROPIC_ERROR_TYPES[status] ?? (status >= 500 ? 'api_error' : 'invalid_request_error');
    return {
      status,
      headers,
      body: {
        type: 'error',
        error: { type, message: opts.message ?? `fake ${type} (status ${status})` },
        request_id: requestId,
      },
    };
  }
  // Seed 004 shape: {"error":{"code","message","request_id"}}.
  const seed004 = (code: string, message: string): FakeError => ({
    status,
    headers,
    body: { error: { code, message: opts.message ?? message, request_id: requestId } },
  });
  // Seed 000/001 (one-api) shape: {"error":{"message","type","code"}}.
  const oneApi = (type: string, code: string, message: string): FakeError => ({
    status,
    headers,
    body: { error: { message: opts.message ?? message, type, code } },
  });
  if (opts.variant === 'error-429-quota') {
    return oneApi(
      'insufficient_quota',
      'insufficient_quota',
      'You exceeded your current quota, please check your plan and billing details.',
    );
  }
  if (opts.variant === 'error-arrearage') {
    // DashScope compatible-mode body (help.aliyun.com "Arrearage" error code).
    return {
      status,
      headers,
      body: {
        error: {
          message: 'Access denied, please make sure your account is in good standing.',
          type: 'Arrearage',
          param: null,
          code: 'Arrearage',
        },
        request_id: requestId,
      },
    };
  }
  if (opts.variant === 'error-403-quota') {
    // one-api / new-api relay: user quota exhausted is a 403 (songquanpeng/one-api relay errors).
    return oneApi('one_api_error', 'insufficient_user_quota', 'user quota is not enough');
  }
  switch (status) {
    case 400:
      return seed004('INVALID_PARAMS', 'Invalid request parameters');
    case 401:
      return oneApi('invalid_request_error', 'invalid_api_key', 'Incorrect API key provided');
    case 402:
      return oneApi('invalid_request_error', 'insufficient_quota', 'Insufficient quota, please recharge');
    case 403:
      return seed004('FORBIDDEN', 'Access denied: model not in allowlist');
    case 404:
      return seed004('MODEL_NOT_FOUND', 'Model not found or offline');
    case 429:
      return seed004('RATE_LIMIT', 'Rate limit exceeded. Please retry after 60s.');
    case 500:
      return seed004('INTERNAL_ERROR', 'Internal server error');
    case 502:
      return seed004('UPSTREAM_ERROR', 'Upstream model service error');
    case 504:
      return seed004('GATEWAY_TIMEOUT', 'Request timeout');
    default:
      return oneApi(
        status >= 500 ? 'server_error' : 'invalid_request_error',
        `http_${status}`,
        `fake error ${status}`,
      );
  }
}
