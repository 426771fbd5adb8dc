/**
 * End to end through the proxy with the real SDK clients against the fake gateway (§1: "same
 * responses, byte for byte, same streaming"). Two identical gateways are used — one called
 * directly, one through tokenmeter — and every call is made on both in the same order, so their
 * sequence-numbered ids (chatcmpl-fake-N, x-request-id req-N) line up and bodies compare exactly.
 */
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SILENT_LOGGER } from '../../src/log.js';
import { createProxyServer, type ProxyServer } from '../../src/proxy/server.js';
import { startFakeGateway, type FakeGateway } from '../fake-gateway/index.js';
import { testSettings, upstreamSettings } from './helpers.js';
import { RecordingMeter } from './recording-meter.js';

let direct: FakeGateway;
let proxied: FakeGateway;
let proxy: ProxyServer;
let meter: RecordingMeter;
let proxyUrl: string;
const clients: {
  direct: { openai: OpenAI; anthropic: Anthropic };
  proxied: { openai: OpenAI; anthropic: Anthropic };
} = {} as never; // filled in beforeAll

beforeAll(async () => {
  direct = await startFakeGateway();
  proxied = await startFakeGateway();
  meter = new RecordingMeter();
  proxy = createProxyServer({
    settings: testSettings([upstreamSettings('default', `${proxied.url}/v1`)]),
    meter,
    log: SILENT_LOGGER,
  });
  const addr = await proxy.listen();
  proxyUrl = `http://127.0.0.1:${addr.port}`;
  const make = (openaiBase: string, anthropicBase: string) => ({
    openai: new OpenAI({ apiKey: 'sk-test', baseURL: openaiBase, maxRetries: 0 }),
    anthropic: new Anthropic({ apiKey: 'sk-test', baseURL: anthropicBase, maxRetries: 0 }),
  });
  // The one setting an app changes (§1): OPENAI_BASE_URL=…/v1, ANTHROPIC_BASE_URL=… (no /v1).
  clients.direct = make(`${direct.url}/v1`, direct.url);
  clients.proxied = make(`${proxyUrl}/v1`, proxyUrl);
});

afterAll(async () => {
  await proxy?.close(0);
  await direct?.close();
  await proxied?.close();
});

/** Response headers that legitimately differ per hop (connection management, date). */
const HOP_HEADERS = new Set(['date', 'connection', 'keep-alive', 'transfer-encoding']);
/** The fake's clock-derived header (seed 004 style reset timestamp) differs by milliseconds. */
const CLOCK_HEADERS = new Set(['x-ratelimit-reset']);
function endToEndHeaders(res: Response): Record<string, string> {
  const out: Record<string, string> = {};
  res.headers.forEach((v, k) => {
    if (!HOP_HEADERS.has(k) && !CLOCK_HEADERS.has(k)) out[k] = v;
  });
  return out;
}

async function compareRaw(call: (c: typeof clients.direct) => Promise<Response>): Promise<{ body: string }> {
  const a = await call(clients.direct);
  const b = await call(clients.proxied);
  const [ta, tb] = [await a.text(), await b.text()];
  expect(b.status).toBe(a.status);
  expect(tb).toBe(ta);
  expect(endToEndHeaders(b)).toEqual(endToEndHeaders(a));
  return { body: tb };
}

const messages = [{ role: 'user' as const, content: 'hello through the proxy' }];

