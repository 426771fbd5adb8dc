/**
 * The Prometheus sink (DESIGN.md §7): one prom-client registry with every tokenmeter metric, fed
 * one request record at a time. Names and label sets come only from ../semconv.ts.
 *
 * Labels are bounded: `upstream` comes from config, `app` is capped (configured apps always kept),
 * `model` is the request model normalised and capped, then `other`. Never a key, user, trace or
 * request id. Unknown is not zero: a null token count or cost adds no sample at all.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { BudgetStatus } from '../budgets/types.js';
import type { RateLimitInfo } from '../decoders/types.js';
import { nanosToUnits } from '../pricing/money.js';
import type { RequestRecord } from '../record.js';
import {
  GEN_AI_DURATION_BUCKETS,
  GEN_AI_OPERATION_NAME,
  GEN_AI_PROVIDER_NAME,
  GEN_AI_TOKEN_BUCKETS,
  genAiInputTokens,
  LABELS,
  METRIC,
  NONE,
  OTHER,
  UNKNOWN,
} from '../semconv.js';
import { FastCounter, FastHistogram, type CounterSeries, type HistogramSeries } from './prom-fast.js';
import type { HealthCounters, Sink } from './types.js';

export interface MetricsSinkOptions {
  registry?: Registry;
  /** Distinct `model` label values kept before folding into `other` (§7 default 100). */
  maxModels: number;
  /** Distinct non-configured `app` values kept before folding into `other`. */
  maxApps: number;
  /** Configured app names: always allowed as label values, never counted against maxApps. */
  apps: string[];
  /** Register prom-client's default process metrics (serve: yes; tests: usually no). */
  collectDefault?: boolean;
  /** Upstream name → host, for the GenAI `server.address` attribute (from config: bounded). */
  upstreamHosts?: Readonly<Record<string, string>>;
}

export interface MetricsSink extends Sink, HealthCounters {
  readonly registry: Registry;
  rateLimit(upstream: string, info: RateLimitInfo): void;
  balance(upstream: string, currency: string, amount: number): void;
  /** Billed amount observed between two polls of a billing endpoint (tokenmeter_billed_total). */
  billed(upstream: string, currency: string, nanos: bigint): void;
  /** billed / metered over the drift window; null removes the series (no ratio known). */
  reconcileDrift(upstream: string, currency: string, ratio: number | null): void;
  /** Time tokenmeter itself added to one request (tokenmeter_proxy_overhead_seconds). */
  overhead(upstream: string, seconds: number): void;
  /** Where the in-flight gauge reads from at scrape time (the proxy's one in-flight count). */
  setInflightSource(source: () => ReadonlyMap<string, number>): void;
  /** Where the budget gauges read from at scrape time (budgets' status()). */
  setBudgetSource(source: () => readonly BudgetStatus[]): void;
  render(): Promise<{ contentType: string; body: string }>;
  /** The fleet shipper's health (src/fleet/shipper.ts, docs/fleet.md). */
  readonly fleet: FleetShipMetrics;
  /** Shared budgets' fallbacks and failed settlements (docs/fleet.md, Shared budgets). */
  readonly fleetBudgets: FleetBudgetMetrics;
}

export interface FleetShipMetrics {
  /** Rows in the local audit log not yet committed to Postgres. */
  lag(rows: number): void;
  shipped(rows: number): void;
  /** One failed attempt (connect, migrate or batch); rows stay local and are retried. */
  failure(): void;
}

/** Shared budgets' health (src/fleet/budget-ledger.ts, docs/fleet.md "Shared budgets"). */
export interface FleetBudgetMetrics {
  /** A shared budget decided from this host's own view: the fleet ledger was unreachable. */
  fallback(budget: string): void;
  /** A shared budget's settlement could not be written (its reservation expires instead). */
  settleFailure(budget: string): void;
}

/** Longest model label kept; longer names are cut (a model name this long is almost surely junk). */
export const MODEL_LABEL_MAX_LENGTH = 64;

// Latency buckets in seconds. LLM requests range from sub-second embeddings to minutes-long
// reasoning streams, so the top buckets go far beyond the usual HTTP defaults.
const DURATION_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600];
const TTFT_BUCKETS = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 60];
const TPOT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1];
// tokenmeter's own added time per request: tens of microseconds when healthy, so fine buckets low.
const OVERHEAD_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1];

/** Normalises a request model into a label candidate: trimmed, lower-cased, length-capped. */
export function normaliseModel(model: string | null | undefined): string {
  const m = (model ?? '').trim().toLowerCase().slice(0, MODEL_LABEL_MAX_LENGTH);
  return m === '' ? UNKNOWN : m;
}

