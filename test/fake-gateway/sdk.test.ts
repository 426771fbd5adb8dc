import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  embeddingVector,
  expectedUsage,
  LISTED_MODELS,
  startFakeGateway,
  type FakeGateway,
} from './index.js';

// The real SDK clients talk to the fake directly: if the fake's wire format drifts from what the
// SDKs parse, these fail.
let gateway: FakeGateway;
let openai: OpenAI;
let anthropic: Anthropic;

beforeAll(async () => {
  gateway = await startFakeGateway();
  openai = new OpenAI({ apiKey: 'sk-test', baseURL: `${gateway.url}/v1`, maxRetries: 0 });
  anthropic = new Anthropic({ apiKey: 'sk-test', baseURL: gateway.url, maxRetries: 0 });
});
afterAll(async () => {
  await gateway.close();
});

const messages = [
  { role: 'system' as const, content: 'You are terse.' },
  { role: 'user' as const, content: 'hello fake world' },
];

describe('openai SDK against the fake gateway', () => {
  it('parses a non-streamed chat completion with the documented usage', async () => {
    const request = { model: 'gpt-4o', messages };
    const completion = await openai.chat.completions.create(request);
    expect(completion.choices[0]?.message.content).toBe('echo: hello fake world');
    expect(completion.usage).toEqual(expectedUsage('openai', request).wire);
    // 10 overhead + 3 system words + 3 user words; 4 reply pieces.
    expect(completion.usage).toEqual({ prompt_tokens: 16, completion_tokens: 4, total_tokens: 20 });
    const received = gateway.requests.at(-1);
    expect(received?.path).toBe('/v1/chat/completions');
    expect(received?.json).toMatchObject({ model: 'gpt-4o' });
    expect(received?.headers.authorization).toBe('Bearer sk-test');
  });

  it('streams without usage when include_usage is not asked, every chunk with choices[0]', async () => {
    const stream = await openai.chat.completions.create({ model: 'gpt-4o', messages, stream: true });
    let text = '';
    let chunks = 0;
    for await (const chunk of stream) {
      chunks++;
      expect(chunk.usage ?? undefined).toBeUndefined();
      text += chunk.choices[0]?.delta.content ?? '';
      expect(chunk.choices[0]).toBeDefined();
    }
    expect(text).toBe('echo: hello fake world');
    expect(chunks).toBe(6); // role chunk + 4 pieces + finish chunk
  });

  it('streams a final usage chunk with empty choices when include_usage is asked', async () => {
    const request = {
      model: 'gpt-4o',
      messages,
      stream: true as const,
      stream_options: { include_usage: true },
    };
    const stream = await openai.chat.completions.create(request);
    const all = [];
    for await (const chunk of stream) all.push(chunk);
    const last = all.at(-1);
    expect(last?.choices).toEqual([]);
    expect(last?.usage).toEqual(expectedUsage('openai', request).wire);
    expect(all.slice(0, -1).every((chunk) => chunk.usage === null)).toBe(true);
  });

  it('returns embeddings (base64 by SDK default) and usage', async () => {
    const response = await openai.embeddings.create({
      model: 'text-embedding-3-small',
      input: ['one two', 'three'],
    });
    expect(response.data.map((d) => d.embedding)).toEqual([embeddingVector(0), embeddingVector(1)]);
    expect(response.usage).toEqual({ prompt_tokens: 3, total_tokens: 3 });
    expect(gateway.requests.at(-1)?.json).toMatchObject({ encoding_format: 'base64' });
  });

  it('lists the models', async () => {
    const ids: string[] = [];
    for await (const model of openai.models.list()) ids.push(model.id);
    expect(ids).toEqual([...LISTED_MODELS]);
  });

  it('answers the Responses API, non-stream and stream', async () => {
    const request = { model: 'o3-mini', input: 'say something' };
    const response = await openai.responses.create(request);
    expect(response.output_text).toBe('echo: say something');
    expect(response.usage).toEqual(expectedUsage('responses', request).wire);
    expect(response.usage?.output_tokens_details.reasoning_tokens).toBe(4);

    const stream = await openai.responses.create({ ...request, stream: true });
    const types: string[] = [];
    let delta = '';
    let completedUsage: unknown;
    for await (const event of stream) {
      types.push(event.type);
      if (event.type === 'response.output_text.delta') delta += event.delta;
      if (event.type === 'response.completed') completedUsage = event.response.usage;
    }
    expect(types[0]).toBe('response.created');
    expect(types.at(-1)).toBe('response.completed');
    expect(delta).toBe('echo: say something');
    expect(completedUsage).toEqual(expectedUsage('responses', request).wire);
  });

  it('surfaces a seed-001 402 insufficient_quota as an APIError', async () => {
    const error = await openai.chat.completions
      .create({ model: 'error-402', messages })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OpenAI.APIError);
    expect((error as InstanceType<typeof OpenAI.APIError>).status).toBe(402);
    expect((error as InstanceType<typeof OpenAI.APIError>).code).toBe('insufficient_quota');
  });

  it('surfaces an error event inside a 200 stream', async () => {
    const stream = await openai.chat.completions.create({
      model: 'error-in-stream+gpt-4o',
      messages,
      stream: true,
    });
    const consume = async (): Promise<void> => {
      for await (const _chunk of stream) {
        // drain
      }
    };
    await expect(consume()).rejects.toThrow(/fake upstream error/);
  });
});

describe('anthropic SDK against the fake gateway', () => {
  const request = {
    model: 'claude-fake-1',
    max_tokens: 100,
    system: 'Be brief.',
    messages: [{ role: 'user' as const, content: 'hi there' }],
  };

  it('parses a non-streamed message with cache usage', async () => {
    const message = await anthropic.messages.create(request);
    expect(message.content).toEqual([{ type: 'text', text: 'echo: hi there' }]);
    expect(message.usage).toEqual(expectedUsage('anthropic', request).wire);
    expect(message.usage.input_tokens).toBe(14); // 10 + 2 system words + 2 user words
    // SDK 1.x sends the key as a Bearer token; x-api-key is covered by the raw tests.
    const headers = gateway.requests.at(-1)?.headers;
    expect(headers?.['x-api-key'] ?? headers?.authorization).toMatch(/sk-test$/);
  });

  it('streams message_start … message_stop and the SDK accumulates the final usage', async () => {
    const stream = anthropic.messages.stream(request);
    const eventTypes: string[] = [];
    stream.on('streamEvent', (event) => eventTypes.push(event.type));
    const message = await stream.finalMessage();
    expect(message.content[0]).toMatchObject({ type: 'text', text: 'echo: hi there' });
    expect(message.usage.output_tokens).toBe(3);
    expect(message.usage.cache_read_input_tokens).toBe(1000);
    expect(message.usage.cache_creation_input_tokens).toBe(300);
    expect(eventTypes[0]).toBe('message_start');
    expect(eventTypes.at(-1)).toBe('message_stop');
    expect(eventTypes).toContain('message_delta');
  });

  it('surfaces an Anthropic-shaped billing_error', async () => {
    const error = await anthropic.messages
      .create({ ...request, model: 'error-402' })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Anthropic.APIError);
    expect((error as InstanceType<typeof Anthropic.APIError>).status).toBe(402);
    expect((error as InstanceType<typeof Anthropic.APIError>).error).toMatchObject({
      type: 'error',
      error: { type: 'billing_error' },
    });
  });
});
