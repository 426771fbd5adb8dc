/**
 * RequestRecord fixtures for audit-log tests: one with every field set (no field left at a default
 * a bug could also produce), one with every nullable field null.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RequestRecord } from '../../src/record.js';
import { NOOP_HEALTH, type HealthCounters } from '../../src/sinks/types.js';

let seq = 0;

/** A unique, sortable ULID-shaped id (26 Crockford chars). */
export function nextId(): string {
  seq++;
  return `01JD${String(seq).padStart(22, '0')}`;
}

export function fullRecord(overrides: Partial<RequestRecord> = {}): RequestRecord {
  return {
    id: nextId(),
    ts_start: Date.UTC(2026, 10, 20, 10, 0, 0, 123),
    ts_end: Date.UTC(2026, 10, 20, 10, 0, 1, 456),
    duration_ms: 1333,
    ttft_ms: 210,
    upstream: 'cailag',
    method: 'POST',
    path: '/v1/chat/completions',
    operation: 'chat',
    request_model: 'deepseek-chat',
    response_model: 'deepseek-chat-v3',
    app: 'billing-bot',
    key_id: 'a1b2c3d4e5f6',
    user: 'user-42',
    stream: true,
    http_status: 200,
    error_type: null,
    error_message: null,
    finish_reason: 'stop',
    input_tokens: 400,
    cache_read_tokens: 600,
    cache_write_tokens: 30,
    cache_write_1h_tokens: 10,
    output_tokens: 500,
    reasoning_tokens: 120,
    audio_tokens: null,
    images: 2,
    usage_source: 'reported',
    cost_nanos: 1_182_600,
    currency: 'CNY',
    cost_source: 'computed',
    price_id: 'cailag/deepseek-chat@2026-10-01',
    price_match: 'exact',
    multiplier: '0.8',
    upstream_reported_cost_nanos: 1_200_000,
    upstream_reported_currency: 'CNY',
    computed_cost_nanos: 1_150_000,
    computed_currency: 'CNY',
    trace_id: '4bf92f3577b34da6a3ce929d0e0e4736',
    request_bytes: 2048,
    response_bytes: 8192,
    upstream_request_id: 'req_abc123',
    note: 'fixture',
    ...overrides,
  };
}

/** Every nullable field null: the row must give them back as null, never 0 or ''. */
export function nullRecord(overrides: Partial<RequestRecord> = {}): RequestRecord {
  return fullRecord({
    ttft_ms: null,
    request_model: null,
    response_model: null,
    key_id: null,
    user: null,
    stream: false,
    http_status: null,
    error_type: 'network',
    error_message: null,
    finish_reason: null,
    input_tokens: null,
    cache_read_tokens: null,
    cache_write_tokens: null,
    cache_write_1h_tokens: null,
    output_tokens: null,
    reasoning_tokens: null,
    audio_tokens: null,
    images: null,
    usage_source: 'missing',
    cost_nanos: null,
    currency: null,
    cost_source: null,
    price_id: null,
    price_match: null,
    multiplier: null,
    upstream_reported_cost_nanos: null,
    upstream_reported_currency: null,
    computed_cost_nanos: null,
    computed_currency: null,
    trace_id: null,
    upstream_request_id: null,
    note: null,
    ...overrides,
  });
}

export interface TempDir {
  dir: string;
  file(name: string): string;
  cleanup(): void;
}

export function tempDir(): TempDir {
  const dir = mkdtempSync(join(tmpdir(), 'tokenmeter-audit-'));
  return {
    dir,
    file: (name) => join(dir, name),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** Health counters that remember what the audit log told them (the others do nothing). */
export function recordingHealth(): HealthCounters & { dropped: number; depth: number[]; internal: string[] } {
  return {
    ...NOOP_HEALTH,
    dropped: 0,
    depth: [],
    internal: [],
    internalError(c) {
      this.internal.push(c);
    },
    auditQueueDepth(d) {
      this.depth.push(d);
    },
    auditDropped(n) {
      this.dropped += n;
    },
  };
}