/** Keeps at most `max` distinct values (plus the always-allowed ones); the rest become `other`. */
export class BoundedLabel {
  private readonly seen = new Set<string>();
  constructor(
    private readonly max: number,
    private readonly allowed: ReadonlySet<string> = new Set(),
  ) {}
  value(v: string): string {
    if (this.allowed.has(v) || this.seen.has(v)) return v;
    if (this.seen.size >= this.max) return OTHER;
    this.seen.add(v);
    return v;
  }
}

/** The `type` label values of tokenmeter_tokens_total (a partition of the total). */
type TokenType = 'input' | 'cache_read' | 'cache_write' | 'output';

export function statusClass(record: Pick<RequestRecord, 'error_type' | 'http_status'>): string {
  if (record.error_type === 'client_abort') return 'abort';
  const s = record.http_status;
  if (s === null) return 'network';
  if (s < 300) return '2xx';
  if (s < 400) return '3xx';
  if (s < 500) return '4xx';
  return '5xx';
}

export function createMetricsSink(opts: MetricsSinkOptions): MetricsSink {
  const registry = opts.registry ?? new Registry();
  if (opts.collectDefault) collectDefaultMetrics({ register: registry });
  const reg = [registry];

  const requests = new FastCounter(
    METRIC.requests,
    'Requests proxied, by outcome.',
    LABELS.requests,
    registry,
  );
  const tokens = new FastCounter(
    METRIC.tokens,
    'Tokens by type; the types partition the total (input is uncached input).',
    LABELS.tokens,
    registry,
  );
  const reasoningTokens = new FastCounter(
    METRIC.reasoningTokens,
    'Reasoning tokens: the part of output tokens that was reasoning (already in type=output).',
    LABELS.reasoningTokens,
    registry,
  );
  const cost = new FastCounter(
    METRIC.cost,
    'Cost in currency units (exact per request, summed here as a float); unpriced requests add nothing.',
    LABELS.cost,
    registry,
  );
  const upstreamReportedCost = new FastCounter(
    METRIC.upstreamReportedCost,
    'Cost stated by the upstream in its responses, in currency units.',
    LABELS.upstreamReportedCost,
    registry,
  );
  const requestDuration = new FastHistogram(
    METRIC.requestDuration,
    'Request duration from request start to the last byte (or abort), in seconds.',
    LABELS.requestDuration,
    DURATION_BUCKETS,
    registry,
  );
  const ttft = new FastHistogram(
    METRIC.timeToFirstToken,
    'Time to the first content byte of a streamed response, in seconds.',
    LABELS.timeToFirstToken,
    TTFT_BUCKETS,
    registry,
  );
  const tpot = new FastHistogram(
    METRIC.timePerOutputToken,
    'Time per output token after the first, for streams with at least 2 output tokens, in seconds.',
    LABELS.timePerOutputToken,
    TPOT_BUCKETS,
    registry,
  );
  const usageUnreported = new FastCounter(
    METRIC.usageUnreported,
    'Requests whose usage was not reported by the upstream (estimated locally, or missing).',
    LABELS.usageUnreported,
    registry,
  );
  const unpriced = new FastCounter(
    METRIC.unpricedRequests,
    'Requests with no matching price entry (their cost is unknown, not zero).',
    LABELS.unpricedRequests,
    registry,
  );
  const ratelimitRemaining = new Gauge({
    name: METRIC.ratelimitRemaining,
    help: 'Remaining requests/tokens in the upstream rate-limit window (x-ratelimit-remaining-*).',
    labelNames: LABELS.ratelimitRemaining,
    registers: reg,
  });
  const ratelimitLimit = new Gauge({
    name: METRIC.ratelimitLimit,
    help: 'Upstream rate limit per window (x-ratelimit-limit-*).',
    labelNames: LABELS.ratelimitLimit,
    registers: reg,
  });
  const upstreamBalance = new Gauge({
    name: METRIC.upstreamBalance,
    help: 'Upstream account balance as polled from its balance endpoint, in currency units.',
    labelNames: LABELS.upstreamBalance,
    registers: reg,
  });
  const billedTotal = new Counter({
    name: METRIC.billed,
    help: 'Amount the upstream billed, as observed between polls of its billing endpoint, in currency units.',
    labelNames: LABELS.billed,
    registers: reg,
  });
  const driftRatio = new Gauge({
    name: METRIC.reconcileDriftRatio,
    help: 'Billed / metered over the reconcile window (1 = the gateway bills what tokenmeter metered).',
    labelNames: LABELS.reconcileDriftRatio,
    registers: reg,
  });
  // Gauges read at scrape time from their owners (budgets, the proxy's in-flight count), so
  // nothing on the request path keeps them in step.
  let budgetSource: () => readonly BudgetStatus[] = () => [];
  let inflightSource: () => ReadonlyMap<string, number> = () => new Map();
  new Gauge({
    name: METRIC.budgetLimit,
    help: 'Configured budget limit for the current period, in currency units.',
    labelNames: LABELS.budgetLimit,
    registers: reg,
    collect() {
      for (const b of budgetSource())
        this.set({ budget: b.name, currency: b.currency }, nanosToUnits(b.limit_nanos));
    },
  });
  new Gauge({
    name: METRIC.budgetSpent,
    help: 'Period-to-date spend in the budget scope, in currency units.',
    labelNames: LABELS.budgetSpent,
    registers: reg,
    collect() {
      for (const b of budgetSource())
        this.set({ budget: b.name, currency: b.currency }, nanosToUnits(b.spent_nanos));
    },
  });
  new Gauge({
    name: METRIC.inflight,
    help: 'Requests in flight (from the first byte until their record was handed to the sinks).',
    labelNames: LABELS.inflight,
    registers: reg,
    collect() {
      for (const [upstream, n] of inflightSource()) if (upstream !== '') this.set({ upstream }, n);
    },
  });
  // Observed once per request: a series handle per upstream (prom-fast.ts), not a label lookup.
  const proxyOverhead = new FastHistogram(
    METRIC.proxyOverhead,
    'Time tokenmeter itself added to a request: request read to upstream write, plus upstream bytes to client write, in seconds.',
    LABELS.proxyOverhead,
    OVERHEAD_BUCKETS,
    registry,
  );
  const overheadSeries = new Map<string, HistogramSeries>();
  // Changes on every record: kept in a variable and set at scrape time, not on the request path.
  let queueDepth = 0;
  new Gauge({
    name: METRIC.auditQueueDepth,
    help: 'Records waiting in the audit log queue.',
    labelNames: LABELS.auditQueueDepth,
    registers: reg,
    collect() {
      this.set(queueDepth);
    },
  });
  const auditDropped = new Counter({
    name: METRIC.auditDropped,
    help: 'Records dropped because the audit queue was full.',
    labelNames: LABELS.auditDropped,
    registers: reg,
  });
  const fleetShipLag = new Gauge({
    name: METRIC.fleetShipLag,
    help: 'Audit log rows not yet shipped to the fleet Postgres.',
    labelNames: LABELS.fleetShipLag,
    registers: reg,
  });
  const fleetShipped = new Counter({
    name: METRIC.fleetShipped,
    help: 'Audit log rows committed to the fleet Postgres.',
    labelNames: LABELS.fleetShipped,
    registers: reg,
  });
  const fleetShipFailures = new Counter({
    name: METRIC.fleetShipFailures,
    help: 'Failed attempts to ship audit rows to the fleet Postgres (rows stay local and are retried).',
    labelNames: LABELS.fleetShipFailures,
    registers: reg,
  });
  const fleetBudgetFallback = new Counter({
    name: METRIC.fleetBudgetFallback,
    help: "Requests a shared block budget admitted from this host's own view because the fleet Postgres was unreachable (on_unreachable: local).",
    labelNames: LABELS.fleetBudgetFallback,
    registers: reg,
  });
  const fleetBudgetSettleFailures = new Counter({
    name: METRIC.fleetBudgetSettleFailures,
    help: 'Shared budget settlements that could not be written to the fleet Postgres after retries (the reservation expires).',
    labelNames: LABELS.fleetBudgetSettleFailures,
    registers: reg,
  });
  const internalErrors = new Counter({
    name: METRIC.internalErrors,
    help: 'Failures inside tokenmeter that did not affect traffic, by component.',
    labelNames: LABELS.internalErrors,
    registers: reg,
  });
  const sseOversize = new Counter({
    name: METRIC.sseOversizeEvents,
    help: 'SSE events over the size cap, skipped for metering (the bytes still reached the client).',
    labelNames: LABELS.sseOversizeEvents,
    registers: reg,
  });
  const requestBodyWaits = new Counter({
    name: METRIC.requestBodyWaits,
    help: 'Request bodies that waited, unread, for room under limits.max_buffered_bodies.',
    labelNames: LABELS.requestBodyWaits,
    registers: reg,
  });
  const genAiTokenUsage = new FastHistogram(
    METRIC.genAiTokenUsage,
    'OTel GenAI gen_ai.client.token.usage: tokens per request by gen_ai.token.type.',
    LABELS.genAiTokenUsage,
    GEN_AI_TOKEN_BUCKETS,
    registry,
  );
  const genAiOperationDuration = new FastHistogram(
    METRIC.genAiOperationDuration,
    'OTel GenAI gen_ai.client.operation.duration, in seconds.',
    LABELS.genAiOperationDuration,
    GEN_AI_DURATION_BUCKETS,
    registry,
  );
  // Counters/gauges without labels only appear once touched; start them at 0 so dashboards and
  // alerts see the series from the first scrape (0 is a true value here, not an unknown).
  auditDropped.inc(0);

  const models = new BoundedLabel(opts.maxModels);
  // `default` is the app every unattributed request gets (§4.3), so it is always allowed too.
  const apps = new BoundedLabel(opts.maxApps, new Set([...opts.apps, 'default']));
  const upstreamHosts = opts.upstreamHosts ?? {};

  /**
   * prom-client label children, cached per (upstream, app, model, operation, stream): looking a
   * child up by a label object hashes every label on every call, which was a measurable part of
   * the per-request cost. Bounded because every label is.
   */
  type CounterChild = CounterSeries;
  type HistogramChild = HistogramSeries;
  interface Children {
    tokens: Record<TokenType, CounterChild>;
    reasoning: CounterChild;
    duration: HistogramChild;
    ttft: HistogramChild;
    tpot: HistogramChild;
    requests: Map<string, CounterChild>;
    cost: Map<string, CounterChild>;
    genAi: Record<string, string>;
    genAiInput: HistogramChild;
    genAiOutput: HistogramChild;
    /** gen_ai operation duration children by error type ('' = success: no error.type label). */
    genAiDuration: Map<string, HistogramChild>;
    unreported: Map<string, CounterChild>;
    unpriced: CounterChild | undefined;
  }
  const childCache = new Map<string, Children>();
  const childrenFor = (
    upstream: string,
    app: string,
    model: string,
    r: RequestRecord,
    stream: string,
  ): Children => {
    const key = `${upstream}\u0000${app}\u0000${model}\u0000${r.operation}\u0000${stream}`;
    let c = childCache.get(key);
    if (c) return c;
    const genAi = {
      gen_ai_operation_name: GEN_AI_OPERATION_NAME[r.operation],
      gen_ai_provider_name: GEN_AI_PROVIDER_NAME[r.operation],
      gen_ai_request_model: model,
      server_address: upstreamHosts[upstream] ?? upstream,
    };
    c = {
      tokens: {
        input: tokens.labels({ upstream, app, model, type: 'input' }),
        cache_read: tokens.labels({ upstream, app, model, type: 'cache_read' }),
        cache_write: tokens.labels({ upstream, app, model, type: 'cache_write' }),
        output: tokens.labels({ upstream, app, model, type: 'output' }),
      },
      reasoning: reasoningTokens.labels({ upstream, app, model }),
      duration: requestDuration.labels({ upstream, model, operation: r.operation, stream }),
      ttft: ttft.labels({ upstream, model }),
      tpot: tpot.labels({ upstream, model }),
      requests: new Map(),
      cost: new Map(),
      genAi,
      genAiInput: genAiTokenUsage.labels({ ...genAi, gen_ai_token_type: 'input' }),
      genAiOutput: genAiTokenUsage.labels({ ...genAi, gen_ai_token_type: 'output' }),
      genAiDuration: new Map(),
      unreported: new Map(),
      unpriced: undefined,
    };
    childCache.set(key, c);
    return c;
  };

  const sink: MetricsSink = {
    name: 'metrics',
    registry,

    write(r: RequestRecord) {
      const upstream = r.upstream;
      const model = models.value(normaliseModel(r.request_model));
      const app = apps.value(r.app);
      const stream = r.stream ? 'true' : 'false';
      const c = childrenFor(upstream, app, model, r, stream);

      const sc = statusClass(r);
      const et = r.error_type ?? NONE;
      const rk = `${sc}\u0000${et}`;
      let req = c.requests.get(rk);
      if (!req) {
        req = requests.labels({
          upstream,
          app,
          model,
          operation: r.operation,
          status_class: sc,
          error_type: et,
          stream,
        });
        c.requests.set(rk, req);
      }
      req.inc();

      if (r.input_tokens !== null) c.tokens.input.inc(r.input_tokens);
      if (r.cache_read_tokens !== null) c.tokens.cache_read.inc(r.cache_read_tokens);
      if (r.cache_write_tokens !== null) c.tokens.cache_write.inc(r.cache_write_tokens);
      if (r.output_tokens !== null) c.tokens.output.inc(r.output_tokens);
      if (r.reasoning_tokens !== null) c.reasoning.inc(r.reasoning_tokens);

      if (r.cost_nanos !== null && r.currency !== null) {
        let child = c.cost.get(r.currency);
        if (!child) {
          child = cost.labels({ upstream, app, model, currency: r.currency });
          c.cost.set(r.currency, child);
        }
        child.inc(nanosToUnits(r.cost_nanos));
      }
      if (r.upstream_reported_cost_nanos !== null && r.upstream_reported_currency !== null) {
        upstreamReportedCost
          .labels({ upstream, app, model, currency: r.upstream_reported_currency })
          .inc(nanosToUnits(r.upstream_reported_cost_nanos));
      }

      const durationS = r.duration_ms / 1000;
      c.duration.observe(durationS);
      if (r.ttft_ms !== null) {
        c.ttft.observe(r.ttft_ms / 1000);
        if (r.stream && r.output_tokens !== null && r.output_tokens >= 2) {
          c.tpot.observe((r.duration_ms - r.ttft_ms) / 1000 / (r.output_tokens - 1));
        }
      }

      if (r.usage_source === 'estimated' || r.usage_source === 'missing') {
        let child = c.unreported.get(r.usage_source);
        if (!child) {
          child = usageUnreported.labels({ upstream, model, usage_source: r.usage_source });
          c.unreported.set(r.usage_source, child);
        }
        child.inc();
      }
      if (r.cost_source === 'unpriced') (c.unpriced ??= unpriced.labels({ upstream, model })).inc();

      const input = genAiInputTokens(r);
      if (input !== null) c.genAiInput.observe(input);
      if (r.output_tokens !== null) c.genAiOutput.observe(r.output_tokens);
      // Semconv: error.type is present only when the operation failed (absent label = success).
      const errKey = r.error_type ?? '';
      let dur = c.genAiDuration.get(errKey);
      if (!dur) {
        dur = genAiOperationDuration.labels(
          r.error_type === null ? c.genAi : { ...c.genAi, error_type: r.error_type },
        );
        c.genAiDuration.set(errKey, dur);
      }
      dur.observe(durationS);
    },

    async close() {
      // Nothing to flush: Prometheus pulls. The registry stays readable for a final scrape.
    },

    rateLimit(upstream: string, info: RateLimitInfo) {
      for (const resource of ['requests', 'tokens'] as const) {
        const w = info[resource];
        if (w.limit !== undefined) ratelimitLimit.set({ upstream, resource }, w.limit);
        if (w.remaining !== undefined) ratelimitRemaining.set({ upstream, resource }, w.remaining);
      }
    },

    balance(upstream: string, currency: string, amount: number) {
      upstreamBalance.set({ upstream, currency }, amount);
    },

    billed(upstream: string, currency: string, nanos: bigint) {
      // inc(0) still creates the series, so a configured source shows up before its first charge.
      if (nanos >= 0n) billedTotal.inc({ upstream, currency }, nanosToUnits(nanos));
    },

    reconcileDrift(upstream: string, currency: string, ratio: number | null) {
      // +Inf is kept: billed while nothing was metered (the key is used around tokenmeter).
      if (ratio === null || Number.isNaN(ratio)) driftRatio.remove({ upstream, currency });
      else driftRatio.set({ upstream, currency }, ratio);
    },

    overhead(upstream: string, seconds: number) {
      let series = overheadSeries.get(upstream);
      if (!series) {
        series = proxyOverhead.labels({ upstream });
        overheadSeries.set(upstream, series);
      }
      series.observe(seconds);
    },

    setInflightSource(source) {
      inflightSource = source;
    },

    setBudgetSource(source) {
      budgetSource = source;
    },

    internalError(component: string) {
      internalErrors.inc({ component });
    },
    auditQueueDepth(depth: number) {
      queueDepth = depth;
    },
    auditDropped(count: number) {
      auditDropped.inc(count);
    },
    sseOversize(upstream: string) {
      sseOversize.inc({ upstream });
    },
    requestBodyWait() {
      requestBodyWaits.inc();
    },

    async render() {
      return { contentType: registry.contentType, body: await registry.metrics() };
    },

    fleet: {
      lag: (rows) => fleetShipLag.set(rows),
      shipped: (rows) => fleetShipped.inc(rows),
      failure: () => fleetShipFailures.inc(),
    },

    fleetBudgets: {
      fallback: (budget) => fleetBudgetFallback.inc({ budget }),
      settleFailure: (budget) => fleetBudgetSettleFailures.inc({ budget }),
    },
  };
  return sink;
}
