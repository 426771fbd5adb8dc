/**
 * Picks the decoder for a request's wire API (DESIGN.md §4.1). One decoder object per request.
 */
import type { Operation } from '../record.js';
import type { SseEvent } from '../sse/types.js';
import { AnthropicMessagesDecoder } from './anthropic-messages.js';
import { EmbeddingsDecoder } from './embeddings.js';
import { ImagesDecoder } from './images.js';
import { OpenAiChatDecoder } from './openai-chat.js';
import { OpenAiRealtimeDecoder } from './openai-realtime.js';
import { OpenAiResponsesDecoder } from './openai-responses.js';
import type { DecodedResponse, DecoderRequestInfo, UsageDecoder } from './types.js';

/** For operations without token usage (`other`): reports nothing, so the record says usage_source=none. */
export class NoUsageDecoder implements UsageDecoder {
  constructor(readonly operation: Operation = 'other') {}
  onEvent(_event: SseEvent): void {}
  onBody(_body: string): void {}
  result(): DecodedResponse {
    return { usage: {}, usageReported: false, outputText: '' };
  }
}

export function createDecoder(info: DecoderRequestInfo): UsageDecoder {
  switch (info.operation) {
    case 'chat':
    case 'text_completion':
      return new OpenAiChatDecoder(info.operation);
    case 'responses':
      return new OpenAiResponsesDecoder();
    case 'messages':
      return new AnthropicMessagesDecoder();
    case 'embeddings':
      return new EmbeddingsDecoder();
    case 'image_generation':
      return new ImagesDecoder();
    case 'realtime':
      return new OpenAiRealtimeDecoder();
    case 'other':
      return new NoUsageDecoder();
  }
}

export type { DecodedResponse, DecoderRequestInfo, UsageDecoder } from './types.js';
