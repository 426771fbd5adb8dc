import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ANTHROPIC_CACHE_READ,
  ANTHROPIC_CACHE_WRITE,
  expectedUsage,
  flavorFor,
  rawRequest,
  sseJson,
  startFakeGateway,
  type FakeGateway,
  type Flavor,
} from './index.js';

type Json = Record<string, unknown>;

let gateway: FakeGateway;
beforeAll(async () => {
  gateway = await startFakeGateway();
});
afterAll(async () => {
  await gateway.close();
});

const auth = { authorization: 'Bearer sk-test' };
const messages = [{ role: 'user', content: 'one two three' }];

async function streamChat(model: string, extra: Json = {}): Promise<{ chunks: Json[]; request: Json }> {
  const request = { model, messages, stream: true, ...extra };
  const response = await rawRequest(`${gateway.url}/v1/chat/completions`, { headers: auth, body: request });
  expect(response.status).toBe(200);
  expect(response.headers['content-type']).toBe('text/event-stream; charset=utf-8');
  expect(response.body.toString()).toMatch(/data: \[DONE\]\n\n$/);
  return { chunks: sseJson(response.body.toString()), request };
}

function contentOf(chunks: Json[]): string {
  return chunks
    .map((chunk) => {
      const choices = chunk.choices as Json[] | undefined;
      const delta = choices?.[0]?.delta as Json | undefined;
      return typeof delta?.content === 'string' ? delta.content : '';
    })
    .join('');
}

function withUsage(chunks: Json[]): Json[] {
  return chunks.filter((chunk) => chunk.usage !== undefined && chunk.usage !== null);
}

describe('flavor selection', () => {
  it.each<[string, string, Flavor]>([
    ['/chat/completions', 'gpt-4o', 'openai'],
    ['/chat/completions', 'qwen-plus', 'openai'],
    ['/chat/completions', 'qwen-cumulative-max', 'qwen-cumulative'],
    ['/chat/completions', 'deepseek-chat', 'deepseek'],
    ['/chat/completions', 'deepseek-reasoner', 'deepseek-reasoner'],
    ['/chat/completions', 'ZHIPU/GLM-4', 'glm'],
    ['/chat/completions', 'kimi-k2', 'moonshot'],
    ['/chat/completions', 'groq-llama', 'groq'],
    ['/chat/completions', 'MiniMax-M2', 'minimax'],
    ['/chat/completions', 'azure-gpt-4o', 'azure'],
    ['/chat/completions', 'o3-mini', 'openai-reasoning'],
    ['/chat/completions', 'gpt-5', 'openai-reasoning'],
    ['/messages', 'deepseek-v4-flash', 'anthropic'],
    ['/responses', 'gpt-4o', 'responses'],
    ['/chat/completions', 'gzip+crlf+glm-4', 'glm'],
    ['/chat/completions', 'slow-stream', 'openai'],
  ])('%s %s → %s', (endpoint, model, flavor) => {
    expect(flavorFor(endpoint, model)).toBe(flavor);
  });
});

