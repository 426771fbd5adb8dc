/**
 * Billing sources (issue 13, docs/reconcile.md): what a gateway says it billed, read from its own
 * endpoints and turned into the figures of one snapshot, in exact nanos. Parsing is pure; only
 * `fetchFigures` does I/O (one GET, bounded by a timeout, the key only in the Authorization header).
 *
 * | source          | endpoint (default path)                 | figures kept                                    |
 * |-----------------|-----------------------------------------|-------------------------------------------------|
 * | `balance`       | seed 004 `GET /v1/balance`              | `api_key.daily_used`, `monthly_used`, `balance` |
 * | `balance_delta` | the same                                | the same; billed = drops of the tenant balance  |
 * | `oneapi`        | `GET /v1/dashboard/billing/usage` (+ `…/subscription`) | `total_usage` (cents), hard limit |
 * | `newapi`        | `GET /api/usage/token` (at the origin)  | `total_used`, `total_granted` (quota units)     |
 */
import type { BillingSettings } from '../config/types.js';
import { joinUpstreamPath } from '../proxy/path-join.js';
import { Dec, parseDecimal, unitsToNanos } from '../pricing/money.js';
import type { BillingSnapshot } from './types.js';

/** The figures of one poll, before they are stamped with time, upstream and key. */
export type BilledFigures = Omit<BillingSnapshot, 'ts' | 'upstream' | 'key_id' | 'source'>;

type Json = Record<string, unknown>;

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A JSON number (or numeric string) in currency units → exact nanos; null/absent → undefined. */
export function moneyNanos(value: unknown, scale: Dec = new Dec(1)): bigint | undefined {
  if (value === null || value === undefined) return undefined;
  if (typeof value !== 'number' && typeof value !== 'string') return undefined;
  if (typeof value === 'number' && !Number.isFinite(value)) return undefined;
  try {
    return unitsToNanos(parseDecimal(value).div(scale));
  } catch {
    return undefined;
  }
}

/** An ISO 8601 instant → epoch ms; anything else → undefined. */
function instantMs(value: unknown): number | undefined {
  if (typeof value !== 'string') return undefined;
  const ms = Date.parse(value);
  return Number.isFinite(ms) ? ms : undefined;
}

export class BillingParseError extends Error {}

/**
 * Seed 004 (dieyu) `GET /v1/balance`: `{"object":"balance","currency":"CNY","balance":138.5,
 * "api_key":{"daily_used":3.25,"daily_reset_at":"…","monthly_used":null,…}}`. The tenant balance
 * is shared by every key of the tenant; `daily_used`/`monthly_used` are the calling key's.
 */
export function parseDieyuBalance(body: unknown, currency?: string): BilledFigures {
  if (!isObject(body)) throw new BillingParseError('response is not a JSON object');
  const cur =
    typeof body.currency === 'string' && /^[A-Z]{3}$/.test(body.currency) ? body.currency : currency;
  if (cur === undefined) throw new BillingParseError('response has no ISO `currency` and none is configured');
  const balance = moneyNanos(body.balance);
  const key = isObject(body.api_key) ? body.api_key : {};
  const daily = moneyNanos(key.daily_used);
  const monthly = moneyNanos(key.monthly_used);
  if (balance === undefined && daily === undefined && monthly === undefined)
    throw new BillingParseError(
      'response has none of `balance`, `api_key.daily_used`, `api_key.monthly_used`',
    );
  return {
    currency: cur,
    balance_nanos: balance,
    daily_used_nanos: daily,
    monthly_used_nanos: monthly,
    daily_reset_at: instantMs(key.daily_reset_at),
    monthly_reset_at: instantMs(key.monthly_reset_at),
  };
}

/**
 * one-api / new-api `GET /dashboard/billing/usage` → `{"object":"list","total_usage":2500}`:
 * `total_usage` is in **cents** of the display currency (one-api controller/billing.go:
 * `amount = quota / QuotaPerUnit; TotalUsage: amount * 100`; new-api docs "unit is $0.01 USD").
 * Both answer errors with HTTP 200 and an `error` object, so that is checked too.
 */
export function parseOneApiUsage(body: unknown, currency: string): BilledFigures {
  if (!isObject(body)) throw new BillingParseError('response is not a JSON object');
  if (isObject(body.error))
    throw new BillingParseError(`gateway error: ${String(body.error.message ?? 'unknown').slice(0, 200)}`);
  const used = moneyNanos(body.total_usage, new Dec(100));
  if (used === undefined) throw new BillingParseError('response has no numeric `total_usage`');
  return { currency, total_used_nanos: used };
}

/** `GET /dashboard/billing/subscription` → `hard_limit_usd` (the key's or user's total quota). */
export function parseOneApiSubscription(body: unknown): bigint | undefined {
  if (!isObject(body) || isObject(body.error)) return undefined;
  return moneyNanos(body.hard_limit_usd);
}

