/**
 * Image generation (`{base}/images/generations`; seed 004 "Images Generations"). The billable unit is
 * the number of images: the length of body `data[]`. gpt-image-style models also state token
 * `usage` ({input_tokens, output_tokens, input_tokens_details}), read like the Responses API.
 * Streamed image generation (`stream: true`, platform.openai.com/docs/api-reference/images-streaming)
 * ends each image with an `image_generation.completed` event carrying that image's usage.
 */
import type { Usage } from '../record.js';
import type { SseEvent } from '../sse/types.js';
import { partitionResponsesUsage } from './openai-responses.js';
import { buildResult, errorFrom, isPlaceholder, obj, parseJson, str, type JsonObject } from './shared.js';
import type { DecodedResponse, UsageDecoder } from './types.js';

export class ImagesDecoder implements UsageDecoder {
  readonly operation = 'image_generation' as const;
  private images: number | undefined;
  private tokens: Usage | undefined;
  private responseModel: string | undefined;
  private streamError: DecodedResponse['streamError'];
  private upstreamRequestId: string | undefined;

  onEvent(event: SseEvent): void {
    const payload = obj(parseJson(event.data));
    if (!payload) return;
    const type = str(payload.type) ?? event.event;
    if (type === 'image_generation.completed') {
      this.images = this.images === undefined ? 1 : this.images + 1; // one per completed image event
      this.readUsage(payload);
    } else if (type === 'error' || (payload.error !== undefined && payload.error !== null)) {
      this.streamError = errorFrom(payload.error ?? payload) ?? { message: 'error' };
    }
  }

  onBody(body: string): void {
    const parsed = obj(parseJson(body));
    if (!parsed) return;
    // A later body without an error (or with `"error": {}`) must not erase one already seen.
    this.streamError = errorFrom(parsed.error) ?? this.streamError;
    this.responseModel = str(parsed.model) ?? this.responseModel;
    this.upstreamRequestId ??= str(parsed.request_id) ?? str(parsed.id);
    if (Array.isArray(parsed.data)) this.images = parsed.data.length;
    this.readUsage(parsed);
  }

  result(): DecodedResponse {
    const usage: Usage | undefined =
      this.images === undefined && this.tokens === undefined
        ? undefined
        : { ...this.tokens, images: this.images };
    return buildResult({
      usage,
      usageReported: usage !== undefined,
      responseModel: this.responseModel,
      finishReason: undefined,
      streamError: this.streamError,
      outputText: '',
      upstreamCost: undefined,
      upstreamRequestId: this.upstreamRequestId,
    });
  }

  private readUsage(payload: JsonObject): void {
    const raw = obj(payload.usage);
    if (!raw) return;
    const usage = partitionResponsesUsage(raw);
    if (isPlaceholder(usage)) return;
    if (this.tokens === undefined) {
      this.tokens = usage;
      return;
    }
    // Streamed: one report per image, each for that image alone. This is the one place where
    // reports are added — they describe different images, not repeats of one figure.
    const sum: Usage = {};
    for (const key of ['input', 'cacheRead', 'output', 'reasoning'] as const) {
      const a = this.tokens[key];
      const b = usage[key];
      sum[key] = a !== undefined && b !== undefined ? a + b : undefined;
    }
    this.tokens = sum;
  }
}
