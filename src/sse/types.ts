/** One Server-Sent Event as framed by the SSE spec. Provider-agnostic: `sse/` knows no provider. */
export interface SseEvent {
  /** `event:` field; undefined when the event had none (the spec's default "message"). */
  event?: string;
  /** All `data:` lines joined with "\n". */
  data: string;
  id?: string;
}

/**
 * What a completed, non-blank line was, as reported to an `SseByteObserver`: a `data:` line, a
 * `:` comment (keep-alive), any other field (`event:`, `id:`, `retry:`, unknown), or a line of an
 * event that went over the size cap (not parsed at all).
 */
export type SseLineKind = 'data' | 'comment' | 'field' | 'oversize';

/**
 * Optional raw-byte view of the parse, for a caller that must forward or drop an event's exact
 * original bytes (the §3.3 usage-chunk stripper). Offsets are into the chunk of the `feed()` call
 * that is running (0 during `end()`); a line's offset is just past its line end. Callbacks run
 * synchronously inside `feed()`/`end()`, so `value` is only valid during the call.
 */
export interface SseByteObserver {
  /** A non-blank line ended at `end`. For `data`, `value[valueStart, valueEnd)` is its value. */
  onLine(kind: SseLineKind, end: number, value: Buffer, valueStart: number, valueEnd: number): void;
  /**
   * A blank line (or the end of the stream) ended the current span at `end`: an event, a block of
   * comments, an oversize event or nothing. Runs after `onEvent`/`onOversize` for that span.
   */
  onEventEnd(end: number): void;
  /**
   * The chunk starts with the LF of a CRLF whose CR ended the previous chunk: byte 0 belongs to
   * the line or span reported last, not to what follows.
   */
  onLineEndContinued(): void;
}
