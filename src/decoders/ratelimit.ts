/**
 * Rate-limit response headers (DESIGN.md §4.4 → gauges in §7). Three dialects:
 * - generic `x-ratelimit-limit|remaining|reset` (seed 002: requests per minute, reset as ISO 8601);
 * - OpenAI `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` with Go-style durations for
 *   reset (`6m0s`, `1s`, `20ms`; platform.openai.com/docs/guides/rate-limits);
 * - Anthropic `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`
 *   with RFC 3339 reset times (docs.anthropic.com/en/api/rate-limits);
 * plus `retry-after` (seconds or HTTP date, RFC 9110 §10.2.3) and `retry-after-ms`.
 * Unparseable values are left out (unknown), never read as 0.
 */
import { header, type HeaderRecord } from './shared.js';
import type { RateLimitInfo, RateLimitWindow } from './types.js';

function nonNegativeInt(value: string | undefined): number | undefined {
  if (value === undefined || !/^\d+$/.test(value)) return undefined;
  return Number(value);
}

const DURATION_PART = /(\d+(?:\.\d+)?)(ms|h|m|s)/g;

/** Go-style duration (`1h2m3.5s`, `6m0s`, `20ms`) → milliseconds. */
export function parseDurationMs(value: string): number | undefined {
  if (!/^(\d+(\.\d+)?(ms|h|m|s))+$/.test(value)) return undefined;
  let ms = 0;
  for (const [, num, unit] of value.matchAll(DURATION_PART)) {
    const n = Number(num);
    ms += unit === 'h' ? n * 3_600_000 : unit === 'm' ? n * 60_000 : unit === 's' ? n * 1000 : n;
  }
  return Math.round(ms);
}

const SECONDS = /^\d+(\.\d+)?$/;

/** An absolute ISO 8601 / RFC 3339 / HTTP date → milliseconds from `now` (0 once past). */
function msUntilDate(value: string, now: Date): number | undefined {
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now.getTime());
}

/**
 * A reset value in any dialect → milliseconds from `now`: a duration, plain seconds (a delta, or
 * epoch seconds when it is clearly a timestamp), or an absolute ISO 8601 / RFC 3339 / HTTP date.
 */
export function parseResetMs(value: string | undefined, now: Date): number | undefined {
  if (value === undefined) return undefined;
  if (SECONDS.test(value)) {
    const n = Number(value);
    // Epoch seconds (some gateways send unix time) vs a delta in seconds.
    return n > 1_000_000_000 ? Math.max(0, Math.round(n * 1000 - now.getTime())) : Math.round(n * 1000);
  }
  const duration = parseDurationMs(value);
  if (duration !== undefined) return duration;
  return msUntilDate(value, now);
}

/**
 * `retry-after` → milliseconds: delta seconds or an HTTP date (RFC 9110 §10.2.3). Deliberately not
 * parseResetMs: a retry-after is never epoch seconds nor a Go duration, so those guesses stay out.
 */
function parseRetryAfterMs(value: string | undefined, now: Date): number | undefined {
  if (value === undefined) return undefined;
  return SECONDS.test(value) ? Math.round(Number(value) * 1000) : msUntilDate(value, now);
}

function window(
  limit: string | undefined,
  remaining: string | undefined,
  reset: string | undefined,
  now: Date,
): RateLimitWindow {
  const w: RateLimitWindow = {};
  const l = nonNegativeInt(limit);
  const r = nonNegativeInt(remaining);
  const resetMs = parseResetMs(reset, now);
  if (l !== undefined) w.limit = l;
  if (r !== undefined) w.remaining = r;
  if (resetMs !== undefined) w.resetMs = resetMs;
  return w;
}

function isEmpty(w: RateLimitWindow): boolean {
  return w.limit === undefined && w.remaining === undefined && w.resetMs === undefined;
}

/**
 * Cheap pre-check: does a response carry any rate-limit header at all? Most do not (a relay often
 * strips them), and parsing looks up a dozen names per response.
 */
export function hasRateLimitHeaders(headers: HeaderRecord): boolean {
  for (const name in headers) if (name.includes('ratelimit') || name.startsWith('retry-after')) return true;
  return false;
}

export function parseRateLimitHeaders(headers: HeaderRecord, now: Date = new Date()): RateLimitInfo {
  const h = (name: string): string | undefined => header(headers, name);

  let requests = window(
    h('x-ratelimit-limit-requests'),
    h('x-ratelimit-remaining-requests'),
    h('x-ratelimit-reset-requests'),
    now,
  );
  if (isEmpty(requests)) {
    requests = window(
      h('anthropic-ratelimit-requests-limit'),
      h('anthropic-ratelimit-requests-remaining'),
      h('anthropic-ratelimit-requests-reset'),
      now,
    );
  }
  if (isEmpty(requests)) {
    // Seed 002: the unsuffixed headers count requests per minute.
    requests = window(h('x-ratelimit-limit'), h('x-ratelimit-remaining'), h('x-ratelimit-reset'), now);
  }

  let tokens = window(
    h('x-ratelimit-limit-tokens'),
    h('x-ratelimit-remaining-tokens'),
    h('x-ratelimit-reset-tokens'),
    now,
  );
  for (const kind of ['tokens', 'input-tokens'] as const) {
    if (!isEmpty(tokens)) break;
    tokens = window(
      h(`anthropic-ratelimit-${kind}-limit`),
      h(`anthropic-ratelimit-${kind}-remaining`),
      h(`anthropic-ratelimit-${kind}-reset`),
      now,
    );
  }

  const info: RateLimitInfo = { requests, tokens };
  const retryAfterMs = nonNegativeInt(h('retry-after-ms')) ?? parseRetryAfterMs(h('retry-after'), now);
  if (retryAfterMs !== undefined) info.retryAfterMs = retryAfterMs;
  return info;
}
