/**
 * OpenAI Responses API (`/responses`, seed 003 "Codex"): response.created … response.completed,
 * usage with input_tokens_details.cached_tokens and output_tokens_details.reasoning_tokens.
 */
import type { OutEvent } from './transport.js';
import { CREATED, finalUsage, type EndpointInput } from './openai-chat.js';
import { replyPieces } from './usage.js';

type JsonObject = Record<string, unknown>;

function responseObject(input: EndpointInput, status: string, text: string | undefined): JsonObject {
  const msgId = `msg_fake_${input.seq}`;
  return {
    id: `resp_fake_${input.seq}`,
    object: 'response',
    created_at: CREATED,
    status,
    model: input.model,
    output:
      text === undefined
        ? []
        : [
            {
              type: 'message',
              id: msgId,
              status: 'completed',
              role: 'assistant',
              content: [{ type: 'output_text', text, annotations: [] }],
            },
          ],
    usage: null,
  };
}

export function responsesBody(input: EndpointInput): JsonObject {
  const text = replyPieces('responses', input.request, input.scenario.chunks).join('');
  const incomplete = input.scenario.names.has('max-tokens');
  const body = responseObject(input, incomplete ? 'incomplete' : 'completed', text);
  if (incomplete) body.incomplete_details = { reason: 'max_output_tokens' };
  const usage = finalUsage(input);
  if (usage !== undefined) body.usage = usage;
  else delete body.usage;
  return body;
}

export function responsesEvents(input: EndpointInput): OutEvent[] {
  const { scenario } = input;
  let sequence = 0;
  const events: OutEvent[] = [];
  const push = (type: string, value: JsonObject): void => {
    events.push({ event: type, data: JSON.stringify({ type, sequence_number: sequence++, ...value }) });
  };
  const msgId = `msg_fake_${input.seq}`;
  const pieces = replyPieces('responses', input.request, scenario.chunks);
  const text = pieces.join('');
  push('response.created', { response: responseObject(input, 'in_progress', undefined) });
  push('response.in_progress', { response: responseObject(input, 'in_progress', undefined) });
  push('response.output_item.added', {
    output_index: 0,
    item: { type: 'message', id: msgId, status: 'in_progress', role: 'assistant', content: [] },
  });
  push('response.content_part.added', {
    item_id: msgId,
    output_index: 0,
    content_index: 0,
    part: { type: 'output_text', text: '', annotations: [] },
  });
  for (const [index, piece] of pieces.entries()) {
    push('response.output_text.delta', { item_id: msgId, output_index: 0, content_index: 0, delta: piece });
    if (index === 0 && scenario.names.has('big-event')) {
      push('response.output_text.delta', {
        item_id: msgId,
        output_index: 0,
        content_index: 0,
        delta: '',
        x_fake_padding: 'x'.repeat(scenario.bigEventBytes),
      });
    }
    if (index === 0 && scenario.names.has('error-in-stream')) {
      push('error', {
        code: 'server_error',
        message: 'fake upstream error in the middle of the stream',
        param: null,
      });
      return events;
    }
  }
  push('response.output_text.done', { item_id: msgId, output_index: 0, content_index: 0, text });
  push('response.content_part.done', {
    item_id: msgId,
    output_index: 0,
    content_index: 0,
    part: { type: 'output_text', text, annotations: [] },
  });
  push('response.output_item.done', {
    output_index: 0,
    item: {
      type: 'message',
      id: msgId,
      status: 'completed',
      role: 'assistant',
      content: [{ type: 'output_text', text, annotations: [] }],
    },
  });
  const final = responsesBody(input);
  push(final.status === 'incomplete' ? 'response.incomplete' : 'response.completed', { response: final });
  return events;
}