/**
 * new-api `GET /api/usage/token` (QuantumNous/new-api PR #1161) → `{"code":true,"data":{"object":
 * "token_usage","total_granted":…,"total_used":…,"total_available":…}}`, in quota units:
 * `quota_per_unit` (default 500000) of them make one currency unit.
 */
export function parseNewApiTokenUsage(body: unknown, currency: string, quotaPerUnit: number): BilledFigures {
  if (!isObject(body)) throw new BillingParseError('response is not a JSON object');
  const data = isObject(body.data) ? body.data : undefined;
  if (!data || body.code === false || body.success === false)
    throw new BillingParseError(`gateway error: ${String(body.message ?? 'no data').slice(0, 200)}`);
  const scale = parseDecimal(quotaPerUnit);
  const used = moneyNanos(data.total_used, scale);
  if (used === undefined) throw new BillingParseError('response has no numeric `data.total_used`');
  const unlimited = data.unlimited_quota === true;
  return {
    currency,
    total_used_nanos: used,
    granted_nanos: unlimited ? undefined : moneyNanos(data.total_granted, scale),
    balance_nanos: unlimited ? undefined : moneyNanos(data.total_available, scale),
  };
}

/**
 * Where each source is polled when no `path` is configured. `joined`: with the upstream URL like
 * proxied paths (§3.1: `https://h/v1` + `/v1/balance` → `https://h/v1/balance`); `origin`: at the
 * upstream's origin (new-api serves `/api/usage/token` at its root, outside `/v1`).
 */
export const DEFAULT_BILLING_PATHS: Record<
  BillingSettings['source'],
  { path: string; at: 'joined' | 'origin' }
> = {
  balance: { path: '/v1/balance', at: 'joined' },
  balance_delta: { path: '/v1/balance', at: 'joined' },
  // one-api and new-api serve it at /dashboard/… and /v1/dashboard/… alike.
  oneapi: { path: '/v1/dashboard/billing/usage', at: 'joined' },
  newapi: { path: '/api/usage/token', at: 'origin' },
};

/**
 * The URL polled: a configured `path` is joined with the upstream URL like proxied paths (an
 * absolute http(s) URL is used as is); without one, the source's default (DEFAULT_BILLING_PATHS).
 */
export function billingUrl(upstream: URL, billing: Pick<BillingSettings, 'source' | 'path'>): URL {
  const path = billing.path;
  if (path === undefined) {
    const d = DEFAULT_BILLING_PATHS[billing.source];
    return d.at === 'origin'
      ? new URL(d.path, upstream.origin)
      : new URL(joinUpstreamPath(upstream, d.path), upstream);
  }
  if (/^https?:\/\//i.test(path)) return new URL(path);
  return new URL(joinUpstreamPath(upstream, path), upstream);
}

/** The key without a `Bearer ` prefix (config may hold either). */
export function bareKey(apiKey: string): string {
  return apiKey.replace(/^\s*bearer\s+/i, '').trim();
}

export interface FetchOptions {
  upstreamUrl: URL;
  headers: Record<string, string>;
  billing: BillingSettings;
  fetchImpl?: typeof fetch;
  timeoutMs?: number;
}

async function getJson(url: URL, opts: FetchOptions): Promise<unknown> {
  const headers: Record<string, string> = {
    ...opts.headers,
    accept: 'application/json',
    authorization: `Bearer ${bareKey(opts.billing.apiKey)}`,
  };
  const res = await (opts.fetchImpl ?? fetch)(url, {
    method: 'GET',
    headers,
    signal: AbortSignal.timeout(opts.timeoutMs ?? 10_000),
  });
  const text = await res.text();
  if (!res.ok) throw new BillingParseError(`HTTP ${res.status} from ${url.pathname}`);
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new BillingParseError(`response of ${url.pathname} is not JSON`);
  }
}

/** One poll of one source. Throws (BillingParseError or a fetch error) on failure; never logs. */
export async function fetchFigures(opts: FetchOptions): Promise<BilledFigures> {
  const b = opts.billing;
  const url = billingUrl(opts.upstreamUrl, b);
  const body = await getJson(url, opts);
  switch (b.source) {
    case 'balance':
    case 'balance_delta':
      return parseDieyuBalance(body, b.currency);
    case 'newapi':
      return parseNewApiTokenUsage(body, b.currency ?? 'USD', b.quotaPerUnit);
    case 'oneapi': {
      const figures = parseOneApiUsage(body, b.currency ?? 'USD');
      // The subscription's hard limit is informative (granted); its failure does not fail the poll.
      const subUrl = new URL(url.href.replace(/billing\/usage(\?|$)/, 'billing/subscription$1'));
      if (subUrl.href !== url.href) {
        try {
          figures.granted_nanos = parseOneApiSubscription(await getJson(subUrl, opts));
        } catch {
          // Optional figure.
        }
      }
      return figures;
    }
  }
}
