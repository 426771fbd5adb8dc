/**
 * Issue 4 "Done when", through the real `tokenmeter serve` child process and the real SDK clients:
 * every operation (streamed and not) gives exactly one audit row whose token breakdown,
 * usage_source, finish_reason, response_model, operation, stream, http_status and
 * upstream_request_id are what the fake gateway documents (test/fake-gateway/usage.ts).
 */
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { gunzipSync } from 'node:zlib';
import { createServer, type AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectedUsage, type FakeGateway, type Flavor } from '../fake-gateway/index.js';
import {
  closeWorld,
  orNull,
  rowByRequestId,
  serveConfig,
  startWorld,
  waitForRows,
  type Row,
  type ServeProcess,
  type TempDir,
} from './helpers.js';

const KEY = 'sk-e2e-records-secret';
// USD per 1M tokens; gpt-4o as the reference preset states it. One table feeds both the price file
// serve loads and the exact cost every reported row is checked against (`expectedCostNanos`).
interface TestPrice {
  input: number;
  output: number;
  cache_read?: number;
  cache_write?: number;
  cache_write_1h?: number;
}
const PRICE_TABLE: Record<string, TestPrice> = {
  'gpt-4o': { input: 2.5, output: 10, cache_read: 1.25 },
  'gpt-4o-mini': { input: 0.15, output: 0.6 },
  'o3-mini': { input: 1.1, output: 4.4, cache_read: 0.55 },
  'deepseek-chat': { input: 0.27, output: 1.1, cache_read: 0.07 },
  'glm-4-flash': { input: 0.1, output: 0.1 },
  'minimax-m1': { input: 0.4, output: 2.2 },
  'claude-haiku-4-5': { input: 3, output: 15, cache_read: 0.3, cache_write: 3.75, cache_write_1h: 6 },
  'text-embedding-3-small': { input: 0.02, output: 0 },
  'gpt-image-1': { input: 5, output: 40 },
  'groq-*': { input: 0.05, output: 0.08 },
  'moonshot-*': { input: 2, output: 5 },
  'qwen-cumulative-*': { input: 0.8, output: 2 },
  'deepseek-reasoner': { input: 0.55, output: 2.19, cache_read: 0.14 },
  'azure-gpt-4o': { input: 2.5, output: 10 },
};
const PRICES = `currency: USD
unit: 1M
prices:
${Object.entries(PRICE_TABLE)
  .map(([model, p]) => `  - ${JSON.stringify({ model, ...p })}`)
  .join('\n')}
`;

/** USD per 1M tokens → nanos per token (every price above has at most 3 decimals: exact). */
const nanosPerToken = (usdPer1M: number): bigint => BigInt(Math.round(usdPer1M * 1000));

/**
 * The cost a row must carry, by DESIGN.md §5.2 worked by hand in integers: uncached input, cache
 * reads and writes (5m and 1h parts), output (reasoning is part of output at the output price).
 */
function expectedCostNanos(model: string, row: Row): number {
  const key = Object.keys(PRICE_TABLE).find((k) =>
    k.endsWith('*') ? model.startsWith(k.slice(0, -1)) : k === model,
  );
  if (key === undefined) throw new Error(`no test price for ${model}`);
  const p = PRICE_TABLE[key]!;
  const n = (tokens: number | null) => BigInt(tokens ?? 0);
  const write1h = n(row.cache_write_1h_tokens);
  const total =
    n(row.input_tokens) * nanosPerToken(p.input) +
    n(row.cache_read_tokens) * nanosPerToken(p.cache_read ?? p.input) +
    (n(row.cache_write_tokens) - write1h) * nanosPerToken(p.cache_write ?? p.input) +
    write1h * nanosPerToken(p.cache_write_1h ?? p.cache_write ?? p.input) +
    n(row.output_tokens) * nanosPerToken(p.output);
  return Number(total);
}

let gateway: FakeGateway;
let serve: ServeProcess;
let tmp: TempDir;
let dbPath: string;
let openai: OpenAI;
let anthropic: Anthropic;
let deadPort: number;

