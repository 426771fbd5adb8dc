/**
 * Every metric name, label name and span attribute name tokenmeter exports, in one place
 * (DESIGN.md §7, §8). Dashboards and alert rules depend on these strings: changing one is a
 * breaking change, and test/semconv.test.ts pins them.
 */
import type { RequestRecord } from './record.js';

export const METRIC = {
  requests: 'tokenmeter_requests_total',
  tokens: 'tokenmeter_tokens_total',
  reasoningTokens: 'tokenmeter_reasoning_tokens_total',
  cost: 'tokenmeter_cost_total',
  upstreamReportedCost: 'tokenmeter_upstream_reported_cost_total',
  requestDuration: 'tokenmeter_request_duration_seconds',
  timeToFirstToken: 'tokenmeter_time_to_first_token_seconds',
  timePerOutputToken: 'tokenmeter_time_per_output_token_seconds',
  usageUnreported: 'tokenmeter_usage_unreported_total',
  unpricedRequests: 'tokenmeter_unpriced_requests_total',
  ratelimitRemaining: 'tokenmeter_ratelimit_remaining',
  ratelimitLimit: 'tokenmeter_ratelimit_limit',
  upstreamBalance: 'tokenmeter_upstream_balance',
  billed: 'tokenmeter_billed_total',
  reconcileDriftRatio: 'tokenmeter_reconcile_drift_ratio',
  budgetLimit: 'tokenmeter_budget_limit',
  budgetSpent: 'tokenmeter_budget_spent',
  inflight: 'tokenmeter_inflight_requests',
  auditQueueDepth: 'tokenmeter_audit_queue_depth',
  auditDropped: 'tokenmeter_audit_dropped_total',
  // Fleet audit shipping (docs/fleet.md): SQLite rows not yet in Postgres, shipped, failed batches.
  fleetShipLag: 'tokenmeter_fleet_ship_lag_rows',
  fleetShipped: 'tokenmeter_fleet_shipped_rows_total',
  fleetShipFailures: 'tokenmeter_fleet_ship_failures_total',
  // Shared budgets (docs/fleet.md, Shared budgets): gate decisions taken from the host's own view
  // because the fleet ledger was unreachable, and settlements that could not be written.
  fleetBudgetFallback: 'tokenmeter_fleet_budget_fallback_total',
  fleetBudgetSettleFailures: 'tokenmeter_fleet_budget_settle_failures_total',
  internalErrors: 'tokenmeter_internal_errors_total',
  sseOversizeEvents: 'tokenmeter_sse_oversize_events_total',
  // Request bodies that waited for room under limits.max_buffered_bodies (docs/proxy.md).
  requestBodyWaits: 'tokenmeter_request_body_waits_total',
  proxyOverhead: 'tokenmeter_proxy_overhead_seconds',
  genAiTokenUsage: 'gen_ai_client_token_usage',
  genAiOperationDuration: 'gen_ai_client_operation_duration_seconds',
} as const;

/** Label sets, exactly as exported. All values are bounded (§7): never ids, users or keys. */
export const LABELS = {
  requests: ['upstream', 'app', 'model', 'operation', 'status_class', 'error_type', 'stream'],
  tokens: ['upstream', 'app', 'model', 'type'],
  reasoningTokens: ['upstream', 'app', 'model'],
  cost: ['upstream', 'app', 'model', 'currency'],
  upstreamReportedCost: ['upstream', 'app', 'model', 'currency'],
  requestDuration: ['upstream', 'model', 'operation', 'stream'],
  timeToFirstToken: ['upstream', 'model'],
  timePerOutputToken: ['upstream', 'model'],
  usageUnreported: ['upstream', 'model', 'usage_source'],
  unpricedRequests: ['upstream', 'model'],
  ratelimitRemaining: ['upstream', 'resource'],
  ratelimitLimit: ['upstream', 'resource'],
  upstreamBalance: ['upstream', 'currency'],
  // Billed vs metered (docs/reconcile.md): per upstream only; key fingerprints are never labels.
  billed: ['upstream', 'currency'],
  reconcileDriftRatio: ['upstream', 'currency'],
  budgetLimit: ['budget', 'currency'],
  budgetSpent: ['budget', 'currency'],
  inflight: ['upstream'],
  auditQueueDepth: [],
  auditDropped: [],
  fleetShipLag: [],
  fleetShipped: [],
  fleetShipFailures: [],
  // Budget names are bounded by config, so they are safe labels.
  fleetBudgetFallback: ['budget'],
  fleetBudgetSettleFailures: ['budget'],
  internalErrors: ['component'],
  sseOversizeEvents: ['upstream'],
  requestBodyWaits: [],
  proxyOverhead: ['upstream'],
  // OTel GenAI semconv metric attributes, with dots replaced by underscores for Prometheus.
  genAiTokenUsage: [
    'gen_ai_operation_name',
    'gen_ai_provider_name',
    'gen_ai_request_model',
    'gen_ai_token_type',
    'server_address',
  ],
  genAiOperationDuration: [
    'gen_ai_operation_name',
    'gen_ai_provider_name',
    'gen_ai_request_model',
    'error_type',
    'server_address',
  ],
} as const satisfies Record<keyof typeof METRIC, readonly string[]>;

