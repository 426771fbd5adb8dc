import { describe, expect, it } from 'vitest';
import { parseDurationMs, parseRateLimitHeaders } from '../../src/decoders/ratelimit.js';

const now = new Date('2026-11-23T10:00:00.000Z');

describe('parseRateLimitHeaders', () => {
  it('seed 002: X-RateLimit-Limit/Remaining/Reset (ISO 8601) count requests', () => {
    const info = parseRateLimitHeaders(
      {
        'x-ratelimit-limit': '60',
        'x-ratelimit-remaining': '12',
        'x-ratelimit-reset': '2026-11-23T10:00:42Z',
      },
      now,
    );
    expect(info).toEqual({ requests: { limit: 60, remaining: 12, resetMs: 42_000 }, tokens: {} });
  });

  it('OpenAI -requests/-tokens with Go-style durations', () => {
    const info = parseRateLimitHeaders(
      {
        'x-ratelimit-limit-requests': '10000',
        'x-ratelimit-remaining-requests': '9999',
        'x-ratelimit-reset-requests': '6m0s',
        'x-ratelimit-limit-tokens': '2000000',
        'x-ratelimit-remaining-tokens': '1999500',
        'x-ratelimit-reset-tokens': '20ms',
      },
      now,
    );
    expect(info).toEqual({
      requests: { limit: 10000, remaining: 9999, resetMs: 360_000 },
      tokens: { limit: 2_000_000, remaining: 1_999_500, resetMs: 20 },
    });
  });

  it('parses durations exactly', () => {
    expect(parseDurationMs('1s')).toBe(1000);
    expect(parseDurationMs('1h2m3.5s')).toBe(3_723_500);
    expect(parseDurationMs('0s')).toBe(0);
    expect(parseDurationMs('soon')).toBeUndefined();
  });

  it('Anthropic anthropic-ratelimit-* with RFC 3339 resets; input-tokens when tokens is absent', () => {
    const info = parseRateLimitHeaders(
      {
        'anthropic-ratelimit-requests-limit': '50',
        'anthropic-ratelimit-requests-remaining': '49',
        'anthropic-ratelimit-requests-reset': '2026-11-23T10:00:01Z',
        'anthropic-ratelimit-input-tokens-limit': '30000',
        'anthropic-ratelimit-input-tokens-remaining': '29000',
        'anthropic-ratelimit-input-tokens-reset': '2026-11-23T10:00:02.500Z',
      },
      now,
    );
    expect(info).toEqual({
      requests: { limit: 50, remaining: 49, resetMs: 1000 },
      tokens: { limit: 30000, remaining: 29000, resetMs: 2500 },
    });
  });

  it('retry-after in seconds and as an HTTP date; retry-after-ms wins', () => {
    expect(parseRateLimitHeaders({ 'retry-after': '60' }, now).retryAfterMs).toBe(60_000);
    expect(parseRateLimitHeaders({ 'retry-after': 'Mon, 23 Nov 2026 10:00:30 GMT' }, now).retryAfterMs).toBe(
      30_000,
    );
    expect(parseRateLimitHeaders({ 'retry-after': '60', 'retry-after-ms': '1500' }, now).retryAfterMs).toBe(
      1500,
    );
  });

  it('unparseable or absent values are unknown, never 0', () => {
    const info = parseRateLimitHeaders(
      { 'x-ratelimit-limit': 'lots', 'x-ratelimit-remaining': '', 'retry-after': 'later' },
      now,
    );
    expect(info).toEqual({ requests: {}, tokens: {} });
    expect(info.retryAfterMs).toBeUndefined();
  });

  it('a past reset time clamps to 0 and epoch-second resets are read as timestamps', () => {
    expect(parseRateLimitHeaders({ 'x-ratelimit-reset': '2026-11-23T09:59:00Z' }, now).requests.resetMs).toBe(
      0,
    );
    const epoch = String(now.getTime() / 1000 + 5);
    expect(parseRateLimitHeaders({ 'x-ratelimit-reset': epoch }, now).requests.resetMs).toBe(5000);
    expect(parseRateLimitHeaders({ 'x-ratelimit-reset': '30' }, now).requests.resetMs).toBe(30_000);
  });
});
