/** Request records and starts for sink tests: a complete, priced, reported chat request by default. */
import type { RequestRecord } from '../../src/record.js';
import type { RequestStart } from '../../src/sinks/types.js';

let seq = 0;

export function makeRecord(overrides: Partial<RequestRecord> = {}): RequestRecord {
  seq += 1;
  return {
    id: `01JTEST${String(seq).padStart(19, '0')}`,
    ts_start: 1_790_000_000_000,
    ts_end: 1_790_000_001_500,
    duration_ms: 1500,
    ttft_ms: null,
    upstream: 'cailag',
    method: 'POST',
    path: '/v1/chat/completions',
    operation: 'chat',
    request_model: 'deepseek-chat',
    response_model: 'deepseek-chat',
    app: 'default',
    key_id: 'abcdef012345',
    user: 'user-42',
    stream: false,
    http_status: 200,
    error_type: null,
    error_message: null,
    finish_reason: 'stop',
    input_tokens: 400,
    cache_read_tokens: 600,
    cache_write_tokens: null,
    cache_write_1h_tokens: null,
    output_tokens: 500,
    reasoning_tokens: null,
    audio_tokens: null,
    images: null,
    usage_source: 'reported',
    cost_nanos: 1_182_600,
    currency: 'CNY',
    cost_source: 'computed',
    price_id: 'cailag:deepseek-chat@1',
    price_match: 'exact',
    multiplier: '1',
    upstream_reported_cost_nanos: null,
    upstream_reported_currency: null,
    trace_id: null,
    request_bytes: 120,
    response_bytes: 900,
    upstream_request_id: null,
    note: null,
    ...overrides,
  };
}

export function makeStart(overrides: Partial<RequestStart> = {}): RequestStart {
  seq += 1;
  return {
    id: `01JSTART${String(seq).padStart(18, '0')}`,
    ts_start: 1_790_000_000_000,
    method: 'POST',
    path: '/v1/chat/completions',
    upstream: 'cailag',
    upstreamUrl: new URL('https://cailag.xin/v1'),
    operation: 'chat',
    request_model: 'deepseek-chat',
    app: 'default',
    stream: false,
    headers: {},
    ...overrides,
  };
}

/** A started request and the record that finishes it (same id). */
export function startAndRecord(
  start: Partial<RequestStart> = {},
  record: Partial<RequestRecord> = {},
): { start: RequestStart; record: RequestRecord } {
  const s = makeStart(start);
  const r = makeRecord({
    id: s.id,
    ts_start: s.ts_start,
    upstream: s.upstream,
    operation: s.operation,
    request_model: s.request_model,
    app: s.app,
    stream: s.stream,
    ...record,
  });
  return { start: s, record: r };
}
