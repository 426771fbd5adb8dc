import { spawn } from 'node:child_process';
import http from 'node:http';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  expectedUsage,
  parseSse,
  rawRequest,
  sseJson,
  startFakeGateway,
  type FakeGateway,
  type ReceivedRequest,
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
const chatUrl = (): string => `${gateway.url}/v1/chat/completions`;

function chat(scenario: string, body: Json = {}, headers: Record<string, string> = {}) {
  return rawRequest(chatUrl(), {
    headers: { ...auth, 'x-fake-scenario': scenario, ...headers },
    body: { model: 'gpt-4o', messages, ...body },
  });
}

async function waitFor(predicate: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (predicate()) return;
    await sleep(10);
  }
  throw new Error(`timed out waiting for ${what}`);
}

function lastRecord(): ReceivedRequest {
  const record = gateway.requests.at(-1);
  if (record === undefined) throw new Error('no request recorded');
  return record;
}

describe('auth and common headers', () => {
  it.each([
    ['missing key', {}],
    ['sk-bad key', { authorization: 'Bearer sk-bad-123' }],
    ['key without sk-', { authorization: 'Bearer nope' }],
  ])('401 for %s, OpenAI shape', async (_name, headers) => {
    const response = await rawRequest(chatUrl(), { headers, body: { model: 'gpt-4o', messages } });
    expect(response.status).toBe(401);
    expect(JSON.parse(response.body.toString())).toEqual({
      error: {
        message: 'Incorrect API key provided',
        type: 'invalid_request_error',
        code: 'invalid_api_key',
      },
    });
  });

  it('accepts x-api-key and api-key; 401 on /messages is Anthropic-shaped', async () => {
    for (const headers of [{ 'x-api-key': 'sk-1' }, { 'api-key': 'sk-2' }] as Record<string, string>[]) {
      const ok = await rawRequest(chatUrl(), { headers, body: { model: 'gpt-4o', messages } });
      expect(ok.status).toBe(200);
    }
    const denied = await rawRequest(`${gateway.url}/v1/messages`, {
      body: { model: 'claude-x', max_tokens: 1, messages },
    });
    expect(denied.status).toBe(401);
    expect(JSON.parse(denied.body.toString())).toMatchObject({
      type: 'error',
      error: { type: 'authentication_error' },
    });
  });

  it('sets x-request-id req-<n> and rate-limit headers on every response, errors included', async () => {
    const ok = await chat('');
    const n = gateway.requests.length;
    expect(ok.headers['x-request-id']).toBe(`req-${n}`);
    expect(ok.headers['x-ratelimit-limit-requests']).toBe('60');
    expect(ok.headers['x-ratelimit-remaining-requests']).toBe(String(Math.max(0, 60 - n)));
    expect(ok.headers['x-ratelimit-limit-tokens']).toBe('100000');
    expect(ok.headers['x-ratelimit-remaining-tokens']).toBe(String(Math.max(0, 100000 - 1000 * n)));
    const failed = await chat('error-500');
    expect(failed.headers['x-request-id']).toBe(`req-${n + 1}`);
    expect(failed.headers['x-ratelimit-remaining-requests']).toBeDefined();
  });

  it('unknown paths and methods get a 404 JSON', async () => {
    const response = await rawRequest(`${gateway.url}/v1/files`, { headers: auth });
    expect(response.status).toBe(404);
    expect(response.headers['content-type']).toBe('application/json');
    expect(JSON.parse(response.body.toString())).toMatchObject({ error: { code: 'unknown_url' } });
    const wrongMethod = await rawRequest(chatUrl(), { method: 'GET', headers: auth });
    expect(wrongMethod.status).toBe(404);
  });

  it('records method, path with query, headers, body and json', async () => {
    const body = { model: 'gpt-4o', messages };
    await rawRequest(`${chatUrl()}?api-version=2024-10-21`, {
      headers: { ...auth, 'x-custom': 'yes' },
      body,
    });
    const record = lastRecord();
    expect(record.method).toBe('POST');
    expect(record.path).toBe('/v1/chat/completions?api-version=2024-10-21');
    expect(record.headers['x-custom']).toBe('yes');
    expect(record.body.toString()).toBe(JSON.stringify(body));
    expect(record.json).toEqual(body);
    expect(record.completed).toBe(true);
    expect(record.aborted).toBe(false);
  });
});

