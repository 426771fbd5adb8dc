/**
 * The configuration file schema (tokenmeter.yaml), DESIGN.md §2–§9. Every object is strict:
 * an unknown key is an error, because a typo (`mutliplier:`) would otherwise silently do nothing.
 * Loading, precedence and file:line error messages live in ./load.ts.
 */
import { z } from 'zod';

/** "30s", "5m", "2h", "1d", "250ms" or a number of milliseconds. */
export const Duration = z.union([
  z.number().int().nonnegative(),
  z
    .string()
    .regex(/^\d+(\.\d+)?(ms|s|m|h|d)$/, 'expected a duration like 250ms, 30s, 5m, 2h or 1d')
    .transform(parseDurationMs),
]);

/**
 * A duration that must be more than 0: a timeout, interval or window. 0 has no "off" meaning for
 * any of them (an idle_timeout of 0 answered every request 504 at once, a poll interval of 0 would
 * spin); a user who wants "practically never" writes a long duration such as 1h.
 */
export const PositiveDuration = Duration.refine(
  (ms) => ms > 0,
  'must be more than 0 (0 does not switch it off; use a long duration such as 1h)',
);

export function parseDurationMs(s: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(s);
  if (!m) throw new Error(`not a duration: ${s}`);
  const n = Number(m[1]);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[
    m[2] as 'ms' | 's' | 'm' | 'h' | 'd'
  ];
  return Math.round(n * unit);
}

/** "32MiB", "8MiB", "512KiB", "1GiB" or a number of bytes. */
export const ByteSize = z.union([
  z.number().int().nonnegative(),
  z
    .string()
    .regex(/^\d+(B|KiB|MiB|GiB)$/, 'expected a size like 512KiB, 8MiB or 1GiB')
    .transform((s) => {
      const m = /^(\d+)(B|KiB|MiB|GiB)$/.exec(s)!;
      return Number(m[1]) * { B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 }[m[2] as 'B'];
    }),
]);

/**
 * A size that must be more than 0: a cap on what tokenmeter reads or holds. 0 has no "off" meaning
 * (max_request_body 0 left every body unmetered, max_event_bytes 0 every stream's usage missing).
 */
export const PositiveByteSize = ByteSize.refine(
  (n) => n > 0,
  'must be more than 0 (0 does not switch it off)',
);

/** A positive exact decimal, kept as a string so no float ever touches money. */
export const Decimal = z
  .union([z.number(), z.string()])
  .transform((v) => (typeof v === 'number' ? numberToDecimalString(v) : v.trim()))
  .refine((s) => /^\d+(\.\d+)?$/.test(s), 'expected a non-negative decimal number such as 0.8');

/** YAML numbers arrive as JS numbers; their shortest round-trip string is the decimal the user wrote. */
export function numberToDecimalString(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  const s = String(n);
  if (!/e/i.test(s)) return s;
  // 1e-7 style: expand without float arithmetic.
  const [mant, expStr] = s.toLowerCase().split('e') as [string, string];
  const exp = Number(expStr);
  const neg = mant.startsWith('-');
  const digits = mant.replace('-', '').replace('.', '');
  const pointAt =
    (mant.replace('-', '').indexOf('.') === -1
      ? mant.replace('-', '').length
      : mant.replace('-', '').indexOf('.')) + exp;
  let out: string;
  if (pointAt <= 0) out = '0.' + '0'.repeat(-pointAt) + digits;
  else if (pointAt >= digits.length) out = digits + '0'.repeat(pointAt - digits.length);
  else out = digits.slice(0, pointAt) + '.' + digits.slice(pointAt);
  return (neg ? '-' : '') + out;
}

const Name = z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'use letters, digits, _ . - (at most 64)');
const Currency = z.string().regex(/^[A-Z]{3}$/, 'expected an ISO 4217 code such as CNY or USD');

/** Where a gateway states what it billed (issue 13, docs/reconcile.md). */
export const BILLING_SOURCES = ['balance', 'balance_delta', 'oneapi', 'newapi'] as const;

/**
 * One billing source of an upstream: the endpoint tokenmeter polls to learn what the gateway
 * billed the configured key (`api_key`: the endpoint answers for the key it is called with).
 */
