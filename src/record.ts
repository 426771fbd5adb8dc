/**
 * The request record (DESIGN.md §4.5): built exactly once per request, after the last byte or the
 * abort, and handed to every sink. Field names are the audit-log column names (snake_case) so the
 * record, the SQLite row, the JSON report and the docs all say the same thing.
 *
 * Unknown is not zero: every usage and cost field is `number | null`, where null means "not
 * reported / not known". Nothing downstream may turn a null into 0.
 */

export const OPERATIONS = [
  'chat',
  'text_completion',
  'responses',
  'messages',
  'embeddings',
  'image_generation',
  /** One OpenAI Realtime WebSocket session (`GET …/realtime` upgraded); docs/proxy.md. */
  'realtime',
  'other',
] as const;
export type Operation = (typeof OPERATIONS)[number];

export const USAGE_SOURCES = ['reported', 'estimated', 'none', 'missing'] as const;
export type UsageSource = (typeof USAGE_SOURCES)[number];

export const ERROR_TYPES = [
  'auth',
  'insufficient_quota',
  'rate_limited',
  'bad_request',
  'model_not_found',
  'upstream_error',
  'timeout',
  'client_abort',
  'stream_error',
  'network',
  /** tokenmeter itself refused the request: a `block` budget is used up (§9); 429 on the wire. */
  'budget_exceeded',
  /** tokenmeter failed handling the request itself (the client got a 500 from tokenmeter). */
  'internal_error',
] as const;
export type ErrorType = (typeof ERROR_TYPES)[number];

export const COST_SOURCES = ['computed', 'upstream', 'unpriced'] as const;
export type CostSource = (typeof COST_SOURCES)[number];

/**
 * How the price entry was found for the request's model (docs/pricing.md "Matching"): its exact
 * name, one of its `aliases:`, the name normalized (case, one `vendor/` prefix), a dated snapshot of
 * it (trailing date removed), or a glob.
 */
export const PRICE_MATCH_KINDS = ['exact', 'alias', 'normalized', 'snapshot', 'glob'] as const;
export type PriceMatchKind = (typeof PRICE_MATCH_KINDS)[number];

/**
 * Token usage as a decoder reports it. Every field is optional: absent means unknown.
 * `input`, `cacheRead`, `cacheWrite` and `output` partition the total (no overlaps):
 * - `input` is uncached input only (OpenAI prompt_tokens − cached_tokens; Anthropic input_tokens).
 * - `cacheWrite` counts all cache writes; `cacheWrite1h` is the 1h-TTL part of it.
 * - `reasoning` is the part of `output` that was reasoning (never added to the total).
 * - `audio` is the part of input + output that was audio (Realtime sessions; never added to the
 *   total, not a record column): audio is priced apart from text, so pricing needs it.
 */
export interface Usage {
  input?: number;
  cacheRead?: number;
  cacheWrite?: number;
  cacheWrite1h?: number;
  output?: number;
  reasoning?: number;
  audio?: number;
  images?: number;
  requests?: number;
}

export interface RequestRecord {
  id: string; // ULID
  ts_start: number; // epoch ms
  ts_end: number; // epoch ms
  duration_ms: number;
  ttft_ms: number | null; // first content byte of a stream; null for non-streamed
  upstream: string;
  method: string;
  path: string; // incoming path without query string
  operation: Operation;
  request_model: string | null;
  response_model: string | null;
  app: string;
  key_id: string | null; // salted fingerprint, never the key
  user: string | null; // audit log only, never a metric label
  stream: boolean;
  http_status: number | null; // null when no response head was received
  error_type: ErrorType | null;
  error_message: string | null; // upstream's, truncated
  finish_reason: string | null; // normalised to OpenAI values
  input_tokens: number | null;
  cache_read_tokens: number | null;
  cache_write_tokens: number | null;
  cache_write_1h_tokens: number | null;
  output_tokens: number | null;
  reasoning_tokens: number | null;
  audio_tokens: number | null; // the audio part of input + output (Realtime); null = not reported
  images: number | null;
  usage_source: UsageSource;
  cost_nanos: number | null; // integer, 1e-9 of `currency`; null = unknown (never 0 for unknown)
  currency: string | null;
  cost_source: CostSource | null; // null when the operation has no cost at all (usage_source=none)
  price_id: string | null;
  price_match: PriceMatchKind | null; // how price_id's entry matched request_model; null when none did
  multiplier: string | null; // exact decimal string, e.g. "0.8"
  upstream_reported_cost_nanos: number | null;
  upstream_reported_currency: string | null;
  /**
   * Our table's cost when `cost_nanos` is the gateway's (`cost_source = 'upstream'`, with
   * `trust_reported_cost`), so neither figure is ever lost (§5.3, docs/reconcile.md); null or
   * absent otherwise (then `cost_nanos` is ours). Optional: records built before issue 13 lack it.
   */
  computed_cost_nanos?: number | null;
  computed_currency?: string | null;
  trace_id: string | null;
  request_bytes: number;
  response_bytes: number;
  upstream_request_id: string | null;
  /** Why usage or cost is not what it should be (e.g. "request_too_large_to_meter", "unpriced model"). */
  note: string | null;
}
