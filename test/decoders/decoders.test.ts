import { describe, expect, it } from 'vitest';
import { createDecoder } from '../../src/decoders/index.js';
import { header } from '../../src/decoders/shared.js';
import { OPERATIONS } from '../../src/record.js';

describe('createDecoder', () => {
  it('returns a decoder for every operation, tagged with that operation', () => {
    for (const operation of OPERATIONS) {
      expect(createDecoder({ operation, stream: false }).operation).toBe(operation);
    }
  });

  it('operation other reports nothing, whatever it is fed', () => {
    const d = createDecoder({ operation: 'other', stream: false });
    d.onBody(JSON.stringify({ usage: { prompt_tokens: 5, completion_tokens: 5 } }));
    d.onEvent({ data: JSON.stringify({ usage: { prompt_tokens: 5 } }) });
    expect(d.result()).toStrictEqual({ usage: {}, usageReported: false, outputText: '' });
  });

  it('never throws on malformed input and still returns a result', () => {
    const garbage = [
      '',
      'null',
      '[]',
      '"str"',
      '{"choices":"x","usage":[1]}',
      '{"usage":{"prompt_tokens":"NaN"}}',
      '\u0000\uffff',
      '{"type":5}',
      '{',
    ];
    for (const operation of OPERATIONS) {
      const d = createDecoder({ operation, stream: true });
      for (const g of garbage) {
        expect(() => d.onEvent({ data: g })).not.toThrow();
        expect(() => d.onEvent({ event: 'error', data: g })).not.toThrow();
        expect(() => d.onBody(g)).not.toThrow();
      }
      const r = d.result();
      expect(r.usageReported, operation).toBe(false);
      expect(r.usage, operation).toStrictEqual({});
    }
  });

  it('usage counts must be non-negative integers: floats, negatives and junk are unknown, not zero', () => {
    const d = createDecoder({ operation: 'chat', stream: false });
    d.onBody(JSON.stringify({ usage: { prompt_tokens: 12.5, completion_tokens: -3, total_tokens: 9 } }));
    expect(d.result().usageReported).toBe(false);
    const q = createDecoder({ operation: 'chat', stream: false });
    q.onBody(JSON.stringify({ usage: { prompt_tokens: '12', completion_tokens: 3 } })); // quoted numbers from some relays
    expect(q.result().usage).toStrictEqual({ input: 12, output: 3 });
  });

  it('cached tokens larger than the prompt are inconsistent: input is unknown rather than negative', () => {
    const d = createDecoder({ operation: 'chat', stream: false });
    d.onBody(
      JSON.stringify({
        usage: { prompt_tokens: 10, completion_tokens: 1, prompt_tokens_details: { cached_tokens: 50 } },
      }),
    );
    expect(d.result().usage).toStrictEqual({ cacheRead: 50, output: 1 });
  });

  it('streamed image generation: one completed event per image, per-image usage added', () => {
    const d = createDecoder({ operation: 'image_generation', stream: true });
    const done = (input: number, output: number) => ({
      event: 'image_generation.completed',
      data: JSON.stringify({
        type: 'image_generation.completed',
        b64_json: 'x',
        usage: { input_tokens: input, output_tokens: output },
      }),
    });
    d.onEvent({
      event: 'image_generation.partial_image',
      data: JSON.stringify({ type: 'image_generation.partial_image' }),
    });
    d.onEvent(done(20, 272));
    d.onEvent(done(20, 300));
    expect(d.result()).toStrictEqual({
      usage: { input: 40, output: 572, images: 2 },
      usageReported: true,
      outputText: '',
    });
  });

  it('result() is repeatable and reflects events that arrive after it was first read', () => {
    const d = createDecoder({ operation: 'chat', stream: true });
    d.onEvent({ data: JSON.stringify({ id: 'c', choices: [{ delta: { content: 'a' } }] }) });
    expect(d.result().outputText).toBe('a');
    d.onEvent({
      data: JSON.stringify({ id: 'c', choices: [], usage: { prompt_tokens: 1, completion_tokens: 1 } }),
    });
    expect(d.result()).toStrictEqual(d.result());
    expect(d.result().usage).toStrictEqual({ input: 1, output: 1 });
  });
});

describe('stream errors are sticky', () => {
  // Review bug: `streamError = errorFrom(...)` let a later error-free body (or `"error": {}`) erase
  // an error already seen.
  const firstError = JSON.stringify({ error: { message: 'upstream exploded', code: 'server_error' } });
  const laterBodies = [
    JSON.stringify({ error: {}, usage: { prompt_tokens: 3, input_tokens: 3 } }),
    JSON.stringify({ type: 'message', error: null, usage: { input_tokens: 3 } }),
    JSON.stringify({ error: 5 }),
  ];
  for (const operation of ['embeddings', 'image_generation', 'responses', 'messages'] as const) {
    it(`${operation}: a later body without an error keeps the earlier one`, () => {
      const d = createDecoder({ operation, stream: false });
      d.onBody(firstError);
      for (const body of laterBodies) d.onBody(body);
      expect(d.result().streamError, operation).toStrictEqual({
        message: 'upstream exploded',
        code: 'server_error',
      });
    });
  }

  it('embeddings: a later SSE-framed event without an error keeps the earlier one', () => {
    const d = createDecoder({ operation: 'embeddings', stream: true });
    d.onEvent({ data: firstError });
    d.onEvent({ data: JSON.stringify({ error: {}, usage: { prompt_tokens: 3 } }) });
    expect(d.result().streamError).toStrictEqual({ message: 'upstream exploded', code: 'server_error' });
    expect(d.result().usage).toStrictEqual({ input: 3 });
  });
});

describe('header (shared by classify and ratelimit)', () => {
  it('takes the first value, trimmed, falls back to the lower-case name, and never returns blank', () => {
    expect(header({ 'retry-after': [' 5 ', '6'] }, 'retry-after')).toBe('5');
    expect(header({ 'x-request-id': 'abc' }, 'X-Request-Id')).toBe('abc');
    expect(header({ 'x-request-id': '  ' }, 'x-request-id')).toBeUndefined();
    expect(header({ 'x-request-id': [] }, 'x-request-id')).toBeUndefined();
    expect(header({}, 'x-request-id')).toBeUndefined();
  });
});
