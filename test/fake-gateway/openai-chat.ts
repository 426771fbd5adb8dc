/**
 * OpenAI-compatible chat (`/chat/completions`, seed 004 `/search/completions`) and legacy
 * `/completions`, with each gateway's usage quirk (see the flavor table in index.ts).
 */
import type { OutEvent } from './transport.js';
import { expectedUsage, REASONING_PIECES, replyPieces, streamReportsUsage, type Flavor } from './usage.js';
import type { Scenario } from './scenarios.js';

type JsonObject = Record<string, unknown>;

export interface EndpointInput {
  request: JsonObject;
  /** The model exactly as the request named it (echoed back in `model`). */
  model: string;
  flavor: Flavor;
  scenario: Scenario;
  /** Sequence number of this request on this gateway (1-based). */
  seq: number;
}

export const CREATED = 1_700_000_000;

export const MINIMAX_BASE_RESP_ERROR = { status_code: 1008, status_msg: 'insufficient balance' };
export const STREAM_ERROR_BODY = {
  error: {
    message: 'fake upstream error in the middle of the stream',
    type: 'server_error',
    code: 'stream_error',
  },
};

const AZURE_FILTER_RESULTS = {
  hate: { filtered: false, severity: 'safe' },
  self_harm: { filtered: false, severity: 'safe' },
  sexual: { filtered: false, severity: 'safe' },
  violence: { filtered: false, severity: 'safe' },
};

/** The final usage object the wire carries (with `cost` under the cost scenario), or undefined. */
export function finalUsage(input: EndpointInput): JsonObject | undefined {
  if (input.scenario.names.has('no-usage')) return undefined;
  const expected = expectedUsage(input.flavor, input.request, { chunks: input.scenario.chunks });
  // x-fake-usage replaces the computed figures (same wire shape, the caller's exact counts).
  const wire = input.scenario.usage ?? expected.wire;
  return input.scenario.names.has('cost') ? { ...wire, cost: expected.reportedCost } : wire;
}

/** `length` under the max-tokens scenario, else `stop`. */
export function finishReason(input: EndpointInput): string {
  return input.scenario.names.has('max-tokens') ? 'length' : 'stop';
}

function data(value: unknown): OutEvent {
  return { data: JSON.stringify(value) };
}

export function chatBody(input: EndpointInput): JsonObject {
  const { flavor, model, seq } = input;
  if (input.scenario.names.has('minimax-base-resp-error')) {
    // MiniMax answers 200 and puts the failure in base_resp (platform.minimaxi.com error codes).
    return {
      id: '',
      object: 'chat.completion',
      created: CREATED,
      model,
      choices: null,
      usage: { total_tokens: 0 },
      base_resp: MINIMAX_BASE_RESP_ERROR,
    };
  }
  const text = replyPieces(flavor, input.request, input.scenario.chunks).join('');
  const message: JsonObject = { role: 'assistant', content: text };
  if (flavor === 'deepseek-reasoner') message.reasoning_content = REASONING_PIECES.join('');
  const choice: JsonObject = { index: 0, message, logprobs: null, finish_reason: finishReason(input) };
  if (flavor === 'azure') choice.content_filter_results = AZURE_FILTER_RESULTS;
  const body: JsonObject = {
    id: `chatcmpl-fake-${seq}`,
    object: 'chat.completion',
    created: CREATED,
    model,
    choices: [choice],
    system_fingerprint: 'fp_fake',
  };
  const usage = finalUsage(input);
  if (usage !== undefined) body.usage = usage;
  if (flavor === 'azure') {
    body.prompt_filter_results = [{ prompt_index: 0, content_filter_results: AZURE_FILTER_RESULTS }];
  }
  if (flavor === 'groq') body.x_groq = { id: `req_fake_${seq}` };
  if (flavor === 'minimax') body.base_resp = { status_code: 0, status_msg: '' };
  return body;
}

function groqUsage(usage: JsonObject): JsonObject {
  return { queue_time: 0.01, prompt_time: 0.001, completion_time: 0.02, total_time: 0.031, ...usage };
}

/** The big-event padding chunk: an empty delta whose JSON line is at least `bytes` long. */
function bigChunk(base: (choices: unknown[], extra?: JsonObject) => JsonObject, bytes: number): OutEvent {
  return data(
    base([{ index: 0, delta: { content: '' }, finish_reason: null }], { x_fake_padding: 'x'.repeat(bytes) }),
  );
}