export const BillingSourceConfig = z
  .object({
    /**
     * `balance`: seed 004 `GET /v1/balance` (`api_key.daily_used`/`monthly_used`); `balance_delta`:
     * the same endpoint's tenant `balance`, its drops between polls (rises = top-ups, excluded);
     * `oneapi`: `/dashboard/billing/usage` (`total_usage` in USD cents); `newapi`: `/api/usage/token`.
     */
    source: z.enum(BILLING_SOURCES),
    path: z.string().optional(),
    interval: PositiveDuration.optional(),
    /** The key the endpoint answers for; supports ${ENV_VAR}. Its fingerprint joins billed with metered rows. */
    api_key: z.string().min(1, 'the billing endpoint needs the key whose spend it reports'),
    /** Currency of the figures: default the body's `currency` (balance), else USD (oneapi, newapi). */
    currency: Currency.optional(),
    /** new-api/one-api quota units per currency unit (default 500000: $0.002 per 1K tokens = ratio 1). */
    quota_per_unit: z.number().positive().optional(),
    /** Window of the drift gauge (tokenmeter_reconcile_drift_ratio); default 24h. */
    window: PositiveDuration.optional(),
  })
  .strict();

export const UpstreamConfig = z
  .object({
    name: Name,
    url: z.string().url(),
    /** Extra headers sent to this upstream (e.g. a gateway group header). Values never logged. */
    headers: z.record(z.string()).optional(),
    /** Connect timeout (TCP+TLS) and idle timeout (no byte from upstream for this long). */
    connect_timeout: PositiveDuration.optional(),
    idle_timeout: PositiveDuration.optional(),
    /** Path prefix on tokenmeter that selects this upstream; stripped before forwarding. */
    prefix: z
      .string()
      .regex(/^\/[^?#]*$/, 'a path starting with /')
      .optional(),
    /** Add stream_options.include_usage to streamed chat requests and hide the extra chunk (§3.3). */
    inject_usage: z.boolean().optional(),
    /** Gateway discount or group ratio, e.g. 0.8 for "8折". Part of the multiplier stack (§5.2). */
    multiplier: Decimal.optional(),
    /** Use a cost the gateway reports in its response as the record's cost (§5.3). */
    trust_reported_cost: z.boolean().optional(),
    /** Poll the gateway's balance endpoint (seed 004 `GET /v1/balance`). */
    balance: z
      .union([
        z.boolean(),
        z
          .object({
            path: z.string().optional(),
            interval: PositiveDuration.optional(),
            /** Header value used to authenticate the poll; supports ${ENV_VAR}. */
            api_key: z.string().optional(),
          })
          .strict(),
      ])
      .optional(),
    /** Billed-vs-metered sources (issue 13): one, or a list (the first one feeds the metrics). */
    billing: z.union([BillingSourceConfig, z.array(BillingSourceConfig).min(1)]).optional(),
    /** App attributed to requests through this upstream when nothing more specific matches. */
    app: Name.optional(),
  })
  .strict();

export const RouteConfig = z
  .object({
    model: z.string().optional(),
    prefix: z
      .string()
      .regex(/^\/[^?#]*$/, 'a path starting with /')
      .optional(),
    upstream: Name,
    app: Name.optional(),
  })
  .strict()
  .refine((r) => r.model !== undefined || r.prefix !== undefined, {
    message: 'a route needs `model` (a glob) or `prefix` (a path)',
  });

export const BudgetConfig = z
  .object({
    name: Name,
    scope: z
      .object({ app: z.string().optional(), model: z.string().optional(), upstream: z.string().optional() })
      .strict()
      .default({}),
    period: z.enum(['day', 'week', 'month']),
    limit: Decimal,
    currency: Currency,
    /** IANA time zone for period boundaries; default UTC. */
    timezone: z.string().optional(),
    warn_at: z.array(z.number().gt(0).lte(1)).default([0.5, 0.8]),
    action: z.enum(['alert', 'block']).default('alert'),
    /**
     * Fleet mode only (docs/fleet.md, Shared budgets): what a shared `block` budget does when the
     * fleet Postgres cannot answer in time. `local` (default): admit from this host's own view;
     * `block`: refuse. Defaults in src/budgets/index.ts.
     */
    on_unreachable: z.enum(['local', 'block']).optional(),
  })
  .strict()
  .refine((b) => b.on_unreachable === undefined || b.action === 'block', {
    message: 'on_unreachable applies only to action: block budgets (an alert budget never refuses)',
    path: ['on_unreachable'],
  });

export const FxRate = z
  .object({
    from: Currency,
    to: Currency,
    rate: Decimal,
    /** Date from which this rate applies (YYYY-MM-DD); the latest rate on or before a record's day is used. */
    date: z
      .string()
      .regex(/^\d{4}-\d{2}-\d{2}$/, 'expected YYYY-MM-DD')
      .optional(),
  })
  .strict();

/** A PostgreSQL connection URL (the `pg` client's form). */
export const PG_URL = /^postgres(ql)?:\/\/\S+$/;

export const ConfigFile = z
  .object({
    host: z.string().optional(),
    port: z.number().int().min(0).max(65535).optional(),
    log_level: z.enum(['debug', 'info', 'warn', 'error', 'silent']).optional(),
    /** Bearer token required for /metrics and admin endpoints (recommended when not on 127.0.0.1). */
    auth_token: z.string().optional(),
    /** The read-only web console and its JSON API under /-/ (docs/console.md); default true. */
    console: z.boolean().optional(),
    /** HMAC secret for key fingerprints; default: generated once and kept in the DB's meta table. */
    key_salt: z.string().min(16, 'use at least 16 characters').optional(),

    db: z.union([z.string(), z.literal(false)]).optional(),
    retention_days: z.number().int().positive().optional(),
    audit: z
      .object({
        queue_size: z.number().int().positive().optional(),
        batch_size: z.number().int().positive().optional(),
        flush_interval: Duration.optional(),
        capture_bodies: z.boolean().optional(),
        capture_max_bytes: ByteSize.optional(),
        redact_patterns: z.array(z.string()).optional(),
      })
      .strict()
      .optional(),

    prices: z.array(z.string()).optional(),
    presets: z.boolean().optional(),
    multipliers: z
      .object({
        upstream: z.record(Decimal).optional(),
        app: z.record(Decimal).optional(),
        model: z.record(Decimal).optional(),
      })
      .strict()
      .optional(),
    fx: z.array(FxRate).optional(),
    report_currency: Currency.optional(),

    upstreams: z.array(UpstreamConfig).optional(),
    routes: z.array(RouteConfig).optional(),
    /** key fingerprint (`tokenmeter key-id <key>`) → app name. */
    apps: z.record(Name).optional(),

    budgets: z.array(BudgetConfig).optional(),

    limits: z
      .object({
        max_request_body: PositiveByteSize.optional(),
        max_buffered_bodies: PositiveByteSize.optional(),
        max_event_bytes: PositiveByteSize.optional(),
        max_models: z.number().int().positive().optional(),
        max_apps: z.number().int().positive().optional(),
        connect_timeout: PositiveDuration.optional(),
        idle_timeout: PositiveDuration.optional(),
        shutdown_grace: Duration.optional(),
        client_header_timeout: PositiveDuration.optional(),
        client_request_timeout: PositiveDuration.optional(),
        client_keep_alive_timeout: PositiveDuration.optional(),
        max_connections: z.number().int().positive().optional(),
      })
      .strict()
      .optional(),

    /** Fleet mode (docs/fleet.md, issue 14): ship the audit log into a shared PostgreSQL. */
    fleet: z
      .object({
        /** This sidecar's name in the fleet's tables; default: the machine's hostname. */
        host: z.string().min(1).max(255).optional(),
        /** How long a shared budget reservation counts if its host never settles it (crash); default 10m. */
        reservation_ttl: PositiveDuration.optional(),
        /** How long a request waits for the fleet ledger before on_unreachable applies; default 2s. */
        budget_timeout: PositiveDuration.optional(),
        postgres: z
          .object({
            // The message never repeats the value: the URL carries the password.
            url: z.string().refine((v) => PG_URL.test(v), 'expected a postgres:// or postgresql:// URL'),
            pool_size: z.number().int().positive().max(100).optional(),
            ship_interval: PositiveDuration.optional(),
            // At most 1000: one multi-row INSERT of 45 columns stays under Postgres's 65535 parameters.
            batch_size: z.number().int().positive().max(1000).optional(),
          })
          .strict()
          .optional(),
      })
      .strict()
      .optional(),

    traces: z
      .object({
        /** Put prompt/response content on spans. Off by default; never enable with sensitive data. */
        capture_content: z.boolean().optional(),
      })
      .strict()
      .optional(),
  })
  .strict();

export type ConfigFile = z.infer<typeof ConfigFile>;
export type UpstreamConfig = z.infer<typeof UpstreamConfig>;
export type RouteConfig = z.infer<typeof RouteConfig>;
export type BudgetConfig = z.infer<typeof BudgetConfig>;
export type FxRate = z.infer<typeof FxRate>;
export type BillingSourceConfig = z.infer<typeof BillingSourceConfig>;
export type BillingSourceName = (typeof BILLING_SOURCES)[number];