describe('OpenAI-compatible stream quirks', () => {
  it('openai: no usage anywhere unless include_usage', async () => {
    const { chunks } = await streamChat('gpt-4o');
    expect(withUsage(chunks)).toEqual([]);
    expect(contentOf(chunks)).toBe('echo: one two three');
  });

  it('deepseek: cache hit/miss and cached_tokens in the usage chunk', async () => {
    const { chunks, request } = await streamChat('deepseek-chat', {
      stream_options: { include_usage: true },
    });
    const usage = chunks.at(-1)?.usage as Json;
    expect(chunks.at(-1)?.choices).toEqual([]);
    expect(usage).toEqual(expectedUsage('deepseek', request).wire);
    // P = 10 + 3 = 13 → hit 6, miss 7.
    expect(usage).toMatchObject({
      prompt_tokens: 13,
      prompt_cache_hit_tokens: 6,
      prompt_cache_miss_tokens: 7,
    });
    expect(usage.prompt_tokens_details).toEqual({ cached_tokens: 6 });
  });

  it('deepseek-reasoner: reasoning_content before content, reasoning_tokens in usage', async () => {
    const { chunks } = await streamChat('deepseek-reasoner', { stream_options: { include_usage: true } });
    const reasoning = chunks
      .map((c) => ((c.choices as Json[])[0]?.delta as Json | undefined)?.reasoning_content)
      .filter((r): r is string => typeof r === 'string')
      .join('');
    expect(reasoning).toBe('Thinking about the question.');
    expect(contentOf(chunks)).toBe('echo: one two three');
    expect(chunks.at(-1)?.usage).toMatchObject({
      completion_tokens: 8,
      completion_tokens_details: { reasoning_tokens: 4 },
    });
  });

  it('glm: usage on the finish chunk, even without include_usage', async () => {
    const { chunks, request } = await streamChat('glm-4-plus');
    const carrying = withUsage(chunks);
    expect(carrying).toHaveLength(1);
    expect((carrying[0]?.choices as Json[])[0]?.finish_reason).toBe('stop');
    expect(carrying[0]?.usage).toEqual(expectedUsage('glm', request).wire);
  });

  it('moonshot: usage inside choices[0]', async () => {
    const { chunks, request } = await streamChat('moonshot-v1-8k');
    expect(withUsage(chunks)).toEqual([]);
    const finish = chunks.find((c) => (c.choices as Json[])[0]?.finish_reason === 'stop');
    expect((finish?.choices as Json[])[0]?.usage).toEqual(expectedUsage('moonshot', request).wire);
  });

  it('groq: x_groq.usage on the finish chunk and the same usage repeated in the usage chunk', async () => {
    const { chunks, request } = await streamChat('groq-llama', { stream_options: { include_usage: true } });
    const wire = expectedUsage('groq', request).wire;
    const groq = chunks.filter((c) => (c.x_groq as Json | undefined)?.usage !== undefined);
    expect(groq).toHaveLength(1);
    expect((groq[0]?.x_groq as Json).usage).toMatchObject(wire);
    expect(chunks.at(-1)?.usage).toEqual(wire);
  });

  it('qwen-cumulative: cumulative usage on every chunk, the last one final', async () => {
    const { chunks, request } = await streamChat('qwen-cumulative-plus');
    const completions = chunks.map((c) => (c.usage as Json).completion_tokens);
    expect(completions).toEqual([0, 1, 2, 3, 4, 4]);
    expect(chunks.at(-1)?.usage).toEqual(expectedUsage('qwen-cumulative', request).wire);
  });

  it('minimax: zero placeholders then the real usage chunk', async () => {
    const { chunks, request } = await streamChat('MiniMax-M2');
    const totals = chunks.map((c) => (c.usage as Json).total_tokens);
    expect(totals.slice(0, -1).every((t) => t === 0)).toBe(true);
    expect(chunks.at(-1)?.choices).toEqual([]);
    expect(chunks.at(-1)?.usage).toEqual(expectedUsage('minimax', request).wire);
  });

  it('azure: first chunk has empty choices and prompt_filter_results, no usage', async () => {
    const { chunks, request } = await streamChat('azure-gpt-4o', { stream_options: { include_usage: true } });
    expect(chunks[0]?.choices).toEqual([]);
    expect(chunks[0]?.prompt_filter_results).toBeDefined();
    expect(chunks[0]?.usage).toBeUndefined();
    expect(withUsage(chunks)).toHaveLength(1);
    expect(chunks.at(-1)?.usage).toEqual(expectedUsage('azure', request).wire);
  });

  it('o3 / gpt-5: cached_tokens and reasoning_tokens details', async () => {
    const request = { model: 'gpt-5', messages };
    const response = await rawRequest(`${gateway.url}/v1/chat/completions`, { headers: auth, body: request });
    const usage = (JSON.parse(response.body.toString()) as Json).usage as Json;
    expect(usage).toEqual(expectedUsage('openai-reasoning', request).wire);
    expect(usage).toMatchObject({
      prompt_tokens: 13,
      completion_tokens: 8,
      prompt_tokens_details: { cached_tokens: 6 },
      completion_tokens_details: { reasoning_tokens: 4 },
    });
  });

  it('legacy /completions streams text chunks and a usage chunk on request', async () => {
    const request = {
      model: 'gpt-3.5-turbo-instruct',
      prompt: 'say this',
      stream: true,
      stream_options: { include_usage: true },
    };
    const response = await rawRequest(`${gateway.url}/v1/completions`, { headers: auth, body: request });
    const chunks = sseJson(response.body.toString());
    const text = chunks.map((c) => ((c.choices as Json[])[0]?.text as string | undefined) ?? '').join('');
    expect(text).toBe('echo: say this');
    expect(chunks.at(-1)?.usage).toEqual(expectedUsage('completions', request).wire);
  });

  it('/search/completions answers like chat (seed 004)', async () => {
    const request = { model: 'deepseek-v4-flash', messages };
    const response = await rawRequest(`${gateway.url}/v1/search/completions`, {
      headers: auth,
      body: request,
    });
    expect(response.status).toBe(200);
    expect((JSON.parse(response.body.toString()) as Json).usage).toEqual(
      expectedUsage('deepseek', request).wire,
    );
  });
});