describe('openai SDK through tokenmeter', () => {
  it('chat (non-stream): identical parsed result, body bytes, status and headers', async () => {
    const req = { model: 'gpt-4o', messages };
    const a = await clients.direct.openai.chat.completions.create(req);
    const b = await clients.proxied.openai.chat.completions.create(req);
    expect(b).toEqual(a);
    expect(b.usage?.prompt_tokens).toBeGreaterThan(0);
    const { body } = await compareRaw((c) => c.openai.chat.completions.create(req).asResponse());
    expect(JSON.parse(body).choices[0].message.content).toContain('hello');
    const rec = meter.requests.at(-1)!;
    expect(await rec.finished).toEqual({ kind: 'complete' });
    expect(rec.body()).toBe(body);
    expect(rec.input.injectedUsage).toBe(false);
  });

  it('chat stream that asks for usage: identical chunk sequence, untouched', async () => {
    const req = { model: 'gpt-4o', messages, stream: true as const, stream_options: { include_usage: true } };
    const collect = async (c: OpenAI) => {
      const out = [];
      for await (const chunk of await c.chat.completions.create(req)) out.push(chunk);
      return out;
    };
    const a = await collect(clients.direct.openai);
    const b = await collect(clients.proxied.openai);
    expect(b).toEqual(a);
    expect(b.at(-1)?.choices).toEqual([]);
    expect(b.at(-1)?.usage?.total_tokens).toBeGreaterThan(0);
    await compareRaw((c) => c.openai.chat.completions.create(req).asResponse());
    expect(meter.requests.at(-1)!.input.injectedUsage).toBe(false);
  });

  it('chat stream without usage: injected upstream, the usage-only chunk hidden from the client, seen by the meter', async () => {
    const req = { model: 'gpt-4o', messages, stream: true as const };
    const collect = async (c: OpenAI) => {
      const out = [];
      for await (const chunk of await c.chat.completions.create(req)) {
        // The client pattern from seeds/000: crashes on a usage-only chunk.
        expect(chunk.choices[0]!.delta).toBeDefined();
        out.push(chunk);
      }
      return out;
    };
    const a = await collect(clients.direct.openai);
    const b = await collect(clients.proxied.openai);
    // The only visible difference: with include_usage the upstream adds `"usage": null` to each
    // chunk (OpenAI does this too); the chunks themselves are the same, in the same order.
    const withoutUsageKey = (cs: typeof a) => cs.map(({ usage: _u, ...rest }) => rest);
    expect(withoutUsageKey(b)).toEqual(withoutUsageKey(a));
    expect(b.length).toBe(a.length);

    const sent = proxied.requests.at(-1)!;
    expect((sent.json as { stream_options?: unknown }).stream_options).toEqual({ include_usage: true });
    expect(sent.headers['accept-encoding']).toBe('identity');
    const rec = meter.requests.at(-1)!;
    await rec.finished;
    expect(rec.input.injectedUsage).toBe(true);
    // The meter saw the upstream bytes, usage chunk included.
    expect(rec.body()).toMatch(/"choices":\[\],"usage":\{[^}]*"total_tokens":\d+/);
  });

  it.each([
    ['groq-llama-3', ''],
    ['azure-gpt-4o', ''],
    ['qwen-cumulative-plus', ''],
    ['glm-4-plus', ''],
    ['moonshot-v1-8k', ''],
    ['gpt-4o', 'crlf'],
    ['gpt-4o', 'keepalive'],
    // The fake compresses even when asked for identity: the stream is decoded, stripped, re-encoded.
    ['gpt-4o', 'gzip'],
  ])(
    'injected stream for %s %s: same chunks as direct, none dropped but the usage-only one',
    async (model, scenario) => {
      const req = { model, messages, stream: true as const };
      const opts = scenario ? { headers: { 'x-fake-scenario': scenario } } : {};
      const collect = async (c: OpenAI) => {
        const out = [];
        for await (const chunk of await c.chat.completions.create(req, opts)) out.push(chunk);
        return out;
      };
      const a = await collect(clients.direct.openai);
      const b = await collect(clients.proxied.openai);
      const withoutUsageKey = (cs: typeof a) => cs.map(({ usage: _u, ...rest }) => rest);
      expect(withoutUsageKey(b)).toEqual(withoutUsageKey(a));
      // The meter still saw the usage-only chunk the client did not get.
      expect(meter.requests.at(-1)!.input.injectedUsage).toBe(true);
    },
  );

  it('MiniMax sends a usage-only chunk even unasked: with injection on it is removed too (documented)', async () => {
    const req = { model: 'minimax-m1', messages, stream: true as const };
    const collect = async (c: OpenAI) => {
      const out = [];
      for await (const chunk of await c.chat.completions.create(req)) out.push(chunk);
      return out;
    };
    const a = await collect(clients.direct.openai);
    const b = await collect(clients.proxied.openai);
    expect(a.at(-1)?.choices).toEqual([]);
    expect(b).toEqual(a.slice(0, -1));
    expect(b.every((c) => c.choices[0] !== undefined)).toBe(true);
  });

  it('embeddings and models list: identical', async () => {
    const req = { model: 'text-embedding-3-small', input: ['a b c', 'd e'] };
    expect(await clients.proxied.openai.embeddings.create(req)).toEqual(
      await clients.direct.openai.embeddings.create(req),
    );
    await compareRaw((c) => c.openai.embeddings.create(req).asResponse());
    const ids = async (c: OpenAI) => {
      const out: string[] = [];
      for await (const m of c.models.list()) out.push(m.id);
      return out;
    };
    const listed = await ids(clients.direct.openai);
    expect(await ids(clients.proxied.openai)).toEqual(listed);
    expect(listed.length).toBeGreaterThan(0);
    await compareRaw((c) => c.openai.models.list().asResponse());
  });

  it('error statuses pass through unchanged (status, body, headers)', async () => {
    for (const scenario of ['error-401', 'error-429', 'error-500', 'error-429-quota']) {
      const opts = { headers: { 'x-fake-scenario': scenario } };
      const req = { model: 'gpt-4o', messages };
      const errOf = async (c: OpenAI) =>
        c.chat.completions.create(req, opts).then(
          () => undefined,
          (e: unknown) => e as InstanceType<typeof OpenAI.APIError>,
        );
      const a = await errOf(clients.direct.openai);
      const b = await errOf(clients.proxied.openai);
      expect(a).toBeInstanceOf(OpenAI.APIError);
      expect(b?.status).toBe(a?.status);
      expect(b?.error).toEqual(a?.error);
      const raw = await compareRaw((c) =>
        fetch(`${c === clients.direct ? direct.url : proxyUrl}/v1/chat/completions`, {
          method: 'POST',
          headers: {
            authorization: 'Bearer sk-test',
            'content-type': 'application/json',
            'x-fake-scenario': scenario,
          },
          body: JSON.stringify(req),
        }),
      );
      expect(raw.body.length).toBeGreaterThan(0);
    }
  });

  it('an aborted stream is aborted upstream', async () => {
    const before = proxied.requests.length;
    const abortAfterFirst = async (c: OpenAI) => {
      const stream = await c.chat.completions.create(
        { model: 'gpt-4o', messages, stream: true },
        { headers: { 'x-fake-scenario': 'slow-stream', 'x-fake-delay-ms': '100' } },
      );
      for await (const _chunk of stream) {
        stream.controller.abort();
        break;
      }
    };
    await abortAfterFirst(clients.direct.openai); // keeps both gateways' request numbers in step
    await abortAfterFirst(clients.proxied.openai);
    const rec = meter.requests.at(-1)!;
    expect(await rec.finished).toEqual({ kind: 'client_abort', reachedUpstream: true });
    const upstreamSide = proxied.requests[before]!;
    for (let i = 0; i < 50 && !upstreamSide.aborted; i++) await new Promise((r) => setTimeout(r, 20));
    expect(upstreamSide.aborted).toBe(true);
    expect(upstreamSide.completed).toBe(false);
  });
});