describe('error scenarios', () => {
  it.each([
    [400, { error: { code: 'INVALID_PARAMS' } }],
    [402, { error: { type: 'invalid_request_error', code: 'insufficient_quota' } }],
    [403, { error: { code: 'FORBIDDEN' } }],
    [404, { error: { code: 'MODEL_NOT_FOUND' } }],
    [500, { error: { code: 'INTERNAL_ERROR' } }],
    [502, { error: { code: 'UPSTREAM_ERROR' } }],
    [504, { error: { code: 'GATEWAY_TIMEOUT' } }],
  ])('error-%i has the seed body', async (status, shape) => {
    const response = await chat(`error-${status}`);
    expect(response.status).toBe(status);
    const body = JSON.parse(response.body.toString()) as Json;
    expect(body).toMatchObject(shape);
    if ([400, 403, 404, 500, 502, 504].includes(status)) {
      expect((body.error as Json).request_id).toBe(response.headers['x-request-id']);
    }
  });

  it('error-429 carries seed 002/004 rate-limit headers and Retry-After: 60', async () => {
    const response = await chat('error-429', { stream: true });
    expect(response.status).toBe(429);
    expect(response.headers['retry-after']).toBe('60');
    expect(response.headers['x-ratelimit-limit']).toBe('60');
    expect(response.headers['x-ratelimit-remaining']).toBe('0');
    expect(Number.isNaN(Date.parse(String(response.headers['x-ratelimit-reset'])))).toBe(false);
    expect(JSON.parse(response.body.toString())).toMatchObject({ error: { code: 'RATE_LIMIT' } });
  });

  it('error-429-quota and model-name selection', async () => {
    const response = await rawRequest(chatUrl(), {
      headers: auth,
      body: { model: 'error-429-quota', messages },
    });
    expect(response.status).toBe(429);
    expect(JSON.parse(response.body.toString())).toMatchObject({
      error: { code: 'insufficient_quota', type: 'insufficient_quota' },
    });
  });

  it.each([
    ['error-arrearage', 400, { error: { code: 'Arrearage', type: 'Arrearage' } }],
    ['error-403-quota', 403, { error: { code: 'insufficient_user_quota' } }],
  ])('%s: status %i and the gateway body', async (scenario, status, shape) => {
    const response = await chat(scenario);
    expect(response.status).toBe(status);
    expect(JSON.parse(response.body.toString())).toMatchObject(shape);
  });

  it.each([
    [402, 'billing_error'],
    [429, 'rate_limit_error'],
    [500, 'api_error'],
    [529, 'overloaded_error'],
  ])('Anthropic error-%i → %s', async (status, type) => {
    const response = await rawRequest(`${gateway.url}/v1/messages`, {
      headers: { 'x-api-key': 'sk-test', 'x-fake-scenario': `error-${status}` },
      body: { model: 'claude-x', max_tokens: 1, messages },
    });
    expect(response.status).toBe(status);
    expect(JSON.parse(response.body.toString())).toMatchObject({ type: 'error', error: { type } });
  });

  it('error-in-stream: a data: {"error":…} event inside a 200 stream, no [DONE]', async () => {
    const response = await chat('error-in-stream', { stream: true });
    expect(response.status).toBe(200);
    const events = sseJson(response.body.toString());
    expect(events.at(-1)).toMatchObject({ error: { code: 'stream_error' } });
    expect(response.body.toString()).not.toContain('[DONE]');
  });

  it('error-in-stream on /messages and /responses uses an error event', async () => {
    const messagesResponse = await rawRequest(`${gateway.url}/v1/messages`, {
      headers: { 'x-api-key': 'sk-test', 'x-fake-scenario': 'error-in-stream' },
      body: { model: 'claude-x', max_tokens: 1, stream: true, messages },
    });
    expect(parseSse(messagesResponse.body.toString()).at(-1)).toMatchObject({ event: 'error' });
    const responsesResponse = await rawRequest(`${gateway.url}/v1/responses`, {
      headers: { ...auth, 'x-fake-scenario': 'error-in-stream' },
      body: { model: 'gpt-4o', input: 'x', stream: true },
    });
    expect(parseSse(responsesResponse.body.toString()).at(-1)).toMatchObject({ event: 'error' });
  });

  it('minimax-base-resp-error: 200 with base_resp.status_code 1008, body and stream', async () => {
    const body = await chat('', { model: 'minimax-base-resp-error+MiniMax-M2' });
    expect(body.status).toBe(200);
    expect(JSON.parse(body.body.toString())).toMatchObject({ base_resp: { status_code: 1008 } });
    const stream = await chat('minimax-base-resp-error', { model: 'MiniMax-M2', stream: true });
    expect(stream.status).toBe(200);
    expect(sseJson(stream.body.toString())).toEqual([
      expect.objectContaining({ base_resp: { status_code: 1008, status_msg: 'insufficient balance' } }),
    ]);
  });
});

