import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { SILENT_LOGGER } from '../src/log.js';
import { createMeter, type MeterDeps } from '../src/meter/index.js';
import { inspectRequest } from '../src/meter/inspect.js';
import type { Meter, MeterBeginInput, MeterOutcome } from '../src/meter/types.js';
import type { PriceBook, PriceQuery } from '../src/pricing/types.js';
import type { RequestRecord } from '../src/record.js';
import { NOOP_HEALTH, type HealthCounters, type Sink } from '../src/sinks/types.js';

/** A price book that prices every token at 1 nano, so the cost shows which usage was priced. */
const COUNTING_BOOK: PriceBook = {
  price: (q: PriceQuery) => {
    const u = q.usage;
    const tokens = (u.input ?? 0) + (u.cacheRead ?? 0) + (u.cacheWrite ?? 0) + (u.output ?? 0);
    return {
      cost_nanos: tokens,
      currency: 'USD',
      cost_source: 'computed',
      price_id: 'test#*@always',
      multiplier: '1',
      upstream_reported_cost_nanos: null,
      upstream_reported_currency: null,
    };
  },
};

function harness(extraSinks: Sink[] = [], priceBook: PriceBook = COUNTING_BOOK) {
  const records: RequestRecord[] = [];
  const errors: string[] = [];
  const health: HealthCounters = { ...NOOP_HEALTH, internalError: (c) => errors.push(c) };
  const collector: Sink = { name: 'collector', write: (r) => records.push(r), close: async () => {} };
  const deps: MeterDeps = {
    sinks: [...extraSinks, collector],
    priceBook,
    health,
    log: SILENT_LOGGER,
    keySecret: 'test-secret-0123456789',
    apps: {},
    maxEventBytes: 1024 * 1024,
    maxResponseBodyBytes: 1024 * 1024,
  };
  const meter = createMeter(deps);
  const run = async (
    path: string,
    body: object,
    status: number,
    headers: Record<string, string>,
    chunks: Buffer[],
    outcome: MeterOutcome = { kind: 'complete' },
  ): Promise<RequestRecord> => {
    const raw = Buffer.from(JSON.stringify(body));
    const input: MeterBeginInput = {
      method: 'POST',
      path,
      headers: { authorization: 'Bearer sk-secret-key' },
      upstream: 'default',
      upstreamUrl: new URL('http://127.0.0.1:9/v1'),
      info: inspectRequest('POST', path, raw),
      requestBytes: raw.length,
      injectedUsage: false,
    };
    const m = meter.begin(input);
    m.onResponseHead(status, headers);
    for (const c of chunks) {
      m.onResponseChunk(c);
      m.onFirstByteToClient();
    }
    const before = records.length;
    // finish resolves once the record has been handed to every sink (the exchange's one in-flight
    // count drops then).
    await m.finish(outcome);
    expect(records.length).toBe(before + 1);
    return records[records.length - 1]!;
  };
  return { run, records, errors, meter };
}

const CHAT = { model: 'gpt-4o', messages: [{ role: 'user', content: 'hello there' }] };

/** Begins a chat request with no key (nothing sent yet). */
function beginChat(meter: Meter) {
  const raw = Buffer.from(JSON.stringify(CHAT));
  return meter.begin({
    method: 'POST',
    path: '/v1/chat/completions',
    headers: {},
    upstream: 'default',
    upstreamUrl: new URL('http://127.0.0.1:9/v1'),
    info: inspectRequest('POST', '/v1/chat/completions', raw),
    requestBytes: raw.length,
    injectedUsage: false,
  });
}
const chatBody = (usage?: object) =>
  JSON.stringify({
    id: 'chatcmpl-1',
    model: 'gpt-4o-2024',
    choices: [{ index: 0, message: { role: 'assistant', content: 'hi!' }, finish_reason: 'stop' }],
    ...(usage ? { usage } : {}),
  });

