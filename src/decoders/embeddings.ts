/**
 * Embeddings (`{base}/embeddings`; seed 002 "Embeddings"). Usage is body `usage.prompt_tokens`
 * (OpenAI); DashScope-style relays state only `usage.total_tokens`, which for embeddings is the
 * same figure. Embeddings produce no output tokens: `output` is left absent (not invented as 0),
 * and pricing charges input only.
 */
import type { Usage } from '../record.js';
import type { SseEvent } from '../sse/types.js';
import { errorFrom, obj, str, UsageFields, type JsonObject, ResponseFacts } from './shared.js';
import type { DecodedResponse, UsageDecoder } from './types.js';

export class EmbeddingsDecoder implements UsageDecoder {
  private readonly facts = new ResponseFacts();
  readonly operation = 'embeddings' as const;
  private usage: Usage | undefined;

  onEvent(event: SseEvent): void {
    // Embeddings are not streamed; a relay that frames the body as one SSE event is still read.
    const data = event.data.trim();
    if (data === '' || data === '[DONE]') return;
    const payload = obj(this.facts.diagnostics.readEventData(data, event.event === 'error'));
    if (payload) this.onPayload(payload);
  }

  onBody(body: string): void {
    const parsed = this.facts.diagnostics.readBody(body, (e) => this.onEvent(e));
    if (parsed) this.onPayload(parsed);
  }

  result(): DecodedResponse {
    return this.facts.result(this.usage, this.usage !== undefined);
  }

  private onPayload(parsed: JsonObject): void {
    // A later body without an error (or with `"error": {}`) must not erase one already seen.
    this.facts.streamError = errorFrom(parsed.error) ?? this.facts.streamError;
    this.facts.responseModel = str(parsed.model) ?? this.facts.responseModel;
    this.facts.upstreamRequestId ??= str(parsed.request_id) ?? str(parsed.id);
    const raw = obj(parsed.usage);
    if (!raw) return;
    const fields = new UsageFields(raw);
    // All three are read (not `??`-chained) so a broken figure in any of them is seen.
    const prompt = fields.get('prompt_tokens');
    const inputTokens = fields.get('input_tokens');
    const total = fields.get('total_tokens');
    if (!this.facts.diagnostics.accept(fields)) {
      this.usage = undefined; // the last report decides, as in the other decoders
      return;
    }
    const input = prompt ?? inputTokens ?? total;
    if (input !== undefined && input > 0) this.usage = { input };
  }
}
