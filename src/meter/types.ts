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
}

/** Endpoint-shaped error the proxy must send instead of forwarding (budget block). */
export interface Rejection {
  status: number;
  headers: Record<string, string>;
  body: string;
}

export type MeterOutcome =
  | { kind: 'complete' }
  | { kind: 'client_abort' }
  | { kind: 'timeout'; phase: 'connect' | 'idle' }
  | { kind: 'network'; message: string }
  /** The upstream connection broke after the response head (reset mid-stream). */
  | { kind: 'upstream_reset'; message: string }
  | { kind: 'rejected' };

export interface RequestMeter {
  /** Headers to add to the upstream request (trace context). */
  readonly upstreamHeaders: Record<string, string>;
  /** Set when a budget blocks the request: send this and call finish({kind:'rejected'}). */
  readonly rejection?: Rejection;
  onResponseHead(status: number, headers: IncomingHttpHeaders): void;
  /** A copy of bytes exactly as received from the upstream (still compressed if they were). */
  onResponseChunk(chunk: Buffer): void;
  /** The first response body byte was written to the client (time to first token for streams). */
  onFirstByteToClient(): void;
  /** Exactly once. Builds the record and hands it to the sinks (asynchronously, off the response path). */
  finish(outcome: MeterOutcome): void;
}

export interface Meter {
  begin(input: MeterBeginInput): RequestMeter;
  /** Requests begun and not yet finished. */
  inflight(): number;
}
