import { describe, expect, it } from 'vitest';
import { classifyResponse, scrubSecrets } from '../../src/decoders/classify.js';

const J = JSON.stringify;
const none = {};

describe('classifyResponse (§4.4, every error form in the seeds)', () => {
  it('2xx without error is not an error', () => {
    expect(
      classifyResponse({ status: 200, headers: none, body: J({ id: 'x', choices: [] }) }).errorType,
    ).toBeNull();
    expect(
      classifyResponse({ status: 200, headers: none, body: J({ type: 'message', code: 0, message: 'ok' }) }),
    ).toEqual({
      errorType: null,
    });
    expect(classifyResponse({ status: null, headers: none }).errorType).toBeNull();
  });

  it('seed 000: 401 invalid_api_key → auth, with the message', () => {
    const body = J({
      error: {
        message: 'Incorrect API key provided',
        type: 'invalid_request_error',
        code: 'invalid_api_key',
      },
    });
    expect(classifyResponse({ status: 401, headers: none, body })).toEqual({
      errorType: 'auth',
      message: 'Incorrect API key provided',
    });
  });

  it('seed 001 (one-api): code insufficient_quota at 429 and at 402 → insufficient_quota', () => {
    const body = J({
      error: { message: 'Error description', type: 'invalid_request_error', code: 'insufficient_quota' },
    });
    expect(classifyResponse({ status: 429, headers: none, body }).errorType).toBe('insufficient_quota');
    expect(classifyResponse({ status: 402, headers: none, body: '' }).errorType).toBe('insufficient_quota');
  });

  it('429 without a quota marker → rate_limited; seed 004 RATE_LIMIT with request_id', () => {
    const body = J({
      error: {
        code: 'RATE_LIMIT',
        message: 'Rate limit exceeded. Please retry after 60s.',
        request_id: 'req-xxx',
      },
    });
    expect(classifyResponse({ status: 429, headers: none, body })).toEqual({
      errorType: 'rate_limited',
      message: 'Rate limit exceeded. Please retry after 60s.',
      upstreamRequestId: 'req-xxx',
    });
  });

  it('seed 002: 429 "Token quota exhausted" → insufficient_quota', () => {
    const body = J({ error: { message: 'Token quota exhausted', type: 'rate_limit' } });
    expect(classifyResponse({ status: 429, headers: none, body }).errorType).toBe('insufficient_quota');
  });

  it('Anthropic billing_error → insufficient_quota, request_id from the body', () => {
    const body = J({
      type: 'error',
      error: { type: 'billing_error', message: 'Your credit balance is too low.' },
      request_id: 'req_011',
    });
    expect(classifyResponse({ status: 400, headers: none, body })).toEqual({
      errorType: 'insufficient_quota',
      message: 'Your credit balance is too low.',
      upstreamRequestId: 'req_011',
    });
  });

  it('DashScope Arrearage (400) → insufficient_quota', () => {
    const body = J({
      code: 'Arrearage',
      message: 'Access denied, please make sure your account is in good standing.',
      request_id: 'ds-1',
    });
    const c = classifyResponse({ status: 400, headers: none, body });
    expect(c.errorType).toBe('insufficient_quota');
    expect(c.upstreamRequestId).toBe('ds-1');
  });

  it('one-api 403 quota message → insufficient_quota; plain 403 → auth', () => {
    const quota = J({
      error: { message: '该令牌额度已用尽 TokenStatusExhausted[sk-abc***xyz]', type: 'one_api_error' },
    });
    expect(classifyResponse({ status: 403, headers: none, body: quota }).errorType).toBe(
      'insufficient_quota',
    );
    const denied = J({ error: { message: 'No access to this model', type: 'FORBIDDEN' } });
    expect(classifyResponse({ status: 403, headers: none, body: denied }).errorType).toBe('auth');
  });

  it('MODEL_NOT_FOUND (seed 004) at 404, and one-api model_not_found at 503', () => {
    expect(
      classifyResponse({
        status: 404,
        headers: none,
        body: J({ error: { code: 'MODEL_NOT_FOUND', message: 'offline' } }),
      }).errorType,
    ).toBe('model_not_found');
    const oneApi = J({
      error: {
        message: '当前分组 default 下对于模型 x 无可用渠道',
        type: 'new_api_error',
        code: 'model_not_found',
      },
    });
    expect(classifyResponse({ status: 503, headers: none, body: oneApi }).errorType).toBe('model_not_found');
  });

  it('502 UPSTREAM_ERROR → upstream_error; 504 GATEWAY_TIMEOUT → timeout; 500 → upstream_error', () => {
    expect(
      classifyResponse({
        status: 502,
        headers: none,
        body: J({ error: { code: 'UPSTREAM_ERROR', message: 'x' } }),
      }).errorType,
    ).toBe('upstream_error');
    expect(
      classifyResponse({
        status: 504,
        headers: none,
        body: J({ error: { code: 'GATEWAY_TIMEOUT', message: 'x' } }),
      }).errorType,
    ).toBe('timeout');
    expect(
      classifyResponse({
        status: 500,
        headers: none,
        body: J({ error: { type: 'invalid_request_error', message: 'x' } }),
      }).errorType,
    ).toBe('upstream_error');
    expect(
      classifyResponse({
        status: 529,
        headers: none,
        body: J({ type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }),
      }).errorType,
    ).toBe('upstream_error');
  });

  it('400 and 422 → bad_request; seed 004 INVALID_PARAMS', () => {
    expect(
      classifyResponse({
        status: 400,
        headers: none,
        body: J({ error: { code: 'INVALID_PARAMS', message: 'bad' } }),
      }).errorType,
    ).toBe('bad_request');
    expect(classifyResponse({ status: 422, headers: none, body: J({ detail: 'field required' }) })).toEqual({
      errorType: 'bad_request',
      message: 'field required',
    });
  });

  it('401 UNAUTHORIZED and Anthropic authentication_error → auth', () => {
    expect(
      classifyResponse({
        status: 401,
        headers: none,
        body: J({ error: { code: 'UNAUTHORIZED', message: 'x' } }),
      }).errorType,
    ).toBe('auth');
    expect(
      classifyResponse({
        status: 401,
        headers: none,
        body: J({ type: 'error', error: { type: 'authentication_error', message: 'invalid x-api-key' } }),
      }).errorType,
    ).toBe('auth');
  });

  it('error inside a 2xx stream → stream_error; MiniMax 1008 balance inside 200 → insufficient_quota', () => {
    expect(
      classifyResponse({
        status: 200,
        headers: none,
        streamError: { message: 'Overloaded', code: 'overloaded_error' },
      }),
    ).toEqual({
      errorType: 'stream_error',
      message: 'Overloaded',
    });
    expect(
      classifyResponse({
        status: 200,
        headers: none,
        streamError: { message: 'insufficient balance', code: '1008' },
      }).errorType,
    ).toBe('insufficient_quota');
    const body = J({ base_resp: { status_code: 1002, status_msg: 'rate limit exceeded(RPM)' } });
    expect(classifyResponse({ status: 200, headers: none, body })).toEqual({
      errorType: 'stream_error',
      message: 'rate limit exceeded(RPM)',
    });
  });

  it('upstream request id: headers beat the body, in the documented order', () => {
    const body = J({ error: { code: 'RATE_LIMIT', message: 'x', request_id: 'body-id' } });
    expect(
      classifyResponse({ status: 429, headers: { 'x-request-id': 'h1', 'request-id': 'h2' }, body })
        .upstreamRequestId,
    ).toBe('h1');
    expect(classifyResponse({ status: 200, headers: { 'request-id': 'req_anth' } }).upstreamRequestId).toBe(
      'req_anth',
    );
    expect(
      classifyResponse({ status: 200, headers: { 'x-oneapi-request-id': ['oa-1', 'oa-2'] } })
        .upstreamRequestId,
    ).toBe('oa-1');
  });

  it('plain-text error pages become the message; messages are truncated to 500 characters', () => {
    expect(classifyResponse({ status: 502, headers: none, body: '<html>502 Bad Gateway</html>' })).toEqual({
      errorType: 'upstream_error',
      message: '<html>502 Bad Gateway</html>',
    });
    const long = classifyResponse({
      status: 400,
      headers: none,
      body: J({ error: { message: 'y'.repeat(2000) } }),
    });
    expect(long.message).toHaveLength(500);
  });

  it('never returns the request key in the message', () => {
    const key = 'sk-live-THISISASECRETKEY1234567890abcdef';
    const body = J({
      error: {
        message: `Incorrect API key provided: ${key}. Header was Bearer ${key}`,
        code: 'invalid_api_key',
      },
    });
    const c = classifyResponse({ status: 401, headers: none, body, apiKey: key });
    expect(c.message).not.toContain('SECRETKEY');
    expect(c.message).toContain('Incorrect API key provided');
    // Also without being told the key: key-shaped tokens are scrubbed.
    expect(scrubSecrets('key sk-abcdef123456 and 0123456789abcdef0123456789abcdefXYZ')).toBe(
      'key [redacted] and [redacted]',
    );
  });
});
