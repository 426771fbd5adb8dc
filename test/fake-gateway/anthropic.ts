/**
 * Anthropic Messages API (`/messages`, `/messages/count_tokens`), as seed 003 and
 * docs.anthropic.com/en/api/messages-streaming describe it: message_start carries input and cache
 * usage, message_delta carries the cumulative usage (input repeated), message_stop ends it.
 */
import type { OutEvent } from './transport.js';
import { finalUsage, type EndpointInput } from './openai-chat.js';
import { promptTokens, replyPieces } from './usage.js';

type JsonObject = Record<string, unknown>;

export const ANTHROPIC_STREAM_ERROR = {
  type: 'error',
  error: { type: 'overloaded_error', message: 'Overloaded' },
};

function stopReason(input: EndpointInput): string {
  return input.scenario.names.has('max-tokens') ? 'max_tokens' : 'end_turn';
}

function messageShell(input: EndpointInput): JsonObject {
  return {
    id: `msg_fake_${input.seq}`,
    type: 'message',
    role: 'assistant',
    model: input.model,
  };
}

export function messagesBody(input: EndpointInput): JsonObject {
  const text = replyPieces('anthropic', input.request, input.scenario.chunks).join('');
  const body: JsonObject = {
    ...messageShell(input),
    content: [{ type: 'text', text }],
    stop_reason: stopReason(input),
    stop_sequence: null,
  };
  const usage = finalUsage(input);
  if (usage !== undefined) body.usage = usage;
  return body;
}

function event(name: string, value: JsonObject): OutEvent {
  return { event: name, data: JSON.stringify({ type: name, ...value }) };
}

export function messagesEvents(input: EndpointInput): OutEvent[] {
  const { scenario } = input;
  const usage = finalUsage(input);
  const start: JsonObject = { ...messageShell(input), content: [], stop_reason: null, stop_sequence: null };
  if (usage !== undefined) {
    // Output so far is 1 token at message_start, as the real API reports it.
    start.usage = { ...usage, output_tokens: 1 };
  }
  const events: OutEvent[] = [
    event('message_start', { message: start }),
    event('content_block_start', { index: 0, content_block: { type: 'text', text: '' } }),
    event('ping', {}),
  ];
  for (const [index, piece] of replyPieces('anthropic', input.request, scenario.chunks).entries()) {
    events.push(event('content_block_delta', { index: 0, delta: { type: 'text_delta', text: piece } }));
    if (index === 0 && scenario.names.has('big-event')) {
      events.push(
        event('content_block_delta', {
          index: 0,
          delta: { type: 'text_delta', text: '' },
          x_fake_padding: 'x'.repeat(scenario.bigEventBytes),
        }),
      );
    }
    if (index === 0 && scenario.names.has('error-in-stream')) {
      events.push({ event: 'error', data: JSON.stringify(ANTHROPIC_STREAM_ERROR) });
      return events;
    }
  }
  events.push(event('content_block_stop', { index: 0 }));
  if (usage !== undefined && scenario.names.has('server-tools')) {
    // Running totals after each server tool call: input repeated, output so far (cumulative).
    for (const [step, share] of [1 / 3, 2 / 3].entries()) {
      events.push(
        event('message_delta', {
          delta: { stop_reason: null, stop_sequence: null },
          usage: {
            input_tokens: usage.input_tokens,
            cache_creation_input_tokens: usage.cache_creation_input_tokens,
            cache_read_input_tokens: usage.cache_read_input_tokens,
            output_tokens: Math.floor(Number(usage.output_tokens) * share),
            server_tool_use: { web_search_requests: step + 1 },
          },
        }),
      );
    }
  }
  const delta: JsonObject = { delta: { stop_reason: stopReason(input), stop_sequence: null } };
  if (usage !== undefined) {
    // Cumulative: input and cache figures repeated, output final.
    delta.usage = {
      input_tokens: usage.input_tokens,
      cache_creation_input_tokens: usage.cache_creation_input_tokens,
      cache_read_input_tokens: usage.cache_read_input_tokens,
      output_tokens: usage.output_tokens,
    };
  }
  events.push(event('message_delta', delta));
  events.push(event('message_stop', {}));
  return events;
}

export function countTokensBody(input: EndpointInput): JsonObject {
  return { input_tokens: promptTokens('anthropic', input.request) };
}