describe('Anthropic and other endpoints', () => {
  it('messages stream: message_start cache usage, message_delta cumulative usage', async () => {
    const request = { model: 'claude-sonnet-4-5', max_tokens: 10, stream: true, messages };
    const response = await rawRequest(`${gateway.url}/v1/messages`, {
      headers: { 'x-api-key': 'sk-test' },
      body: request,
    });
    expect(response.status).toBe(200);
    const text = response.body.toString();
    expect(text).not.toContain('[DONE]');
    expect(text.startsWith('event: message_start\ndata: ')).toBe(true);
    const events = sseJson(text);
    const start = (events[0]?.message as Json).usage as Json;
    expect(start).toMatchObject({
      input_tokens: 13,
      cache_read_input_tokens: ANTHROPIC_CACHE_READ,
      cache_creation_input_tokens: ANTHROPIC_CACHE_WRITE,
      cache_creation: { ephemeral_5m_input_tokens: 200, ephemeral_1h_input_tokens: 100 },
      output_tokens: 1,
    });
    const delta = events.find((e) => e.type === 'message_delta');
    expect(delta?.usage).toEqual({
      input_tokens: 13,
      cache_creation_input_tokens: 300,
      cache_read_input_tokens: 1000,
      output_tokens: 4,
    });
    expect(events.at(-1)?.type).toBe('message_stop');
    const expected = expectedUsage('anthropic', request);
    expect([
      expected.input,
      expected.cacheRead,
      expected.cacheWrite,
      expected.cacheWrite1h,
      expected.output,
    ]).toEqual([13, 1000, 300, 100, 4]);
  });

  it('scenario parts of the model name do not change the flavor (cost+o3-mini on /responses)', async () => {
    const request = { model: 'cost+o3-mini', input: 'a b' };
    const response = await rawRequest(`${gateway.url}/v1/responses`, { headers: auth, body: request });
    const body = JSON.parse(response.body.toString()) as Json;
    const expected = expectedUsage('responses', request);
    expect(body.model).toBe('cost+o3-mini');
    expect(body.usage).toEqual({ ...expected.wire, cost: expected.reportedCost });
    expect(expected.reasoning).toBe(4);
  });

  it('count_tokens, balance and images', async () => {
    const count = await rawRequest(`${gateway.url}/v1/messages/count_tokens`, {
      headers: { 'x-api-key': 'sk-test' },
      body: { model: 'claude-x', system: 'a b', messages },
    });
    expect(JSON.parse(count.body.toString())).toEqual({ input_tokens: 15 });

    const balance = await rawRequest(`${gateway.url}/v1/balance`, { headers: auth });
    // Seed 004's example balance, less what this gateway billed so far (billing.ts).
    const billed = Number(gateway.billing.chargedNanos()) / 1e9;
    expect(JSON.parse(balance.body.toString())).toMatchObject({ object: 'balance', currency: 'CNY' });
    expect((JSON.parse(balance.body.toString()) as { balance: number }).balance).toBeCloseTo(
      138.5 - billed,
      9,
    );

    const images = await rawRequest(`${gateway.url}/v1/images/generations`, {
      headers: auth,
      body: { model: 'gpt-image-1', prompt: 'a white cat', n: 2 },
    });
    const body = JSON.parse(images.body.toString()) as Json;
    expect(body.data).toHaveLength(2);
    expect(body.usage).toMatchObject({ input_tokens: 13, output_tokens: 2112 });
    const dalle = await rawRequest(`${gateway.url}/v1/images/generations`, {
      headers: auth,
      body: { model: 'dall-e-3', prompt: 'x', response_format: 'b64_json' },
    });
    const dalleBody = JSON.parse(dalle.body.toString()) as Json;
    expect(dalleBody.usage).toBeUndefined();
    expect((dalleBody.data as Json[])[0]?.b64_json).toEqual(expect.any(String));
  });

  it('serves under a custom basePath only (seed 002 /api/v1)', async () => {
    const seed002 = await startFakeGateway({ basePath: '/api/v1' });
    try {
      const ok = await rawRequest(`${seed002.url}/api/v1/models`, { headers: auth });
      expect(ok.status).toBe(200);
      const wrong = await rawRequest(`${seed002.url}/v1/models`, { headers: auth });
      expect(wrong.status).toBe(404);
      expect(JSON.parse(wrong.body.toString())).toMatchObject({ error: { code: 'unknown_url' } });
    } finally {
      await seed002.close();
    }
  });
});