/** A port on 127.0.0.1 that nothing listens on (bound once, then released). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  await new Promise((r) => server.close(r));
  return port;
}

beforeAll(async () => {
  ({ gateway, tmp, dbPath } = await startWorld('tm-e2e-records-', { 'prices.yaml': PRICES }));
  deadPort = await closedPort();
  serve = await serveConfig(
    tmp.dir,
    `db: audit.db
presets: false
prices: [prices.yaml]
upstreams:
  - { name: fake, url: "${gateway.url}/v1" }
  - { name: slow, url: "${gateway.url}/v1", prefix: /slow, idle_timeout: 400ms }
  - { name: dead, url: "http://127.0.0.1:${deadPort}/v1", prefix: /dead }
limits:
  max_models: 40
  max_apps: 3
`,
  );
  openai = new OpenAI({ baseURL: `${serve.base}/v1`, apiKey: KEY, maxRetries: 0 });
  anthropic = new Anthropic({ baseURL: serve.base, apiKey: KEY, maxRetries: 0 });
}, 60_000);

afterAll(async () => {
  if (serve !== undefined) expect(await serve.stop()).toBe(0);
  await closeWorld({ gateway, tmp });
});

/** Runs one request and returns the fake's request id for it plus its audit row (once flushed). */
async function one(send: () => Promise<unknown>): Promise<{ requestId: string; row: Row }> {
  const before = gateway.requests.length;
  await send();
  expect(gateway.requests.length).toBe(before + 1);
  const requestId = `req-${before + 1}`;
  const rows = await waitForRows(dbPath, before + 1);
  expect(rows).toHaveLength(before + 1);
  // An upstream that never answered sent no x-request-id: then the row is the one new row.
  const fresh = rows.filter((r) => !seenRowIds.has(r.id));
  for (const r of rows) seenRowIds.add(r.id);
  expect(fresh).toHaveLength(1);
  if (fresh[0]!.upstream_request_id === null) return { requestId, row: fresh[0]! };
  return { requestId, row: rowByRequestId(rows, requestId) };
}
const seenRowIds = new Set<string>();

type Reported = { operation: string; stream: boolean; finish: string | null; model: string | null };

/**
 * For `request` as `flavor` documents it: `(stream, send)` runs {@link one} and checks that its row
 * is exactly the reported usage, with `want` and `stream`. Returns the row.
 */
function reportedAs(
  flavor: Flavor,
  request: object,
  want: Omit<Reported, 'stream'>,
): (stream: boolean, send: () => Promise<unknown>) => Promise<Row> {
  return async (stream, send) => {
    const { requestId, row } = await one(send);
    expectReported(row, flavor, request, { ...want, stream, requestId });
    return row;
  };
}