describe('anthropic SDK through tokenmeter', () => {
  const req = { model: 'claude-sonnet-4-5', max_tokens: 64, messages };

  it('messages (non-stream): identical', async () => {
    const a = await clients.direct.anthropic.messages.create(req);
    const b = await clients.proxied.anthropic.messages.create(req);
    expect(b).toEqual(a);
    expect(b.usage.input_tokens).toBeGreaterThan(0);
    await compareRaw((c) => c.anthropic.messages.create(req).asResponse());
    expect(proxied.requests.at(-1)!.path).toBe('/v1/messages');
    // Auth headers reach the upstream exactly as the SDK sent them, whichever one it uses.
    for (const h of ['authorization', 'x-api-key', 'anthropic-version'])
      expect(proxied.requests.at(-1)!.headers[h]).toBe(direct.requests.at(-1)!.headers[h]);
  });

  it('messages stream: identical event sequence, never rewritten', async () => {
    const collect = async (c: Anthropic) => {
      const out = [];
      for await (const ev of await c.messages.create({ ...req, stream: true })) out.push(ev);
      return out;
    };
    const a = await collect(clients.direct.anthropic);
    const b = await collect(clients.proxied.anthropic);
    expect(b).toEqual(a);
    expect(b.map((e) => e.type)).toContain('message_delta');
    await compareRaw((c) => c.anthropic.messages.create({ ...req, stream: true }).asResponse());
    const rec = meter.requests.at(-1)!;
    expect(rec.input.info.operation).toBe('messages');
    expect(rec.input.injectedUsage).toBe(false);
  });

  it('errors keep the Anthropic shape and status', async () => {
    const errOf = async (c: Anthropic) =>
      c.messages.create(req, { headers: { 'x-fake-scenario': 'error-429' } }).then(
        () => undefined,
        (e: unknown) => e as InstanceType<typeof Anthropic.APIError>,
      );
    const a = await errOf(clients.direct.anthropic);
    const b = await errOf(clients.proxied.anthropic);
    expect(a?.status).toBe(429);
    expect(b?.status).toBe(429);
    expect(b?.error).toEqual(a?.error);
  });
});
