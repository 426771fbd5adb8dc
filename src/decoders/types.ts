import type { Operation, Usage } from '../record.js';
import type { SseEvent } from '../sse/types.js';

/** What a decoder learned from one response. Pure data: no I/O happened to produce it. */
export interface DecodedResponse {
  /** Usage as reported by the upstream (fields absent = not reported). */
  usage: Usage;
  /** True when the upstream reported a usage object that we accepted as the final figure. */
  usageReported: boolean;
  responseModel?: string;
  /** Normalised to OpenAI values (stop, length, tool_calls, content_filter, ...). */
  finishReason?: string;
  /** An error seen inside a 2xx body or stream (`data: {"error":…}`, MiniMax base_resp). */
  streamError?: { message: string; code?: string };
  /** The generated text seen so far, for local token estimation when usage is missing. */
  outputText: string;
  /** Characters of generated text beyond the kept cap (memory bound); estimation extrapolates them. */
  outputTextDroppedChars?: number;
  /** A cost the upstream stated in the body, in its own currency units, as a decimal string. */
  upstreamCost?: { amount: string; currency?: string };
  upstreamRequestId?: string;
  /**
   * A 2xx body that is not what the endpoint speaks (HTML, plain text, truncated JSON): what was
   * wrong, e.g. "non-JSON body (text/html)". Usage then stays unknown, never 0.
   */
  bodyMalformed?: string;
  /** Why a reported figure was not accepted (e.g. "usage_implausible:output_tokens"); become record notes. */
  notes?: string[];
}

/**
 * One per request. Fed either parsed SSE events (streamed responses) or the whole decoded body
 * (non-streamed). Never throws for malformed input: it records what it could not understand.
 */
export interface UsageDecoder {
  readonly operation: Operation;
  onEvent(event: SseEvent): void;
  onBody(body: string): void;
  result(): DecodedResponse;
}

/** What a decoder may know about the request (parsed once by the proxy, capped). */
export interface DecoderRequestInfo {
  operation: Operation;
  model?: string;
  stream: boolean;
  /** The parsed JSON request body, if it was JSON and within the metering cap. */
  body?: unknown;
}

/** Rate-limit state parsed from response headers (x-ratelimit-*, retry-after), §4.4. */
export interface RateLimitWindow {
  limit?: number;
  remaining?: number;
  /** Milliseconds until the window resets, when stated. */
  resetMs?: number;
}

export interface RateLimitInfo {
  requests: RateLimitWindow;
  tokens: RateLimitWindow;
  /** From `retry-after` (seconds or HTTP date), in milliseconds. */
  retryAfterMs?: number;
}