/** POSTs `body` as JSON to serve's `path` with our key (plus `headers`), as a raw HTTP client would. */
function post(
  path: string,
  body: object,
  headers: Record<string, string> = {},
  signal?: AbortSignal,
): Promise<Response> {
  return fetch(`${serve.base}${path}`, {
    method: 'POST',
    signal,
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
}

async function drain(stream: AsyncIterable<unknown>): Promise<void> {
  for await (const _event of stream) {
    // Consume every event as an app would.
  }
}

function expectReported(
  row: Row,
  flavor: Flavor,
  request: object,
  want: Reported & { requestId: string },
): void {
  const e = expectedUsage(flavor, request);
  expect({
    operation: row.operation,
    stream: Boolean(row.stream),
    http_status: row.http_status,
    error_type: row.error_type,
    usage_source: row.usage_source,
    finish_reason: row.finish_reason,
    response_model: row.response_model,
    upstream_request_id: row.upstream_request_id,
    input_tokens: row.input_tokens,
    cache_read_tokens: row.cache_read_tokens,
    cache_write_tokens: row.cache_write_tokens,
    cache_write_1h_tokens: row.cache_write_1h_tokens,
    output_tokens: row.output_tokens,
    reasoning_tokens: row.reasoning_tokens,
    images: row.images,
  }).toEqual({
    operation: want.operation,
    stream: want.stream,
    http_status: 200,
    error_type: null,
    usage_source: 'reported',
    finish_reason: want.finish,
    response_model: want.model,
    upstream_request_id: want.requestId,
    input_tokens: e.input,
    cache_read_tokens: orNull(e.cacheRead),
    cache_write_tokens: orNull(e.cacheWrite),
    cache_write_1h_tokens: orNull(e.cacheWrite1h),
    output_tokens: orNull(e.output),
    reasoning_tokens: orNull(e.reasoning),
    images: orNull(e.images),
  });
  // Reported usage on a priced model is always costed, to the nano.
  expect(row.cost_source).toBe('computed');
  expect(row.cost_nanos).toBe(expectedCostNanos(row.request_model!, row));
  expect(row.cost_nanos).toBeGreaterThan(0);
}

type ChatRequest = OpenAI.ChatCompletionCreateParamsNonStreaming;

const chatReq = (model: string, text: string): ChatRequest => ({
  model,
  messages: [
    { role: 'system', content: 'be brief' },
    { role: 'user', content: text },
  ],
});

/** Sends `req` streamed with the openai SDK and reads the stream to its end. */
const streamChat = (req: ChatRequest) => async (): Promise<void> =>
  drain(await openai.chat.completions.create({ ...req, stream: true as const }));

describe('one exact row per request, every operation, through tokenmeter serve', () => {
  it('chat completions, non-streamed and streamed (openai SDK; usage injected for the stream)', async () => {
    const req = chatReq('gpt-4o', 'hello there general kenobi');
    const check = reportedAs('openai', req, { operation: 'chat', finish: 'stop', model: 'gpt-4o' });
    await check(false, () => openai.chat.completions.create(req));
    await check(true, streamChat(req));
  });

  it('reasoning model (o3-mini): cached and reasoning tokens', async () => {
    const req = chatReq('o3-mini', 'think about this');
    const check = reportedAs('openai-reasoning', req, {
      operation: 'chat',
      finish: 'stop',
      model: 'o3-mini',
    });
    const a = await check(false, () => openai.chat.completions.create(req));
    expect(a.reasoning_tokens).toBe(4);
  });

  it('DeepSeek cached request, non-streamed and streamed', async () => {
    const req = chatReq('deepseek-chat', 'what is the cache doing today');
    const check = reportedAs('deepseek', req, { operation: 'chat', finish: 'stop', model: 'deepseek-chat' });
    const a = await check(false, () => openai.chat.completions.create(req));
    expect(a.cache_read_tokens).toBeGreaterThan(0);
    await check(true, streamChat(req));
  });

  it('GLM stream (usage on the finish chunk) and MiniMax stream (zero placeholders, then usage)', async () => {
    const glm = chatReq('glm-4-flash', 'ni hao ma');
    const checkGlm = reportedAs('glm', glm, { operation: 'chat', finish: 'stop', model: 'glm-4-flash' });
    await checkGlm(true, streamChat(glm));
    const mm = chatReq('minimax-m1', 'one two three four five');
    const checkMm = reportedAs('minimax', mm, { operation: 'chat', finish: 'stop', model: 'minimax-m1' });
    await checkMm(true, streamChat(mm));
  });

  it('search completions (seed 004) via raw fetch, non-streamed and streamed', async () => {
    const req = chatReq('gpt-4o', 'search the web please');
    const check = reportedAs('openai', req, { operation: 'chat', finish: 'stop', model: 'gpt-4o' });
    await check(false, async () => {
      const res = await post('/v1/search/completions', req);
      expect(res.status).toBe(200);
      await res.arrayBuffer();
    });
    await check(true, async () => {
      const res = await post('/v1/search/completions', { ...req, stream: true });
      const text = await res.text();
      // The injected usage chunk is hidden from a client that did not ask for it (§3.3).
      expect(text).not.toMatch(/"choices":\[\],"usage":\{/);
      expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
    });
  });

  it('legacy completions, non-streamed and streamed', async () => {
    const req = { model: 'gpt-4o-mini', prompt: 'complete this sentence for me' };
    const check = reportedAs('completions', req, {
      operation: 'text_completion',
      finish: 'stop',
      model: 'gpt-4o-mini',
    });
    await check(false, () => openai.completions.create(req));
    await check(true, async () => drain(await openai.completions.create({ ...req, stream: true })));
  });

  it('responses, non-streamed and streamed (reasoning model)', async () => {
    const req = { model: 'o3-mini', instructions: 'answer shortly', input: 'why is the sky blue' };
    const check = reportedAs('responses', req, { operation: 'responses', finish: 'stop', model: 'o3-mini' });
    const a = await check(false, () => openai.responses.create(req));
    expect(a.reasoning_tokens).toBe(4);
    await check(true, async () => drain(await openai.responses.create({ ...req, stream: true })));
  });

  it('embeddings (float and base64)', async () => {
    const req = { model: 'text-embedding-3-small', input: ['alpha beta', 'gamma delta epsilon'] };
    const check = reportedAs('embeddings', req, {
      operation: 'embeddings',
      finish: null,
      model: 'text-embedding-3-small',
    });
    const a = await check(false, () => openai.embeddings.create(req));
    expect(a.input_tokens).toBe(5);
    // The SDK asks for base64 by default; the float form must meter the same.
    const b = await one(() => openai.embeddings.create({ ...req, encoding_format: 'float' }));
    expect(b.row.input_tokens).toBe(5);
    expect(b.row.usage_source).toBe('reported');
  });

  it('image generation (gpt-image-1, n=2): image and token usage', async () => {
    const req = { model: 'gpt-image-1', prompt: 'a red fox in snow', n: 2 };
    const check = reportedAs('images', req, { operation: 'image_generation', finish: null, model: null });
    // The images API body names no model.
    const a = await check(false, () => openai.images.generate(req));
    expect(a.images).toBe(2);
  });

  it('Anthropic messages, non-streamed and streamed (anthropic SDK): cache read/write incl. 1h', async () => {
    const req = {
      model: 'claude-haiku-4-5',
      max_tokens: 100,
      system: 'you are terse',
      messages: [{ role: 'user' as const, content: 'tell me a short story' }],
    };
    const check = reportedAs('anthropic', req, {
      operation: 'messages',
      finish: 'stop',
      model: 'claude-haiku-4-5',
    });
    const a = await check(false, () => anthropic.messages.create(req));
    expect(a.cache_write_1h_tokens).toBe(100);
    await check(true, async () => {
      const stream = anthropic.messages.stream(req);
      await stream.finalMessage();
    });
  });

  it('Anthropic stream with several cumulative message_delta reports (server tools): the last wins, never the sum', async () => {
    const req = {
      model: 'claude-haiku-4-5',
      max_tokens: 100,
      messages: [{ role: 'user' as const, content: 'search the web and tell me' }],
    };
    const e = expectedUsage('anthropic', req);
    const { row } = await one(async () => {
      const stream = anthropic.messages.stream(req, { headers: { 'x-fake-scenario': 'server-tools' } });
      const message = await stream.finalMessage();
      // The client saw the same final figure the row must keep.
      expect(message.usage.output_tokens).toBe(e.output);
    });
    expect([row.usage_source, row.input_tokens, row.output_tokens]).toEqual(['reported', e.input, e.output]);
    expect(row.cost_nanos).toBe(expectedCostNanos('claude-haiku-4-5', row));
  });

  it('error rows: 402, 429, 404 MODEL_NOT_FOUND, error inside a 200 stream', async () => {
    const cases: Array<[string, number, string]> = [
      ['error-402', 402, 'insufficient_quota'],
      ['error-429', 429, 'rate_limited'],
      ['error-404', 404, 'model_not_found'],
    ];
    for (const [scenario, status, errorType] of cases) {
      const { row, requestId } = await one(async () => {
        await expect(
          openai.chat.completions.create(chatReq('gpt-4o', 'x'), {
            headers: { 'x-fake-scenario': scenario },
          }),
        ).rejects.toMatchObject({ status });
      });
      expect([row.http_status, row.error_type, row.upstream_request_id]).toEqual([
        status,
        errorType,
        requestId,
      ]);
      // No usage was reported and none was billed: the cost is unknown (NULL), never 0.
      expect(row.cost_nanos).toBeNull();
    }
    const { row, requestId } = await one(async () => {
      const res = await post(
        '/v1/chat/completions',
        { ...chatReq('gpt-4o', 'a b c'), stream: true },
        { 'x-fake-scenario': 'error-in-stream' },
      );
      expect(res.status).toBe(200);
      expect(await res.text()).toContain('fake upstream error in the middle of the stream');
    });
    expect([row.http_status, row.error_type, row.stream, row.upstream_request_id]).toEqual([
      200,
      'stream_error',
      1,
      requestId,
    ]);
    expect(row.error_message).toContain('fake upstream error');
  });

  it('client abort mid-stream: row with client_abort and estimated usage', async () => {
    const controller = new AbortController();
    const { row } = await one(async () => {
      const res = await post(
        '/v1/chat/completions',
        { ...chatReq('gpt-4o', 'tell me everything'), stream: true },
        { 'x-fake-scenario': 'slow-stream', 'x-fake-delay-ms': '150', 'x-fake-chunks': '20' },
        controller.signal,
      );
      const reader = res.body!.getReader();
      let seen = '';
      // Read until some content arrived, then hang up.
      for (let i = 0; i < 10 && !seen.includes('"content":"echo:"'); i++) {
        const r = await reader.read();
        if (r.done) break;
        seen += new TextDecoder().decode(r.value);
      }
      expect(seen).toContain('"content":"echo:"');
      controller.abort();
    });
    expect([row.error_type, row.usage_source, row.stream]).toEqual(['client_abort', 'estimated', 1]);
    // Estimated from the request text and the streamed text seen so far, and costed from that.
    expect(row.input_tokens).toBeGreaterThan(0);
    expect(row.output_tokens).toBeGreaterThan(0);
    expect(row.cost_source).toBe('computed');
    expect(row.cost_nanos).toBe(row.input_tokens! * 2500 + row.output_tokens! * 10_000);
    // The upstream request was aborted too (no orphaned generation).
    const upstream = gateway.requests.at(-1)!;
    const deadline = Date.now() + 5000;
    while (!upstream.aborted && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(upstream.aborted).toBe(true);
  });

  it('gzip stream and gzip body without Content-Encoding: usage still reported', async () => {
    const req = chatReq('gpt-4o', 'compressed words here');
    const check = reportedAs('openai', req, { operation: 'chat', finish: 'stop', model: 'gpt-4o' });
    await check(true, async () => {
      const res = await post(
        '/v1/chat/completions',
        { ...req, stream: true },
        { 'x-fake-scenario': 'gzip', 'accept-encoding': 'gzip' },
      );
      expect(res.headers.get('content-encoding')).toBe('gzip');
      const text = await res.text(); // fetch decodes gzip
      expect(text).toContain('"content":"echo:"');
      // The injected usage chunk was removed from the gzip stream too (decoded, stripped, re-encoded).
      expect(text).not.toMatch(/"choices":\[\],"usage":\{/);
      expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
    });
    await check(false, async () => {
      const res = await post('/v1/chat/completions', req, { 'x-fake-scenario': 'gzip-no-header' });
      expect(res.headers.get('content-encoding')).toBeNull();
      // The app gets the upstream's bytes unchanged: still gzip.
      const bytes = Buffer.from(await res.arrayBuffer());
      expect(JSON.parse(gunzipSync(bytes).toString('utf8'))).toMatchObject({ model: 'gpt-4o' });
    });
  });

  it('gzip stream without Content-Encoding: bytes untouched, usage still reported', async () => {
    const req = chatReq('gpt-4o', 'hidden gzip stream');
    const check = reportedAs('openai', req, { operation: 'chat', finish: 'stop', model: 'gpt-4o' });
    await check(true, async () => {
      const res = await post(
        '/v1/chat/completions',
        { ...req, stream: true },
        { 'x-fake-scenario': 'gzip-no-header' },
      );
      expect(res.headers.get('content-encoding')).toBeNull();
      const bytes = Buffer.from(await res.arrayBuffer());
      expect([bytes[0], bytes[1]]).toEqual([0x1f, 0x8b]);
      expect(gunzipSync(bytes).toString('utf8')).toContain('data: [DONE]');
    });
  });

  it('no-usage stream: estimated usage, cost computed from the estimate', async () => {
    const req = chatReq('gpt-4o', 'nobody counts these words');
    const { row } = await one(async () =>
      drain(
        await openai.chat.completions.create(
          { ...req, stream: true as const },
          {
            headers: { 'x-fake-scenario': 'no-usage' },
          },
        ),
      ),
    );
    expect([row.usage_source, row.error_type, row.finish_reason]).toEqual(['estimated', null, 'stop']);
    expect(row.input_tokens).toBeGreaterThan(0);
    // "echo: nobody counts these words" is 5 words; a real tokenizer gives at least that many.
    expect(row.output_tokens).toBeGreaterThanOrEqual(5);
    expect(row.cost_source).toBe('computed');
    expect(row.cost_nanos).toBe(row.input_tokens! * 2500 + row.output_tokens! * 10_000);
  });

  it('GET /v1/models: operation other, usage none, no cost', async () => {
    const { row, requestId } = await one(() => openai.models.list());
    expect({
      operation: row.operation,
      method: row.method,
      usage_source: row.usage_source,
      http_status: row.http_status,
      cost_nanos: row.cost_nanos,
      cost_source: row.cost_source,
      input_tokens: row.input_tokens,
      upstream_request_id: row.upstream_request_id,
    }).toEqual({
      operation: 'other',
      method: 'GET',
      usage_source: 'none',
      http_status: 200,
      cost_nanos: null,
      cost_source: null,
      input_tokens: null,
      upstream_request_id: requestId,
    });
  });
});

describe('gateway quirks and failure classes, through tokenmeter serve', () => {
  const chatFlavors: Array<[string, Flavor]> = [
    ['groq-llama-3.1-8b', 'groq'],
    ['moonshot-v1-8k', 'moonshot'],
    ['qwen-cumulative-plus', 'qwen-cumulative'],
    ['deepseek-reasoner', 'deepseek-reasoner'],
    ['azure-gpt-4o', 'azure'],
  ];
  it.each(chatFlavors)('%s: streamed and not, usage exactly as documented', async (model, flavor) => {
    const req = chatReq(model, 'quirky flavor words here');
    const check = reportedAs(flavor, req, { operation: 'chat', finish: 'stop', model });
    await check(false, () => openai.chat.completions.create(req));
    await check(true, streamChat(req));
  });

  it.each(['keepalive', 'crlf', 'split-writes', 'no-done', 'big-event'])(
    'stream scenario %s: usage still reported',
    async (scenario) => {
      const req = chatReq('gpt-4o', `scenario ${scenario} words`);
      const headers: Record<string, string> = { 'x-fake-scenario': scenario };
      if (scenario === 'split-writes') headers['x-fake-split-bytes'] = '7';
      if (scenario === 'big-event') headers['x-fake-event-bytes'] = String(9 * 1024 * 1024);
      const check = reportedAs('openai', req, { operation: 'chat', finish: 'stop', model: 'gpt-4o' });
      await check(true, async () => {
        const res = await post('/v1/chat/completions', { ...req, stream: true }, headers);
        expect(res.status).toBe(200);
        expect(await res.text()).toContain('"finish_reason":"stop"');
      });
    },
  );

  it('max-tokens: finish_reason length / max_tokens→length / incomplete→length', async () => {
    const opts = { headers: { 'x-fake-scenario': 'max-tokens' } };
    const chat = await one(() => openai.chat.completions.create(chatReq('gpt-4o', 'long'), opts));
    expect(chat.row.finish_reason).toBe('length');
    const msg = await one(() =>
      anthropic.messages.create(
        { model: 'claude-haiku-4-5', max_tokens: 5, messages: [{ role: 'user', content: 'long' }] },
        opts,
      ),
    );
    expect(msg.row.finish_reason).toBe('length');
    const resp = await one(() => openai.responses.create({ model: 'o3-mini', input: 'long' }, opts));
    expect(resp.row.finish_reason).toBe('length');
  });

  it('error classes: quota variants, auth, 5xx, 504, MiniMax base_resp, Anthropic shapes', async () => {
    const cases: Array<{
      scenario?: string;
      key?: string;
      status: number;
      type: string;
      anthropic?: boolean;
    }> = [
      { scenario: 'error-429-quota', status: 429, type: 'insufficient_quota' },
      { scenario: 'error-arrearage', status: 400, type: 'insufficient_quota' },
      { scenario: 'error-403-quota', status: 403, type: 'insufficient_quota' },
      { key: 'sk-bad-key', status: 401, type: 'auth' },
      { scenario: 'error-500', status: 500, type: 'upstream_error' },
      { scenario: 'error-502', status: 502, type: 'upstream_error' },
      { scenario: 'error-504', status: 504, type: 'timeout' },
      { scenario: 'error-400', status: 400, type: 'bad_request' },
      { scenario: 'error-429', status: 429, type: 'rate_limited', anthropic: true },
      { scenario: 'error-402', status: 402, type: 'insufficient_quota', anthropic: true },
      { key: 'sk-bad-key', status: 401, type: 'auth', anthropic: true },
    ];
    for (const c of cases) {
      const headers = c.scenario === undefined ? {} : { 'x-fake-scenario': c.scenario };
      const { row } = await one(async () => {
        const call = c.anthropic
          ? new Anthropic({ baseURL: serve.base, apiKey: c.key ?? KEY, maxRetries: 0 }).messages.create(
              { model: 'claude-haiku-4-5', max_tokens: 5, messages: [{ role: 'user', content: 'x' }] },
              { headers },
            )
          : new OpenAI({
              baseURL: `${serve.base}/v1`,
              apiKey: c.key ?? KEY,
              maxRetries: 0,
            }).chat.completions.create(chatReq('gpt-4o', 'x'), { headers });
        await expect(call).rejects.toMatchObject({ status: c.status });
      });
      expect([c.scenario ?? c.key, row.http_status, row.error_type]).toEqual([
        c.scenario ?? c.key,
        c.status,
        c.type,
      ]);
      expect(row.cost_nanos).toBeNull();
    }
    // MiniMax signals running out of money inside a 200 (body and stream).
    for (const stream of [false, true]) {
      const { row } = await one(async () => {
        const res = await post(
          '/v1/chat/completions',
          { ...chatReq('minimax-m1', 'x'), stream },
          { 'x-fake-scenario': 'minimax-base-resp-error' },
        );
        expect(res.status).toBe(200);
        await res.arrayBuffer();
      });
      expect([stream, row.http_status, row.error_type]).toEqual([stream, 200, 'insufficient_quota']);
    }
    // Anthropic error event inside a 200 stream.
    const { row } = await one(async () => {
      const stream = anthropic.messages.stream(
        { model: 'claude-haiku-4-5', max_tokens: 50, messages: [{ role: 'user', content: 'a b c' }] },
        { headers: { 'x-fake-scenario': 'error-in-stream' } },
      );
      await expect(stream.finalMessage()).rejects.toBeDefined();
    });
    expect([row.http_status, row.error_type, row.stream]).toEqual([200, 'stream_error', 1]);
  });

  it('upstream reset mid-stream and idle timeouts are recorded once with their class', async () => {
    const reset = await one(async () => {
      const res = await post(
        '/v1/chat/completions',
        { ...chatReq('gpt-4o', 'reset me please'), stream: true },
        { 'x-fake-scenario': 'reset-mid-stream', 'x-fake-reset-after': '3' },
      );
      // The client sees a broken stream, not a clean end.
      await expect(res.text()).rejects.toBeDefined();
    });
    // §4.4: `network` is "cannot reach upstream"; a 200 stream the upstream broke is its error.
    expect([reset.row.error_type, reset.row.http_status, reset.row.usage_source]).toEqual([
      'upstream_error',
      200,
      'estimated',
    ]);

    const hang = await one(async () => {
      const res = await post('/slow/v1/chat/completions', chatReq('gpt-4o', 'hang'), {
        'x-fake-scenario': 'hang',
      });
      expect(res.status).toBe(504);
      await res.arrayBuffer();
    });
    // The client got our 504; the row's http_status is the upstream's, null when no head came (record.ts).
    expect([hang.row.upstream, hang.row.error_type, hang.row.http_status]).toEqual(['slow', 'timeout', null]);
    expect(hang.row.cost_nanos).toBeNull();

    const afterHead = await one(async () => {
      const res = await post(
        '/slow/v1/chat/completions',
        { ...chatReq('gpt-4o', 'hang after head'), stream: true },
        { 'x-fake-scenario': 'hang-after-head' },
      );
      expect(res.status).toBe(200);
      await expect(res.text()).rejects.toBeDefined();
    });
    expect([afterHead.row.error_type, afterHead.row.http_status]).toEqual(['timeout', 200]);
  });

  it('metric labels stay bounded: unknown models and apps beyond the limits become "other"', async () => {
    for (let i = 0; i < 45; i++) {
      await one(() =>
        openai.chat.completions.create(chatReq(`random-model-${i}`, 'x'), {
          headers: { 'x-tokenmeter-app': `app-${i % 6}` },
        }),
      );
    }
    const metrics = await (await fetch(`${serve.base}/metrics`)).text();
    const values = (label: string): Set<string> =>
      new Set(
        metrics
          .split('\n')
          .filter((l) => l.startsWith('tokenmeter_requests_total{'))
          .map((l) => new RegExp(`[{,]${label}="([^"]*)"`).exec(l)?.[1] ?? ''),
      );
    const models = values('model');
    expect(models.size).toBeLessThanOrEqual(41);
    expect(models.has('other')).toBe(true);
    const apps = values('app');
    // `default` is always kept, then 3 others ("my-app" may or may not be among them), then other.
    expect(apps.has('other')).toBe(true);
    expect(apps.size).toBeLessThanOrEqual(5);
    // The audit log keeps the real names.
    const rows = await waitForRows(dbPath, gateway.requests.length);
    expect(rows.filter((r) => r.request_model?.startsWith('random-model-'))).toHaveLength(45);
  });

  it('attribution: x-tokenmeter-app is stripped before the upstream; user lands on the row', async () => {
    const { row } = await one(() =>
      openai.chat.completions.create(
        { ...chatReq('gpt-4o', 'who am i'), user: 'user-42' },
        {
          headers: { 'x-tokenmeter-app': 'my-app' },
        },
      ),
    );
    expect([row.app, row.user]).toEqual(['my-app', 'user-42']);
    expect(gateway.requests.at(-1)!.headers['x-tokenmeter-app']).toBeUndefined();
  });
});

describe('the whole run', () => {
  it('exactly one row per request overall, and no key in the DB or the log', async () => {
    const rows = await waitForRows(dbPath, gateway.requests.length);
    expect(rows).toHaveLength(gateway.requests.length);
    // Every answered request once; the one the fake never answered (`hang`) has no request id.
    const answered = gateway.requests
      .map((r, i) => ({ r, id: `req-${i + 1}` }))
      .filter(({ r }) => r.headers['x-fake-scenario'] !== 'hang');
    expect(gateway.requests.length - answered.length).toBe(1);
    const ids = rows.map((r) => r.upstream_request_id);
    expect(ids.filter((id) => id !== null).sort()).toEqual(answered.map(({ id }) => id).sort());
    expect(ids.filter((id) => id === null)).toHaveLength(1);
    for (const secret of [KEY, 'sk-bad-key']) {
      expect(JSON.stringify(rows)).not.toContain(secret);
      expect(serve.stderr()).not.toContain(secret);
    }
    // Two keys were used (ours and the bad one): two fingerprints, nothing else.
    const keyIds = new Set(rows.map((r) => r.key_id));
    expect(keyIds.size).toBe(2);
    for (const id of keyIds) expect(id).toMatch(/^[0-9a-f]{12}$/);
  });
});

// Last: this request never reaches the fake gateway, so rows outnumber its requests from here on.
describe('an upstream that cannot be reached', () => {
  it('unreachable upstream: the client gets 502, the row says network', async () => {
    const before = (await waitForRows(dbPath, 0)).length;
    const res = await post('/dead/v1/chat/completions', chatReq('gpt-4o', 'anyone there'));
    expect(res.status).toBe(502);
    const text = await res.text();
    expect(text).toContain('dead');
    expect(text).not.toContain(KEY);
    const rows = await waitForRows(dbPath, before + 1);
    expect(rows).toHaveLength(before + 1);
    const row = rows.find((r) => !seenRowIds.has(r.id))!;
    seenRowIds.add(row.id);
    expect([row.upstream, row.error_type, row.http_status, row.cost_nanos]).toEqual([
      'dead',
      'network',
      null,
      null,
    ]);
  });
});
