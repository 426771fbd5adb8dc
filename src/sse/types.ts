/** One Server-Sent Event as framed by the SSE spec. Provider-agnostic: `sse/` knows no provider. */
export interface SseEvent {
  /** `event:` field; undefined when the event had none (the spec's default "message"). */
  event?: string;
  /** All `data:` lines joined with "\n". */
  data: string;
  id?: string;
}
