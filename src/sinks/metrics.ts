/**
 * The Prometheus sink (DESIGN.md §7): one prom-client registry with every tokenmeter metric, fed
 * one request record at a time. Names and label sets come only from ../semconv.ts.
 *
 * Labels are bounded: `upstream` comes from config, `app` is capped (configured apps always kept),
 * `model` is the request model normalised and capped, then `other`. Never a key, user, trace or
 * request id. Unknown is not zero: a null token count or cost adds no sample at all.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
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
import type { HealthCounters, RequestStart, Sink } from './types.js';

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
}

export interface MetricsSink extends Sink, HealthCounters {
  readonly registry: Registry;
  rateLimit(upstream: string, info: RateLimitInfo): void;
  balance(upstream: string, currency: string, amount: number): void;
  budget(name: string, currency: string, limit: number, spent: number): void;
  render(): Promise<{ contentType: string; body: string }>;
}

/** Longest model label kept; longer names are cut (a model name this long is almost surely junk). */
export const MODEL_LABEL_MAX_LENGTH = 64;

// Latency buckets in seconds. LLM requests range from sub-second embeddings to minutes-long
// reasoning streams, so the top buckets go far beyond the usual HTTP defaults.
const DURATION_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600];
const TTFT_BUCKETS = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 60];
const TPOT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1];

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

  const requests = new Counter({
    name: METRIC.requests,
    help: 'Requests proxied, by outcome.',
    labelNames: LABELS.requests,
    registers: reg,
  });
  const tokens = new Counter({
    name: METRIC.tokens,
    help: 'Tokens by type; the types partition the total (input is uncached input).',
    labelNames: LABELS.tokens,
    registers: reg,
  });
  const reasoningTokens = new Counter({
    name: METRIC.reasoningTokens,
    help: 'Reasoning tokens: the part of output tokens that was reasoning (already in type=output).',
    labelNames: LABELS.reasoningTokens,
    registers: reg,
  });
  const cost = new Counter({
    name: METRIC.cost,
    help: 'Cost in currency units (exact per request, summed here as a float); unpriced requests add nothing.',
    labelNames: LABELS.cost,
    registers: reg,
  });
  const upstreamReportedCost = new Counter({
    name: METRIC.upstreamReportedCost,
    help: 'Cost stated by the upstream in its responses, in currency units.',
    labelNames: LABELS.upstreamReportedCost,
    registers: reg,
  });
  const requestDuration = new Histogram({
    name: METRIC.requestDuration,
    help: 'Request duration from request start to the last byte (or abort), in seconds.',
    labelNames: LABELS.requestDuration,
    buckets: DURATION_BUCKETS,
    registers: reg,
  });
  const ttft = new Histogram({
    name: METRIC.timeToFirstToken,
    help: 'Time to the first content byte of a streamed response, in seconds.',
    labelNames: LABELS.timeToFirstToken,
    buckets: TTFT_BUCKETS,
    registers: reg,
  });
  const tpot = new Histogram({
    name: METRIC.timePerOutputToken,
    help: 'Time per output token after the first, for streams with at least 2 output tokens, in seconds.',
    labelNames: LABELS.timePerOutputToken,
    buckets: TPOT_BUCKETS,
    registers: reg,
  });
  const usageUnreported = new Counter({
    name: METRIC.usageUnreported,
    help: 'Requests whose usage was not reported by the upstream (estimated locally, or missing).',
    labelNames: LABELS.usageUnreported,
    registers: reg,
  });
  const unpriced = new Counter({
    name: METRIC.unpricedRequests,
    help: 'Requests with no matching price entry (their cost is unknown, not zero).',
    labelNames: LABELS.unpricedRequests,
    registers: reg,
  });
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
  const budgetLimit = new Gauge({
    name: METRIC.budgetLimit,
    help: 'Configured budget limit for the current period, in currency units.',
    labelNames: LABELS.budgetLimit,
    registers: reg,
  });
  const budgetSpent = new Gauge({
    name: METRIC.budgetSpent,
    help: 'Period-to-date spend in the budget scope, in currency units.',
    labelNames: LABELS.budgetSpent,
    registers: reg,
  });
  const inflight = new Gauge({
    name: METRIC.inflight,
    help: 'Requests in flight.',
    labelNames: LABELS.inflight,
    registers: reg,
  });
  const auditQueueDepth = new Gauge({
    name: METRIC.auditQueueDepth,
    help: 'Records waiting in the audit log queue.',
    labelNames: LABELS.auditQueueDepth,
    registers: reg,
  });
  const auditDropped = new Counter({
    name: METRIC.auditDropped,
    help: 'Records dropped because the audit queue was full.',
    labelNames: LABELS.auditDropped,
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
  const genAiTokenUsage = new Histogram({
    name: METRIC.genAiTokenUsage,
    help: 'OTel GenAI gen_ai.client.token.usage: tokens per request by gen_ai.token.type.',
    labelNames: LABELS.genAiTokenUsage,
    buckets: GEN_AI_TOKEN_BUCKETS,
    registers: reg,
  });
  const genAiOperationDuration = new Histogram({
    name: METRIC.genAiOperationDuration,
    help: 'OTel GenAI gen_ai.client.operation.duration, in seconds.',
    labelNames: LABELS.genAiOperationDuration,
    buckets: GEN_AI_DURATION_BUCKETS,
    registers: reg,
  });
  // Counters/gauges without labels only appear once touched; start them at 0 so dashboards and
  // alerts see the series from the first scrape (0 is a true value here, not an unknown).
  auditQueueDepth.set(0);
  auditDropped.inc(0);

  const models = new BoundedLabel(opts.maxModels);
  // `default` is the app every unattributed request gets (§4.3), so it is always allowed too.
  const apps = new BoundedLabel(opts.maxApps, new Set([...opts.apps, 'default']));
  // Upstream host for server.address, learned from begin(); upstream names come from config, so
  // this map is bounded.
  const upstreamHosts = new Map<string, string>();
  // Requests counted in the inflight gauge, so a write without begin never drives it negative.
  const begun = new Set<string>();

  const sink: MetricsSink = {
    name: 'metrics',
    registry,

    begin(start: RequestStart) {
      if (!upstreamHosts.has(start.upstream)) upstreamHosts.set(start.upstream, start.upstreamUrl.hostname);
      begun.add(start.id);
      inflight.inc({ upstream: start.upstream });
    },

    write(r: RequestRecord) {
      const upstream = r.upstream;
      if (begun.delete(r.id)) inflight.dec({ upstream });
      const model = models.value(normaliseModel(r.request_model));
      const app = apps.value(r.app);
      const stream = String(r.stream);

      requests.inc({
        upstream,
        app,
        model,
        operation: r.operation,
        status_class: statusClass(r),
        error_type: r.error_type ?? NONE,
        stream,
      });

      const partition: Array<[string, number | null]> = [
        ['input', r.input_tokens],
        ['cache_read', r.cache_read_tokens],
        ['cache_write', r.cache_write_tokens],
        ['output', r.output_tokens],
      ];
      for (const [type, count] of partition) {
        if (count !== null) tokens.inc({ upstream, app, model, type }, count);
      }
      if (r.reasoning_tokens !== null) reasoningTokens.inc({ upstream, app, model }, r.reasoning_tokens);

      if (r.cost_nanos !== null && r.currency !== null) {
        cost.inc({ upstream, app, model, currency: r.currency }, nanosToUnits(r.cost_nanos));
      }
      if (r.upstream_reported_cost_nanos !== null && r.upstream_reported_currency !== null) {
        upstreamReportedCost.inc(
          { upstream, app, model, currency: r.upstream_reported_currency },
          nanosToUnits(r.upstream_reported_cost_nanos),
        );
      }

      const durationS = r.duration_ms / 1000;
      requestDuration.observe({ upstream, model, operation: r.operation, stream }, durationS);
      if (r.ttft_ms !== null) {
        ttft.observe({ upstream, model }, r.ttft_ms / 1000);
        if (r.stream && r.output_tokens !== null && r.output_tokens >= 2) {
          tpot.observe({ upstream, model }, (r.duration_ms - r.ttft_ms) / 1000 / (r.output_tokens - 1));
        }
      }

      if (r.usage_source === 'estimated' || r.usage_source === 'missing') {
        usageUnreported.inc({ upstream, model, usage_source: r.usage_source });
      }
      if (r.cost_source === 'unpriced') unpriced.inc({ upstream, model });

      const genAi = {
        gen_ai_operation_name: GEN_AI_OPERATION_NAME[r.operation],
        gen_ai_provider_name: GEN_AI_PROVIDER_NAME[r.operation],
        gen_ai_request_model: model,
        server_address: upstreamHosts.get(upstream) ?? upstream,
      };
      const input = genAiInputTokens(r);
      if (input !== null) genAiTokenUsage.observe({ ...genAi, gen_ai_token_type: 'input' }, input);
      if (r.output_tokens !== null) {
        genAiTokenUsage.observe({ ...genAi, gen_ai_token_type: 'output' }, r.output_tokens);
      }
      // Semconv: error.type is present only when the operation failed (absent label = success).
      genAiOperationDuration.observe(
        r.error_type === null ? genAi : { ...genAi, error_type: r.error_type },
        durationS,
      );
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

    budget(name: string, currency: string, limit: number, spent: number) {
      budgetLimit.set({ budget: name, currency }, limit);
      budgetSpent.set({ budget: name, currency }, spent);
    },

    internalError(component: string) {
      internalErrors.inc({ component });
    },
    auditQueueDepth(depth: number) {
      auditQueueDepth.set(depth);
    },
    auditDropped(count: number) {
      auditDropped.inc(count);
    },
    sseOversize(upstream: string) {
      sseOversize.inc({ upstream });
    },

    async render() {
      return { contentType: registry.contentType, body: await registry.metrics() };
    },
  };
  return sink;
}
