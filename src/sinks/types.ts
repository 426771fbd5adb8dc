import type { Operation, RequestRecord } from '../record.js';

/** What is known when a request starts (before the upstream is called). */
export interface RequestStart {
  id: string;
  ts_start: number;
  method: string;
  path: string;
  upstream: string;
  upstreamUrl: URL;
  operation: Operation;
  request_model: string | null;
  app: string;
  stream: boolean;
  /** Incoming request headers (lower-cased names), for trace context extraction. Never logged. */
  headers: Readonly<Record<string, string | string[] | undefined>>;
}

/**
 * A sink's per-request handle, returned by `begin` and owned by the request's exchange: the
 * finished record comes back through `end`, so no sink keeps its own table of open requests.
 */
export interface SinkRequest {
  /** Headers to add to the upstream request (W3C trace context). */
  upstreamHeaders?: Record<string, string>;
  traceId?: string;
  /** Called exactly once with the finished record, instead of `Sink.write`. */
  end(record: RequestRecord): void;
}

/**
 * A destination for request records (metrics, traces, SQLite, and in a fleet more of them).
 * Sinks are isolated: the pipeline catches anything a sink throws, counts it in
 * `tokenmeter_internal_errors_total{component=<name>}` and logs it once; no sink may assume it is
 * the only one.
 */
export interface Sink {
  readonly name: string;
  /** Optional: called when a request starts, before the upstream request is sent. Must be fast. */
  begin?(start: RequestStart): SinkRequest | void;
  /**
   * Called exactly once per request with the finished record, for requests this sink did not
   * `begin` (or whose `begin` failed). Must not block.
   */
  write(record: RequestRecord): void;
  /** Flush and release resources (graceful shutdown). */
  close(): Promise<void>;
}

/**
 * Counters for tokenmeter's own health, implemented by the metrics sink (src/sinks/metrics.ts)
 * and handed to every part that can fail or drop. A no-op implementation is used in unit tests.
 */
export interface HealthCounters {
  /** Something failed inside tokenmeter (a sink, a decoder, pricing, the DB); traffic was unaffected. */
  internalError(component: string): void;
  auditQueueDepth(depth: number): void;
  auditDropped(count: number): void;
  /** An SSE event larger than the cap was skipped for metering (the bytes still reached the client). */
  sseOversize(upstream: string): void;
  /** A request body waited, unread, for room under limits.max_buffered_bodies. */
  requestBodyWait(): void;
}

export const NOOP_HEALTH: HealthCounters = {
  internalError: () => {},
  auditQueueDepth: () => {},
  auditDropped: () => {},
  sseOversize: () => {},
  requestBodyWait: () => {},
};
