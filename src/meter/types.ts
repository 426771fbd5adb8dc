/**
 * The seam between the proxy (source) and metering (decoders → pricing → record → sinks).
 * The proxy forwards bytes first and hands the meter a copy; nothing here is awaited on the
 * response path, and nothing here may throw into the proxy (the meter catches and counts).
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Operation } from '../record.js';

/** What the proxy learned from the request (see ./inspect.ts). Pure data. */
export interface RequestInfo {
  operation: Operation;
  model?: string;
  /** The body's model name was longer than the cap and was cut (record note). */
  modelTruncated?: boolean;
  stream: boolean;
  /** `user` or `metadata.user_id` from the body. Audit log only. */
  user?: string;
  /** OpenAI chat/completions stream that already asks for usage (`stream_options.include_usage`). */
  asksForUsage: boolean;
  /** Parsed JSON body when within the metering cap; undefined for non-JSON or too-large bodies. */
  body?: unknown;
  /** The body exceeded the metering cap and is streamed through unmetered. */
  tooLargeToMeter: boolean;
}

export interface MeterBeginInput {
  method: string;
  /** Incoming path (after any route prefix is stripped), without query string. */
  path: string;
  /** Incoming headers, lower-cased, including x-tokenmeter-* (the meter reads x-tokenmeter-app). */
  headers: IncomingHttpHeaders;
  upstream: string;
  upstreamUrl: URL;
  /** App from the matched route or upstream config, if any (lower precedence than header/key map). */
  routeApp?: string;
  info: RequestInfo;
  requestBytes: number;
  /** The proxy added stream_options.include_usage (§3.3), so usage is expected even if the client did not ask. */
  injectedUsage: boolean;
  /** When the request's first byte arrived (epoch ms); the record's ts_start. */
  tsStart?: number;
}

/** An answer tokenmeter gives instead of forwarding (budget block); the proxy shapes it per endpoint. */
export interface Rejection {
  status: number;
  /** Error type in each wire format's vocabulary. */
  type: { openai: string; anthropic: string };
  message: string;
  /** Extra response headers (e.g. x-should-retry: false, so SDKs do not retry a budget block). */
  headers: Record<string, string>;
}

/**
 * How an exchange ended. `reachedUpstream`: the whole request had been written to the upstream, so
 * a generation may have started and been billed even though no response head came back.
 */
export type MeterOutcome =
  | { kind: 'complete' }
  | { kind: 'client_abort'; reachedUpstream?: boolean }
  | { kind: 'timeout'; phase: 'connect' | 'idle'; reachedUpstream?: boolean }
  | { kind: 'network'; message: string; reachedUpstream?: boolean }
  /** tokenmeter itself failed handling the request (the client got a 500). */
  | { kind: 'internal'; message: string }
  /**
   * The upstream connection broke after the response head (reset mid-stream), or its head could
   * not be forwarded (e.g. a status below 100: no usable status, `reachedUpstream` set).
   */
  | { kind: 'upstream_reset'; message: string; reachedUpstream?: boolean }
  | { kind: 'rejected' };

export interface RequestMeter {
  /** Headers to add to the upstream request (trace context). */
  readonly upstreamHeaders: Record<string, string>;
  /** Set when a budget blocks the request: send this and call finish({kind:'rejected'}). */
  readonly rejection?: Rejection;
  /**
   * Fleet mode only: resolves when the shared budgets answered (then `rejection` may be set). The
   * proxy must not forward before it resolves. Never rejects. Absent for a single tokenmeter.
   */
  readonly admission?: Promise<void>;
  onResponseHead(status: number, headers: IncomingHttpHeaders): void;
  /**
   * A copy of bytes exactly as received from the upstream (still compressed if they were). After a
   * `101` (WebSocket), the server→client bytes of the session, read as WebSocket messages.
   */
  onResponseChunk(chunk: Buffer): void;
  /** The first response body byte was written to the client (time to first token for streams). */
  onFirstByteToClient(): void;
  /**
   * Exactly once, after the response was flushed. Builds the record on a later turn of the event
   * loop (a minimal fallback record if building throws), hands it to every sink, settles the budget
   * reservation; resolves when that is done. Never rejects.
   */
  finish(outcome: MeterOutcome, extra?: FinishExtra): Promise<void>;
}

export interface FinishExtra {
  /** Time tokenmeter itself added on the request path (tokenmeter_proxy_overhead_seconds). */
  overheadSeconds?: number;
  /**
   * Bytes the client sent over the whole exchange, when known only at its end: a WebSocket
   * session's client→server bytes after the upgrade (the record's `request_bytes`).
   */
  requestBytes?: number;
}

export interface Meter {
  /** Never throws: a failure inside is counted and a minimal meter is returned. */
  begin(input: MeterBeginInput): RequestMeter;
}