export function chatEvents(input: EndpointInput): OutEvent[] {
  const { flavor, model, seq, scenario, request } = input;
  const names = scenario.names;
  const id = `chatcmpl-fake-${seq}`;
  const includeUsageAsked = streamReportsUsage('openai', request);
  // Real OpenAI sends "usage": null on every chunk once include_usage is set.
  const nullUsage = (flavor === 'openai' || flavor === 'openai-reasoning') && includeUsageAsked;
  const base = (choices: unknown[], extra: JsonObject = {}): JsonObject => ({
    id,
    object: 'chat.completion.chunk',
    created: CREATED,
    model,
    system_fingerprint: 'fp_fake',
    choices,
    ...(nullUsage ? { usage: null } : {}),
    ...extra,
  });

  if (names.has('minimax-base-resp-error')) {
    return [
      data({
        id: '',
        object: 'chat.completion.chunk',
        created: CREATED,
        model,
        choices: null,
        base_resp: MINIMAX_BASE_RESP_ERROR,
      }),
    ];
  }

  const usage = finalUsage(input);
  const report = usage !== undefined && streamReportsUsage(flavor, request);
  const pieces = replyPieces(flavor, request, scenario.chunks);
  const promptTokens = usage !== undefined ? usage.prompt_tokens : undefined;
  const events: OutEvent[] = [];

  if (flavor === 'azure') {
    // Azure OpenAI: the first chunk has empty choices, no usage, only prompt_filter_results.
    events.push(
      data({
        id: '',
        object: '',
        created: 0,
        model: '',
        choices: [],
        prompt_filter_results: [{ prompt_index: 0, content_filter_results: AZURE_FILTER_RESULTS }],
      }),
    );
  }

  const perChunkExtra = (index: number): JsonObject => {
    if (flavor === 'qwen-cumulative' && usage !== undefined && typeof promptTokens === 'number') {
      // DashScope non-incremental mode: usage on every chunk, cumulative so far.
      return {
        usage: { prompt_tokens: promptTokens, completion_tokens: index, total_tokens: promptTokens + index },
      };
    }
    if (flavor === 'minimax' && usage !== undefined) {
      // MiniMax: zero placeholders until the real figure arrives at the end.
      return {
        usage: { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 },
        base_resp: { status_code: 0, status_msg: '' },
      };
    }
    return {};
  };

  const roleDelta: JsonObject =
    flavor === 'deepseek-reasoner'
      ? { role: 'assistant', content: null, reasoning_content: '' }
      : { role: 'assistant', content: '' };
  events.push(
    data(
      base([{ index: 0, delta: roleDelta, logprobs: null, finish_reason: null }], {
        ...perChunkExtra(0),
        ...(flavor === 'groq' ? { x_groq: { id: `req_fake_${seq}` } } : {}),
      }),
    ),
  );
  if (flavor === 'deepseek-reasoner') {
    for (const piece of REASONING_PIECES) {
      events.push(
        data(
          base([
            {
              index: 0,
              delta: { content: null, reasoning_content: piece },
              logprobs: null,
              finish_reason: null,
            },
          ]),
        ),
      );
    }
  }
  for (const [index, piece] of pieces.entries()) {
    const choice: JsonObject = { index: 0, delta: { content: piece }, logprobs: null, finish_reason: null };
    if (flavor === 'azure') choice.content_filter_results = AZURE_FILTER_RESULTS;
    events.push(data(base([choice], perChunkExtra(index + 1))));
    if (index === 0 && names.has('big-event')) events.push(bigChunk(base, scenario.bigEventBytes));
    if (index === 0 && names.has('error-in-stream')) {
      events.push(data(STREAM_ERROR_BODY));
      return events;
    }
  }

  const finishChoice: JsonObject = {
    index: 0,
    delta: {},
    logprobs: null,
    finish_reason: finishReason(input),
  };
  const finishExtra: JsonObject = {};
  if (report && usage !== undefined) {
    if (flavor === 'glm' || flavor === 'qwen-cumulative') finishExtra.usage = usage;
    if (flavor === 'moonshot') finishChoice.usage = usage;
    if (flavor === 'groq') finishExtra.x_groq = { id: `req_fake_${seq}`, usage: groqUsage(usage) };
  }
  if (flavor === 'minimax' && usage !== undefined) Object.assign(finishExtra, perChunkExtra(pieces.length));
  events.push(data(base([finishChoice], finishExtra)));

  const usageChunk =
    usage !== undefined &&
    (flavor === 'minimax' ||
      (includeUsageAsked &&
        [
          'openai',
          'openai-reasoning',
          'deepseek',
          'deepseek-reasoner',
          'azure',
          'groq',
          'qwen-cumulative',
        ].includes(flavor)));
  if (usageChunk) events.push(data(base([], { usage })));

  if (!names.has('no-done')) events.push({ data: '[DONE]' });
  return events;
}

/** Legacy `/completions` (object text_completion), non-stream body. */
export function completionBody(input: EndpointInput): JsonObject {
  const text = replyPieces('completions', input.request, input.scenario.chunks).join('');
  const body: JsonObject = {
    id: `cmpl-fake-${input.seq}`,
    object: 'text_completion',
    created: CREATED,
    model: input.model,
    choices: [{ text, index: 0, logprobs: null, finish_reason: finishReason(input) }],
  };
  const usage = finalUsage(input);
  if (usage !== undefined) body.usage = usage;
  return body;
}

export function completionEvents(input: EndpointInput): OutEvent[] {
  const { scenario, request } = input;
  const base = (choices: unknown[], extra: JsonObject = {}): JsonObject => ({
    id: `cmpl-fake-${input.seq}`,
    object: 'text_completion',
    created: CREATED,
    model: input.model,
    choices,
    ...extra,
  });
  const events: OutEvent[] = [];
  for (const [index, piece] of replyPieces('completions', request, scenario.chunks).entries()) {
    events.push(data(base([{ text: piece, index: 0, logprobs: null, finish_reason: null }])));
    if (index === 0 && scenario.names.has('big-event')) events.push(bigChunk(base, scenario.bigEventBytes));
    if (index === 0 && scenario.names.has('error-in-stream')) {
      events.push(data(STREAM_ERROR_BODY));
      return events;
    }
  }
  events.push(data(base([{ text: '', index: 0, logprobs: null, finish_reason: finishReason(input) }])));
  const usage = finalUsage(input);
  if (usage !== undefined && streamReportsUsage('completions', request))
    events.push(data(base([], { usage })));
  if (!scenario.names.has('no-done')) events.push({ data: '[DONE]' });
  return events;
}
