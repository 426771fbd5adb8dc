/**
 * Embeddings (`{base}/embeddings`; seed 002 "Embeddings"). Usage is body `usage.prompt_tokens`
 * (OpenAI); DashScope-style relays state only `usage.total_tokens`, which for embeddings is the
 * same figure. Embeddings produce no output tokens: `output` is left absent (not invented as 0),
 * and pricing charges input only.
 */
import type { Usage } from '../record.js';
import type { SseEvent } from '../sse/types.js';
import { buildResult, count, errorFrom, obj, parseJson, str } from './shared.js';
import type { DecodedResponse, UsageDecoder } from './types.js';

export class EmbeddingsDecoder implements UsageDecoder {
  readonly operation = 'embeddings' as const;
  private usage: Usage | undefined;
  private responseModel: string | undefined;
  private streamError: DecodedResponse['streamError'];
  private upstreamRequestId: string | undefined;

  onEvent(event: SseEvent): void {
    // Embeddings are not streamed; a relay that frames the body as one SSE event is still read.
    this.onBody(event.data);
  }

  onBody(body: string): void {
    const parsed = obj(parseJson(body));
    if (!parsed) return;
    // A later body without an error (or with `"error": {}`) must not erase one already seen.
    this.streamError = errorFrom(parsed.error) ?? this.streamError;
    this.responseModel = str(parsed.model) ?? this.responseModel;
    this.upstreamRequestId ??= str(parsed.request_id) ?? str(parsed.id);
    const raw = obj(parsed.usage);
    if (!raw) return;
    const input = count(raw.prompt_tokens) ?? count(raw.input_tokens) ?? count(raw.total_tokens);
    if (input !== undefined && input > 0) this.usage = { input };
  }

  result(): DecodedResponse {
    return buildResult({
      usage: this.usage,
      usageReported: this.usage !== undefined,
      responseModel: this.responseModel,
      finishReason: undefined,
      streamError: this.streamError,
      outputText: '',
      upstreamCost: undefined,
      upstreamRequestId: this.upstreamRequestId,
    });
  }
}
