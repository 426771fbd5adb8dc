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
import {
  errorFrom,
  isPlaceholder,
  MAX_IMAGES_PER_REQUEST,
  obj,
  readCount,
  str,
  UsageFields,
  type JsonObject,
  ResponseFacts,
} from './shared.js';
import type { DecodedResponse, UsageDecoder } from './types.js';

export class ImagesDecoder implements UsageDecoder {
  private readonly facts = new ResponseFacts();
  readonly operation = 'image_generation' as const;
  private images: number | undefined;
  private tokens: Usage | undefined;
  /**
   * A token report was not plausible. Streamed reports are per image and added, so the sum is
   * unknown from then on (a partial sum would under-state); the image count stays known.
   */
  private tokensRejected = false;
  /** More images than any endpoint returns: the count is not a number we can bill. */
  private imagesImplausible = false;

  onEvent(event: SseEvent): void {
    const data = event.data.trim();
    if (data === '' || data === '[DONE]') return;
    const payload = obj(this.facts.diagnostics.readEventData(data, event.event === 'error'));
    if (!payload) return;
    const type = str(payload.type) ?? event.event;
    if (type === 'image_generation.completed') {
      // One per completed image event.
      this.setImages(this.images === undefined ? 1 : this.images + 1);
      this.readUsage(payload);
    } else if (type === 'error' || (payload.error !== undefined && payload.error !== null)) {
      this.facts.streamError = errorFrom(payload.error ?? payload) ?? { message: 'error' };
    }
  }

  onBody(body: string): void {
    const parsed = this.facts.diagnostics.readBody(body, (e) => this.onEvent(e));
    if (!parsed) return;
    // A later body without an error (or with `"error": {}`) must not erase one already seen.
    this.facts.streamError = errorFrom(parsed.error) ?? this.facts.streamError;
    this.facts.responseModel = str(parsed.model) ?? this.facts.responseModel;
    this.facts.upstreamRequestId ??= str(parsed.request_id) ?? str(parsed.id);
    if (Array.isArray(parsed.data)) this.setImages(parsed.data.length);
    this.readUsage(parsed);
  }

  result(): DecodedResponse {
    const images = this.imagesImplausible ? undefined : this.images;
    const tokens = this.tokensRejected ? undefined : this.tokens;
    // Images without token usage report just the count (the billable unit); no token is claimed.
    const usage: Usage | undefined =
      images === undefined && tokens === undefined ? undefined : { ...tokens, images };
    return this.facts.result(usage, usage !== undefined);
  }

  private setImages(n: number): void {
    this.images = n;
    if (readCount(n, MAX_IMAGES_PER_REQUEST) === null && !this.imagesImplausible) {
      this.imagesImplausible = true;
      this.facts.diagnostics.note('usage_implausible:images');
    }
  }

  private readUsage(payload: JsonObject): void {
    const raw = obj(payload.usage);
    if (!raw) return;
    const fields = new UsageFields(raw);
    const usage = partitionResponsesUsage(fields);
    if (!this.facts.diagnostics.accept(fields)) {
      this.tokensRejected = true;
      return;
    }
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
