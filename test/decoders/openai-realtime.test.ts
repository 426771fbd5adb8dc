/**
 * The Realtime decoder (src/decoders/openai-realtime.ts) and how its usage is priced: one
 * `response.done` per response, summed over the session; audio kept apart and never priced as text.
 */
import { describe, expect, it } from 'vitest';
import { createDecoder } from '../../src/decoders/index.js';
import type { DecodedResponse } from '../../src/decoders/types.js';
import { book, query, table } from '../pricing/helpers.js';

const session = { type: 'session.created', session: { id: 'sess_1', model: 'gpt-realtime-2025-08-28' } };

function done(usage: object | null, status = 'completed', extra: object = {}) {
  return { type: 'response.done', response: { id: 'resp', status, ...(usage ? { usage } : {}), ...extra } };
}

const usage = (input: number, cached: number, output: number, audioIn = 0, audioOut = 0) => ({
  total_tokens: input + output,
  input_tokens: input,
  output_tokens: output,
  input_token_details: {
    cached_tokens: cached,
    text_tokens: input - audioIn,
    audio_tokens: audioIn,
    image_tokens: 0,
  },
  output_token_details: { text_tokens: output - audioOut, audio_tokens: audioOut },
});

function decode(events: Array<object | string>): DecodedResponse {
  const d = createDecoder({ operation: 'realtime', stream: false });
  for (const e of events) d.onEvent({ data: typeof e === 'string' ? e : JSON.stringify(e) });
  return d.result();
}

describe('OpenAiRealtimeDecoder', () => {
  it('sums usage over every response.done (each is per response, not cumulative)', () => {
    const r = decode([session, done(usage(100, 20, 50)), done(usage(200, 60, 70), 'incomplete')]);
    expect(r.usage).toStrictEqual({ input: 220, cacheRead: 80, output: 120, audio: 0 });
    expect(r.usageReported).toBe(true);
    expect(r.responseModel).toBe('gpt-realtime-2025-08-28');
    expect(r.upstreamRequestId).toBe('sess_1');
    expect(r.finishReason).toBe('length');
    // audio 0 is known (the split was stated), not unknown: the record's audio_tokens column says 0.
    expect(r.notes).toStrictEqual(['realtime_responses:2']);
  });

  it('audio tokens are kept apart (part of input and output, not added to them)', () => {
    const r = decode([done(usage(100, 0, 50, 60, 40))]);
    expect(r.usage).toStrictEqual({ input: 100, cacheRead: 0, output: 50, audio: 100 });
  });

  it('no modality split stated (openai-agents-js#538): audio unknown, not zero', () => {
    const r = decode([done({ input_tokens: 132, output_tokens: 121 })]);
    expect(r.usage).toStrictEqual({ input: 132, output: 121 });
    expect(r.notes).toStrictEqual(['realtime_responses:1']);
  });

  it('no response.done: nothing reported (the meter records usage missing)', () => {
    const r = decode([
      session,
      { type: 'response.created' },
      { type: 'response.output_audio.delta', delta: 'AAAA' },
    ]);
    expect(r.usageReported).toBe(false);
    expect(r.usage).toStrictEqual({});
  });

  it('audio deltas and other events are skipped unparsed; a broken one is not even counted', () => {
    const r = decode(['{"type":"response.output_audio.delta","delta":"trunc', done(usage(10, 0, 5))]);
    expect(r.usage).toMatchObject({ input: 10, output: 5 });
    expect(r.notes).toStrictEqual(['realtime_responses:1']);
  });

  it('one implausible usage report makes the session usage unknown, never a partial sum', () => {
    const r = decode([done(usage(10, 0, 5)), done({ ...usage(10, 0, 5), output_tokens: -3 })]);
    expect(r.usageReported).toBe(false);
    expect(r.notes).toContain('usage_implausible:output_tokens');
  });

  it('responses without usage, failed responses and error events are noted, not errors', () => {
    const r = decode([
      done(null, 'cancelled'),
      done(usage(10, 0, 5), 'failed'),
      { type: 'error', error: {} },
    ]);
    expect(r.streamError).toBeUndefined();
    expect(r.notes).toStrictEqual([
      'realtime_responses:2',
      'realtime_responses_without_usage:1',
      'realtime_responses_failed:1',
      'realtime_error_events:1',
    ]);
  });
});

describe('pricing a realtime session', () => {
  const prices = book([
    table(`currency: USD
unit: 1M
prices:
  - { model: gpt-realtime, input: 4, cache_read: 0.4, output: 16 }
`),
  ]);
  const price = (u: object) =>
    prices.price(query({ model: 'gpt-realtime', operation: 'realtime', usage: u }));

  it('text only: priced like any request', () => {
    expect(price({ input: 220, cacheRead: 80, output: 120, audio: 0 })).toMatchObject({
      cost_nanos: 2_832_000,
      currency: 'USD',
      cost_source: 'computed',
    });
  });

  it('audio tokens: cost NULL with the reason (no audio prices), never text-priced', () => {
    expect(price({ input: 100, output: 50, audio: 100 })).toMatchObject({
      cost_nanos: null,
      cost_source: 'unpriced',
      reason: 'unpriced token kind: 100 audio tokens (price tables have no audio prices)',
    });
  });

  it('audio/text split not reported: cost NULL, usage incomplete', () => {
    expect(price({ input: 132, output: 121 })).toMatchObject({
      cost_nanos: null,
      reason: 'usage incomplete: audio/text split not reported',
    });
  });
});