describe('the meter', () => {
  it('builds one record with the reported partition, cost and a key fingerprint (never the key)', async () => {
    const h = harness();
    const r = await h.run('/v1/chat/completions', CHAT, 200, { 'content-type': 'application/json' }, [
      Buffer.from(
        chatBody({ prompt_tokens: 100, completion_tokens: 7, prompt_tokens_details: { cached_tokens: 40 } }),
      ),
    ]);
    expect(r).toMatchObject({
      operation: 'chat',
      usage_source: 'reported',
      input_tokens: 60,
      cache_read_tokens: 40,
      output_tokens: 7,
      cost_nanos: 107,
      response_model: 'gpt-4o-2024',
      finish_reason: 'stop',
      http_status: 200,
      error_type: null,
    });
    expect(r.key_id).toMatch(/^[0-9a-f]{12}$/);
    expect(JSON.stringify(r)).not.toContain('sk-secret-key');
  });

  it('decodes a gzip body whose Content-Encoding header is missing', async () => {
    const h = harness();
    const gz = gzipSync(Buffer.from(chatBody({ prompt_tokens: 10, completion_tokens: 3 })));
    const r = await h.run('/v1/chat/completions', CHAT, 200, { 'content-type': 'application/json' }, [
      gz.subarray(0, 1),
      gz.subarray(1),
    ]);
    expect(r).toMatchObject({ usage_source: 'reported', input_tokens: 10, output_tokens: 3 });
  });

  it('decodes an unlabelled gzip body that arrives in one chunk, and a plain body in one or many', async () => {
    const h = harness();
    const body = Buffer.from(chatBody({ prompt_tokens: 7, completion_tokens: 2 }));
    const json = { 'content-type': 'application/json' };
    const whole = await h.run('/v1/chat/completions', CHAT, 200, json, [gzipSync(body)]);
    expect(whole).toMatchObject({ usage_source: 'reported', input_tokens: 7, output_tokens: 2 });
    const plain = await h.run('/v1/chat/completions', CHAT, 200, json, [body]);
    expect(plain).toMatchObject({ usage_source: 'reported', input_tokens: 7, output_tokens: 2 });
    const bytes = [...body].map((b) => Buffer.from([b]));
    const split = await h.run('/v1/chat/completions', CHAT, 200, json, bytes);
    expect(split).toMatchObject({ usage_source: 'reported', input_tokens: 7, output_tokens: 2 });
  });

  it('estimates usage of a stream cut by a client abort, and says so', async () => {
    const h = harness();
    const sse =
      'data: {"id":"c","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"hello world"}}]}\n\n';
    const r = await h.run(
      '/v1/chat/completions',
      { ...CHAT, stream: true },
      200,
      { 'content-type': 'text/event-stream' },
      [Buffer.from(sse)],
      { kind: 'client_abort' },
    );
    expect(r.error_type).toBe('client_abort');
    expect(r.usage_source).toBe('estimated');
    expect(r.output_tokens).toBeGreaterThan(0);
    expect(r.input_tokens).toBeGreaterThan(0);
    expect(r.ttft_ms).not.toBeNull();
  });

  it('an error status without usage has usage_source none and no cost (not a zero cost)', async () => {
    const h = harness();
    const r = await h.run('/v1/chat/completions', CHAT, 402, { 'content-type': 'application/json' }, [
      Buffer.from(JSON.stringify({ error: { message: 'no money', type: 'x', code: 'insufficient_quota' } })),
    ]);
    expect(r).toMatchObject({ usage_source: 'none', cost_nanos: null, cost_source: null });
    expect(r.error_type).toBe('insufficient_quota');
    expect(r.input_tokens).toBeNull();
  });

  it('isolates a throwing sink: counted, and the other sinks still get the record', async () => {
    const bad: Sink = {
      name: 'bad',
      begin: () => {
        throw new Error('boom at begin');
      },
      write: () => {
        throw new Error('boom at write');
      },
      close: async () => {},
    };
    const h = harness([bad]);
    const r = await h.run('/v1/models', {}, 200, { 'content-type': 'application/json' }, [Buffer.from('{}')]);
    expect(r.operation).toBe('other');
    expect(r.usage_source).toBe('none');
    expect(h.errors.filter((c) => c === 'sink:bad')).toHaveLength(2);
  });

  it('a network failure before any response gives a record with no status', async () => {
    const h = harness();
    const m = beginChat(h.meter);
    m.finish({ kind: 'network', message: 'connect ECONNREFUSED 127.0.0.1:9' });
    m.finish({ kind: 'complete' }); // a second finish is ignored: exactly one record
    for (let i = 0; i < 100 && h.records.length === 0; i++) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, 20));
    expect(h.records).toHaveLength(1);
    expect(h.records[0]).toMatchObject({
      http_status: null,
      error_type: 'network',
      usage_source: 'none',
      key_id: null,
    });
  });

  it('a record that cannot be built still goes out once, as a minimal record naming the failure', async () => {
    // A price book whose result blows up when read: building the record throws after pricing.
    const broken: PriceBook = {
      price: () =>
        ({
          get cost_nanos(): number {
            throw new Error('corrupt price entry');
          },
        }) as unknown as ReturnType<PriceBook['price']>,
    };
    const h = harness([], broken);
    const r = await h.run('/v1/chat/completions', CHAT, 200, { 'content-type': 'application/json' }, [
      Buffer.from(chatBody({ prompt_tokens: 10, completion_tokens: 3 })),
    ]);
    expect(h.records).toHaveLength(1);
    expect(r).toMatchObject({
      operation: 'chat',
      http_status: 200,
      request_model: 'gpt-4o',
      usage_source: 'missing',
      input_tokens: null,
      output_tokens: null,
      cost_nanos: null,
    });
    expect(r.note).toContain('record_build_failed: corrupt price entry');
    expect(h.errors).toContain('record');
  });

  it('a request that reached the upstream but got no response head: input estimated, output unknown', async () => {
    const h = harness();
    for (const outcome of [
      { kind: 'client_abort', reachedUpstream: true },
      { kind: 'timeout', phase: 'idle', reachedUpstream: true },
      { kind: 'network', message: 'ECONNRESET', reachedUpstream: true },
    ] as MeterOutcome[]) {
      const m = beginChat(h.meter);
      await m.finish(outcome);
      const r = h.records[h.records.length - 1]!;
      expect(r.http_status).toBeNull();
      expect(r.usage_source).toBe('estimated');
      expect(r.input_tokens).toBeGreaterThan(0);
      expect(r.output_tokens).toBeNull();
    }
    // Never sent (connect failed): nothing can have been billed.
    const m = beginChat(h.meter);
    await m.finish({ kind: 'timeout', phase: 'connect', reachedUpstream: false });
    expect(h.records[h.records.length - 1]).toMatchObject({ usage_source: 'none', input_tokens: null });
  });
});