describe('transport scenarios', () => {
  it('gzip: Content-Encoding gzip and really gzip, stream and body', async () => {
    const stream = await chat('gzip', { stream: true });
    expect(stream.headers['content-encoding']).toBe('gzip');
    expect(stream.body.subarray(0, 2)).toEqual(Buffer.from([0x1f, 0x8b]));
    const text = gunzipSync(stream.body).toString();
    expect(text).toMatch(/data: \[DONE\]\n\n$/);
    const body = await chat('gzip');
    expect(body.headers['content-encoding']).toBe('gzip');
    expect(Number(body.headers['content-length'])).toBe(body.body.length);
    expect(JSON.parse(gunzipSync(body.body).toString())).toMatchObject({ object: 'chat.completion' });
  });

  it('gzip streams are flushed per event (the first event is readable before the end)', async () => {
    const chunks: Buffer[] = [];
    const req = http.request(chatUrl(), {
      method: 'POST',
      headers: {
        ...auth,
        'x-fake-scenario': 'gzip,slow-stream',
        'x-fake-delay-ms': '500',
        'content-type': 'application/json',
      },
      agent: false,
    });
    req.end(JSON.stringify({ model: 'gpt-4o', messages, stream: true }));
    const [res] = (await once(req, 'response')) as [http.IncomingMessage];
    res.on('data', (chunk: Buffer) => chunks.push(chunk));
    // The first event decodes from the bytes received so far, long before the stream ends.
    await waitFor(
      () => gunzipPartial(Buffer.concat(chunks)).includes('"role":"assistant"'),
      'first gzip event',
    );
    expect(lastRecord().completed).toBe(false);
    req.destroy();
  });

  it('gzip-no-header: gzip bytes, no Content-Encoding', async () => {
    const response = await chat('gzip-no-header', { stream: true });
    expect(response.headers['content-encoding']).toBeUndefined();
    expect(gunzipSync(response.body).toString()).toContain('data: [DONE]');
  });

  it('crlf: every line ends with CRLF', async () => {
    const text = (await chat('crlf', { stream: true })).body.toString();
    expect(text).toContain('\r\n\r\n');
    expect(text.replace(/\r\n/g, '')).not.toMatch(/[\r\n]/);
  });

  it('keepalive: ": ping" comments between events', async () => {
    const text = (await chat('keepalive', { stream: true })).body.toString();
    const pings = text.split(': ping\n\n').length - 1;
    expect(pings).toBe(sseJson(text).length + 2); // before every event incl. [DONE], and at the end
  });

  it('no-done: the stream ends without [DONE]', async () => {
    const text = (await chat('no-done', { stream: true })).body.toString();
    expect(text).not.toContain('[DONE]');
    expect(sseJson(text).length).toBeGreaterThan(2);
  });

  it('no-usage: never reports usage, even when asked', async () => {
    const stream = await chat('no-usage', { stream: true, stream_options: { include_usage: true } });
    expect(stream.body.toString()).not.toMatch(/"usage":\{/);
    const body = await chat('no-usage');
    expect((JSON.parse(body.body.toString()) as Json).usage).toBeUndefined();
    const glm = await chat('no-usage', { model: 'glm-4', stream: true });
    expect(glm.body.toString()).not.toContain('"usage"');
    const anthropic = await rawRequest(`${gateway.url}/v1/messages`, {
      headers: { 'x-api-key': 'sk-test', 'x-fake-scenario': 'no-usage' },
      body: { model: 'claude-x', max_tokens: 1, stream: true, messages },
    });
    expect(anthropic.body.toString()).not.toContain('"usage"');
  });

  it('cost: the gateway states usage.cost', async () => {
    const request = { model: 'deepseek-chat', messages };
    const response = await chat('cost', request);
    const usage = (JSON.parse(response.body.toString()) as Json).usage as Json;
    const expected = expectedUsage('deepseek', request);
    expect(usage.cost).toBe(expected.reportedCost);
    expect(usage.cost).toBe((13 + 2 * 4) / 1e6);
  });

  it('max-tokens: finish_reason length, stop_reason max_tokens, response.incomplete', async () => {
    const stream = sseJson((await chat('max-tokens', { stream: true })).body.toString());
    expect(stream.map((c) => (c.choices as Json[])[0]?.finish_reason).filter(Boolean)).toEqual(['length']);
    const body = JSON.parse((await chat('max-tokens')).body.toString()) as Json;
    expect((body.choices as Json[])[0]?.finish_reason).toBe('length');
    const anthropic = await rawRequest(`${gateway.url}/v1/messages`, {
      headers: { 'x-api-key': 'sk-test', 'x-fake-scenario': 'max-tokens' },
      body: { model: 'claude-x', max_tokens: 1, stream: true, messages },
    });
    expect(sseJson(anthropic.body.toString()).find((e) => e.type === 'message_delta')).toMatchObject({
      delta: { stop_reason: 'max_tokens' },
    });
    const request = { model: 'gpt-4o', input: 'x', stream: true };
    const responses = await rawRequest(`${gateway.url}/v1/responses`, {
      headers: { ...auth, 'x-fake-scenario': 'max-tokens' },
      body: request,
    });
    const last = parseSse(responses.body.toString()).at(-1);
    expect(last?.event).toBe('response.incomplete');
    expect(JSON.parse(last?.data ?? '{}')).toMatchObject({
      response: { status: 'incomplete', usage: expectedUsage('responses', request).wire },
    });
  });

  it('x-fake-delay-ms delays a non-streamed answer once', async () => {
    const started = Date.now();
    const response = await chat('', {}, { 'x-fake-delay-ms': '120' });
    expect(response.status).toBe(200);
    expect(Date.now() - started).toBeGreaterThanOrEqual(115);
  });

  it('split-writes: the same bytes arrive in many small pieces, split inside UTF-8 too', async () => {
    const chunks: Buffer[] = [];
    const req = http.request(chatUrl(), {
      method: 'POST',
      headers: {
        ...auth,
        'x-fake-scenario': 'split-writes',
        'x-fake-split-bytes': '2',
        'content-type': 'application/json',
      },
      agent: false,
    });
    req.end(
      JSON.stringify({ model: 'gpt-4o', stream: true, messages: [{ role: 'user', content: '你好 世界' }] }),
    );
    const [res] = (await once(req, 'response')) as [http.IncomingMessage];
    res.on('data', (chunk: Buffer) => chunks.push(chunk));
    await once(res, 'end');
    const text = Buffer.concat(chunks).toString();
    expect(text).toMatch(/data: \[DONE\]\n\n$/);
    const content = sseJson(text)
      .map((c) => ((c.choices as Json[])[0]?.delta as Json | undefined)?.content ?? '')
      .join('');
    expect(content).toBe('echo: 你好 世界');
    // Loopback may coalesce some writes under load; never all of them.
    expect(chunks.length).toBeGreaterThan(1);
    const body = await chat('split-writes', { messages: [{ role: 'user', content: '你好' }] });
    expect(JSON.parse(body.body.toString())).toMatchObject({
      choices: [{ message: { content: 'echo: 你好' } }],
    });
  });

  it('x-fake-chunks sets the number of content chunks', async () => {
    const request = { model: 'gpt-4o', messages, stream: true };
    const response = await chat('', request, { 'x-fake-chunks': '7' });
    const contents = sseJson(response.body.toString()).filter(
      (c) => typeof ((c.choices as Json[])[0]?.delta as Json | undefined)?.content === 'string',
    );
    expect(contents).toHaveLength(8); // role chunk (content "") + 7 pieces
    expect(expectedUsage('openai', request, { chunks: 7 }).output).toBe(7);
    const merged = await chat('', { ...request, stream: false }, { 'x-fake-chunks': '2' });
    expect(JSON.parse(merged.body.toString())).toMatchObject({
      usage: { completion_tokens: 2 },
      choices: [{ message: { content: 'echo: one two three' } }],
    });
  });

  it('big-event: one event at least x-fake-event-bytes long (default above 8 MiB)', async () => {
    const small = await chat('big-event', { stream: true }, { 'x-fake-event-bytes': '100000' });
    const sizes = parseSse(small.body.toString()).map((e) => e.data.length);
    expect(sizes.filter((s) => s >= 100_000)).toHaveLength(1);
    const big = await chat('big-event', { stream: true });
    expect(Math.max(...parseSse(big.body.toString()).map((e) => e.data.length))).toBeGreaterThan(
      8 * 1024 * 1024,
    );
  });

  it('slow-stream: events spaced by x-fake-delay-ms', async () => {
    const started = Date.now();
    const response = await chat(
      'slow-stream',
      { stream: true },
      { 'x-fake-delay-ms': '40', 'x-fake-chunks': '3' },
    );
    const events = parseSse(response.body.toString()).length; // role + 3 + finish + [DONE] = 6
    expect(events).toBe(6);
    // A lower bound proves the delay exists; no upper bound (not a speed assertion).
    expect(Date.now() - started).toBeGreaterThanOrEqual((events - 1) * 40 - 5);
  });

  it('reset-mid-stream: the socket dies after N events; not recorded as a client abort', async () => {
    const response = await chat('reset-mid-stream', { stream: true }, { 'x-fake-reset-after': '3' });
    expect(response.truncated).toBe(true);
    expect(parseSse(response.body.toString())).toHaveLength(3);
    const record = lastRecord();
    await waitFor(() => gateway.openConnections() === 0, 'socket closed');
    expect(record.aborted).toBe(false);
    expect(record.completed).toBe(false);
    const body = await chat('reset-mid-stream');
    expect(body.truncated).toBe(true);
    expect(body.body.length).toBeLessThan(Number(body.headers['content-length']));
  });
});

describe('hangs, aborts and connections', () => {
  it('hang: request timeout → aborted recorded', async () => {
    const pending = rawRequest(chatUrl(), {
      headers: { ...auth, 'x-fake-scenario': 'hang' },
      body: { model: 'gpt-4o', messages },
      timeoutMs: 150,
    });
    await expect(pending).rejects.toThrow(/timeout/);
    const record = lastRecord();
    expect(record.json).toMatchObject({ model: 'gpt-4o' });
    await waitFor(() => record.aborted, 'aborted flag');
    expect(record.completed).toBe(false);
  });

  it('hang-after-head: the 200 head arrives, the body never does', async () => {
    const req = http.request(chatUrl(), {
      method: 'POST',
      headers: { ...auth, 'x-fake-scenario': 'hang-after-head', 'content-type': 'application/json' },
      agent: false,
    });
    req.end(JSON.stringify({ model: 'gpt-4o', messages, stream: true }));
    const [res] = (await once(req, 'response')) as [http.IncomingMessage];
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    let received = 0;
    res.on('data', (chunk: Buffer) => (received += chunk.length));
    await sleep(100);
    expect(received).toBe(0);
    const record = lastRecord();
    req.destroy();
    await waitFor(() => record.aborted, 'aborted flag');
  });

  it('a client abort mid-stream is recorded and the socket is released', async () => {
    const req = http.request(chatUrl(), {
      method: 'POST',
      headers: {
        ...auth,
        'x-fake-scenario': 'slow-stream',
        'x-fake-chunks': '50',
        'content-type': 'application/json',
      },
      agent: false,
    });
    req.end(JSON.stringify({ model: 'gpt-4o', messages, stream: true }));
    const [res] = (await once(req, 'response')) as [http.IncomingMessage];
    await once(res, 'data');
    const record = lastRecord();
    expect(gateway.openConnections()).toBeGreaterThanOrEqual(1);
    req.destroy();
    await waitFor(() => record.aborted, 'aborted flag');
    expect(record.completed).toBe(false);
    await waitFor(() => gateway.openConnections() === 0, 'connections released');
  });

  it('honours backpressure: a client that stops reading stalls the stream; an abort ends it', async () => {
    const req = http.request(chatUrl(), {
      method: 'POST',
      // ≈ 30 MB of events: well past what the kernel's loopback buffers and Node's stream buffers
      // hold (Node 22 raised the default highWaterMark to 64 KiB; 20,000 events fit there).
      headers: { ...auth, 'x-fake-chunks': '200000', 'content-type': 'application/json' },
      agent: false,
    });
    req.end(JSON.stringify({ model: 'gpt-4o', messages, stream: true }));
    const [res] = (await once(req, 'response')) as [http.IncomingMessage];
    res.pause(); // never read: socket buffers fill, the server must wait for 'drain'
    const record = lastRecord();
    await waitFor(() => (record.eventsWritten ?? 0) > 0, 'first events');
    let previous = -1;
    for (let i = 0; i < 50 && previous !== record.eventsWritten; i++) {
      previous = record.eventsWritten ?? 0;
      await sleep(40);
    }
    expect(record.eventsTotal).toBe(200003); // role + 200000 pieces + finish + [DONE]
    expect(record.eventsWritten).toBeLessThan(200003);
    const stalledAt = record.eventsWritten;
    res.destroy();
    await waitFor(() => record.aborted, 'aborted flag');
    expect(record.eventsWritten).toBe(stalledAt);
    expect(record.completed).toBe(false);
  });

  it('close() destroys open sockets (a hanging request) and resolves', async () => {
    const own = await startFakeGateway();
    const pending = rawRequest(`${own.url}/v1/chat/completions`, {
      headers: { ...auth, 'x-fake-scenario': 'hang' },
      body: { model: 'gpt-4o', messages },
    });
    const outcome = pending.then(
      () => 'answered',
      (error: unknown) => error,
    );
    await waitFor(() => own.requests.length === 1 && own.requests[0]?.json !== undefined, 'request read');
    expect(own.openConnections()).toBe(1);
    await own.close();
    expect(own.openConnections()).toBe(0);
    expect(await outcome).toBeInstanceOf(Error);
    expect(own.requests[0]?.aborted).toBe(false);
  });
});

describe('options', () => {
  it('recordRequests: false keeps requests empty', async () => {
    const quiet = await startFakeGateway({ recordRequests: false });
    try {
      const response = await rawRequest(`${quiet.url}/v1/models`, { headers: auth });
      expect(response.status).toBe(200);
      expect(quiet.requests).toEqual([]);
    } finally {
      await quiet.close();
    }
  });
});

describe('main.ts process', () => {
  it('prints {"url"} and serves until SIGTERM', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'test/fake-gateway/main.ts', '--port', '0'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      const [line] = (await once(child.stdout, 'data')) as [Buffer];
      const { url } = JSON.parse(line.toString()) as { url: string };
      expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      const models = await rawRequest(`${url}/v1/models`, { headers: auth });
      expect(models.status).toBe(200);
      child.kill('SIGTERM');
      const [code] = (await once(child, 'exit')) as [number | null];
      expect(code).toBe(0);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });
});

/** Gunzips a gzip prefix that was sync-flushed but not finished. */
function gunzipPartial(bytes: Buffer): string {
  try {
    return gunzipSync(bytes, { finishFlush: 2 /* Z_SYNC_FLUSH */ }).toString();
  } catch {
    return ''; // not even a complete gzip header yet
  }
}