/** Values of the `type` label of tokenmeter_tokens_total: a partition of the total. */
export const TOKEN_TYPES = ['input', 'cache_read', 'cache_write', 'output'] as const;

/** Values of `status_class` on tokenmeter_requests_total. */
export const STATUS_CLASSES = ['2xx', '3xx', '4xx', '5xx', 'abort', 'network'] as const;

/** Label value used when a bounded label overflows its cap, or the value is unknown. */
export const OTHER = 'other';
export const UNKNOWN = 'unknown';
export const NONE = 'none';

/** OTel GenAI semconv bucket boundaries (gen_ai.client.token.usage / operation.duration). */
export const GEN_AI_TOKEN_BUCKETS = [
  1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
];
export const GEN_AI_DURATION_BUCKETS = [
  0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/** Span attribute names (OTel GenAI semantic conventions + ours). */
export const ATTR = {
  genAiOperationName: 'gen_ai.operation.name',
  genAiProviderName: 'gen_ai.provider.name',
  genAiRequestModel: 'gen_ai.request.model',
  genAiResponseModel: 'gen_ai.response.model',
  genAiUsageInputTokens: 'gen_ai.usage.input_tokens',
  genAiUsageOutputTokens: 'gen_ai.usage.output_tokens',
  genAiResponseFinishReasons: 'gen_ai.response.finish_reasons',
  genAiResponseId: 'gen_ai.response.id',
  errorType: 'error.type',
  serverAddress: 'server.address',
  serverPort: 'server.port',
  httpResponseStatusCode: 'http.response.status_code',
  tokenmeterCost: 'tokenmeter.cost',
  tokenmeterCurrency: 'tokenmeter.currency',
  tokenmeterUsageSource: 'tokenmeter.usage_source',
  tokenmeterApp: 'tokenmeter.app',
  tokenmeterUpstream: 'tokenmeter.upstream',
  tokenmeterRecordId: 'tokenmeter.record_id',
  tokenmeterCacheReadTokens: 'tokenmeter.usage.cache_read_tokens',
  tokenmeterCacheWriteTokens: 'tokenmeter.usage.cache_write_tokens',
  genAiTokenType: 'gen_ai.token.type',
  serviceName: 'service.name',
} as const;

/**
 * OTLP metric instruments (docs/opentelemetry.md), exported only when OTEL_METRICS_EXPORTER is set:
 * the OTel GenAI client metrics, plus spend. Attributes are bounded like the Prometheus labels.
 */
export const OTEL_METRIC = {
  tokenUsage: 'gen_ai.client.token.usage',
  operationDuration: 'gen_ai.client.operation.duration',
  /** Spend in units of `tokenmeter.currency` (a double; the audit log holds the exact nanos). */
  cost: 'tokenmeter.cost',
} as const;

/** Instrumentation scope of our spans, instruments and log records. */
export const OTEL_SCOPE = 'tokenmeter';

/** `event_name` of the one OTLP log record per request record. */
export const OTEL_LOG_EVENT = 'tokenmeter.request';

/** gen_ai.operation.name values per our operation (OTel GenAI well-known values). */
export const GEN_AI_OPERATION_NAME = {
  chat: 'chat',
  text_completion: 'text_completion',
  responses: 'chat',
  messages: 'chat',
  embeddings: 'embeddings',
  image_generation: 'generate_content',
  // No well-known value fits a session of many responses; `chat` would mix minutes-long sessions
  // into chat call durations (gen_ai.client.operation.duration). Custom values are allowed.
  realtime: 'realtime',
  other: 'other',
} as const;

/**
 * gen_ai.provider.name per wire API. A gateway relays many vendors, so the only thing we know for
 * sure is which API shape was spoken: the Anthropic Messages API → `anthropic`, everything else
 * (OpenAI-compatible chat/completions/responses/embeddings/images) → `openai`.
 */
export const GEN_AI_PROVIDER_NAME = {
  chat: 'openai',
  text_completion: 'openai',
  responses: 'openai',
  messages: 'anthropic',
  embeddings: 'openai',
  image_generation: 'openai',
  realtime: 'openai',
  other: 'openai',
} as const;

/** gen_ai.token.type values (OTel GenAI semconv). */
export const GEN_AI_TOKEN_TYPES = ['input', 'output'] as const;

/**
 * GenAI semconv input tokens (gen_ai.usage.input_tokens, gen_ai.token.type=input) include cached
 * input, unlike our `input` partition. Known when the uncached input is known; cache parts are
 * added when reported (a null cache count was not reported, so it adds nothing rather than a 0).
 * Shared by the metrics and traces sinks so both report the same figure.
 */
export function genAiInputTokens(
  r: Pick<RequestRecord, 'input_tokens' | 'cache_read_tokens' | 'cache_write_tokens'>,
): number | null {
  if (r.input_tokens === null) return null;
  const parts = [r.input_tokens, r.cache_read_tokens, r.cache_write_tokens];
  return parts.filter((n): n is number => n !== null).reduce((sum, n) => sum + n);
}
