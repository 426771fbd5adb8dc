import http, { type IncomingMessage } from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { gzipSync } from 'node:zlib';
import { afterEach, describe, expect, it } from 'vitest';
import type { Settings, UpstreamSettings } from '../../src/config/types.js';
import { SILENT_LOGGER } from '../../src/log.js';
import { createProxyServer, type ProxyServer } from '../../src/proxy/server.js';
import { testSettings, upstreamSettings } from './helpers.js';
import { request, startTestUpstream, type Handler, type RawResponse } from './http-helpers.js';
import { RecordingMeter } from './recording-meter.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});
const startUpstream = (handler: Handler) => startTestUpstream(handler, cleanups);

async function startProxy(
  upstreams: UpstreamSettings[],
  extra: Partial<Settings> = {},
  meter = new RecordingMeter(),
  admin?: Parameters<typeof createProxyServer>[0]['admin'],
): Promise<{ proxy: ProxyServer; meter: RecordingMeter; base: string }> {
  const proxy = createProxyServer({
    settings: testSettings(upstreams, extra),
    meter,
    log: SILENT_LOGGER,
    admin,
  });
  const addr = await proxy.listen();
  cleanups.push(() => proxy.close(0));
  return { proxy, meter, base: `http://127.0.0.1:${addr.port}` };
}

function headerValues(raw: string[], name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.toLowerCase() === name) out.push(raw[i + 1]!);
  return out;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

describe('forwarding (§3.1, §3.2)', () => {
  it('forwards method, joined path, query, body and headers; strips hop-by-hop and x-tokenmeter-*', async () => {
    const up = await startUpstream((_req, res) => {
      res.writeHead(201, 'Made', [
        'Content-Type',
        'application/json',
        'X-Request-Id',
        'req-1',
        'X-Multi',
        'a',
        'X-Multi',
        'b',
      ]);
      res.end('{"ok":true}');
    });
    const { meter, base } = await startProxy([
      upstreamSettings('default', `${up.url}/v1`, { headers: { 'X-Group': 'g1' } }),
    ]);
    const body = '{"model":"gpt-4o",  "messages":[]}';
    const res = await request(`${base}/v1/chat/completions?x=1&y=%2F`, {
      method: 'POST',
      headers: [
        // A raw header array disables node's automatic Host header.
        'Host',
        new URL(base).host,
        'Content-Type',
        'application/json',
        'Authorization',
        'Bearer sk-test-123',
        'x-api-key',
        'ak-1',
        'X-Tokenmeter-App',
        'billing',
        'Connection',
        'keep-alive, X-Drop-Me',
        'X-Drop-Me',
        'secret-hop',
        'Keep-Alive',
        'timeout=5',
        'Proxy-Authorization',
        'Basic abc',
        'Content-Length',
        String(Buffer.byteLength(body)),
      ],
      body,
    });
    expect(res.status).toBe(201);
    expect(res.body.toString()).toBe('{"ok":true}');
    expect(headerValues(res.rawHeaders, 'x-multi')).toEqual(['a', 'b']);
    expect(res.headers['x-request-id']).toBe('req-1');

    const seen = up.seen[0]!;
    expect(seen.method).toBe('POST');
    expect(seen.url).toBe('/v1/chat/completions?x=1&y=%2F');
    expect(seen.body.toString()).toBe(body);
    const h = (n: string) => headerValues(seen.rawHeaders, n);
    expect(h('host')).toEqual([new URL(up.url).host]);
    expect(h('authorization')).toEqual(['Bearer sk-test-123']);
    expect(h('x-api-key')).toEqual(['ak-1']);
    expect(h('x-group')).toEqual(['g1']);
    expect(h('traceparent')).toEqual([meter.upstreamHeaders.traceparent]);
    expect(h('x-tokenmeter-app')).toEqual([]);
    expect(h('x-drop-me')).toEqual([]);
    expect(h('keep-alive')).toEqual([]);
    expect(h('proxy-authorization')).toEqual([]);

    const rec = meter.requests[0]!;
    await rec.finished;
    expect(rec.outcomes).toEqual([{ kind: 'complete' }]);
    expect(rec.input.info).toMatchObject({ operation: 'chat', model: 'gpt-4o', stream: false });
    expect(rec.input.path).toBe('/v1/chat/completions');
    expect(rec.input.headers['x-tokenmeter-app']).toBe('billing');
    expect(rec.input.upstream).toBe('default');
    expect(rec.input.requestBytes).toBe(Buffer.byteLength(body));
    expect(rec.head?.status).toBe(201);
    expect(rec.body()).toBe('{"ok":true}');
  });

  it('passes gzip bodies through untouched (Content-Encoding preserved), meter sees the same bytes', async () => {
    const gz = gzipSync(Buffer.from('{"data":[{"id":"m1"}]}'));
    const up = await startUpstream((_req, res) => {
      res.writeHead(200, {
        'content-type': 'application/json',
        'content-encoding': 'gzip',
        'content-length': gz.length,
      });
      res.end(gz);
    });
    const { meter, base } = await startProxy([upstreamSettings('default', up.url)]);
    const res = await request(`${base}/v1/models`, { headers: { 'accept-encoding': 'gzip' } });
    expect(res.headers['content-encoding']).toBe('gzip');
    expect(res.headers['content-length']).toBe(String(gz.length));
    expect(res.body.equals(gz)).toBe(true);
    expect(headerValues(up.seen[0]!.rawHeaders, 'accept-encoding')).toEqual(['gzip']);
    await meter.requests[0]!.finished;
    expect(Buffer.concat(meter.requests[0]!.chunks).equals(gz)).toBe(true);
    expect(meter.requests[0]!.input.info.operation).toBe('other');
  });

  it('streams each chunk to the client before the upstream sends the next (no buffering)', async () => {
    let release!: () => void;
    const up = await startUpstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: {"n":1}\n\n');
      await new Promise<void>((r) => (release = r));
      res.end('data: [DONE]\n\n');
    });
    const { meter, base } = await startProxy([upstreamSettings('default', up.url)]);
    const first = await new Promise<{ text: string; res: IncomingMessage }>((resolve) => {
      http.get(`${base}/v1/whatever`, { agent: false }, (res) => {
        res.once('data', (c: Buffer) => resolve({ text: c.toString(), res }));
      });
    });
    // The upstream is still holding the rest: the first event arrived on its own.
    expect(first.text).toBe('data: {"n":1}\n\n');
    expect(meter.requests[0]!.firstByteAt).toBeDefined();
    const rest: Buffer[] = [];
    first.res.on('data', (c: Buffer) => rest.push(c));
    const ended = new Promise((r) => first.res.on('end', r));
    release();
    await ended;
    expect(Buffer.concat(rest).toString()).toBe('data: [DONE]\n\n');
    expect(await meter.requests[0]!.finished).toEqual({ kind: 'complete' });
  });

  it('sends the response head before the first body byte exists (SSE head, slow first token)', async () => {
    let release!: () => void;
    const up = await startUpstream(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.flushHeaders();
      await new Promise<void>((r) => (release = r));
      res.end('data: [DONE]\n\n');
    });
    const { base } = await startProxy([upstreamSettings('default', up.url)]);
    const res = await new Promise<IncomingMessage>((resolve) =>
      http.get(`${base}/v1/x`, { agent: false }, resolve),
    );
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('text/event-stream');
    const body: Buffer[] = [];
    res.on('data', (c: Buffer) => body.push(c));
    const ended = new Promise((r) => res.on('end', r));
    release();
    await ended;
    expect(Buffer.concat(body).toString()).toBe('data: [DONE]\n\n');
  });

  it('streams a body above the metering cap through unmetered and intact', async () => {
    const up = await startUpstream((_req, res, body) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ len: body.length }));
    });
    const { meter, base } = await startProxy([upstreamSettings('default', up.url)], {
      limits: { ...testSettings([]).limits, maxRequestBody: 1024 },
    });
    const big = JSON.stringify({ model: 'gpt-4o', input: 'x'.repeat(5000) });
    // Once with Content-Length (known too large up front), once chunked (discovered while buffering).
    const r1 = await request(`${base}/v1/embeddings`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: big,
    });
    expect(JSON.parse(r1.body.toString())).toEqual({ len: big.length });
    const r2 = await new Promise<RawResponse>((resolve, reject) => {
      const req = http.request(
        `${base}/v1/embeddings`,
        { method: 'POST', agent: false, headers: { 'content-type': 'application/json' } },
        (res) => {
          const cs: Buffer[] = [];
          res.on('data', (c: Buffer) => cs.push(c));
          res.on('end', () =>
            resolve({
              status: res.statusCode!,
              rawHeaders: res.rawHeaders,
              headers: res.headers,
              body: Buffer.concat(cs),
            }),
          );
        },
      );
      req.on('error', reject);
      req.write(big.slice(0, 3000));
      setTimeout(() => req.end(big.slice(3000)), 20);
    });
    expect(JSON.parse(r2.body.toString())).toEqual({ len: big.length });
    expect(up.seen.map((s) => s.body.toString())).toEqual([big, big]);
    expect(meter.requests.map((r) => r.input.info.tooLargeToMeter)).toEqual([true, true]);
    expect(meter.requests.map((r) => r.input.info.model)).toEqual([undefined, undefined]);
  });

  it('routes by model glob and by prefix, stripping the prefix', async () => {
    const a = await startUpstream((_q, res) => res.end('A'));
    const b = await startUpstream((_q, res) => res.end('B'));
    const { base, meter } = await startProxy(
      [upstreamSettings('default', `${a.url}/v1`), upstreamSettings('dieyu', `${b.url}/api/v1`)],
      {
        routes: [
          { model: 'claude-*', upstream: 'dieyu', app: 'claude-app' },
          { prefix: '/dieyu', upstream: 'dieyu' },
        ],
      },
    );
    const post = (path: string, model: string) =>
      request(`${base}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model }),
      });
    expect((await post('/v1/messages', 'claude-sonnet-4')).body.toString()).toBe('B');
    expect((await post('/v1/chat/completions', 'gpt-4o')).body.toString()).toBe('A');
    expect((await post('/dieyu/v1/chat/completions', 'gpt-4o')).body.toString()).toBe('B');
    expect(b.seen.map((s) => s.url)).toEqual(['/api/v1/messages', '/api/v1/chat/completions']);
    expect(a.seen.map((s) => s.url)).toEqual(['/v1/chat/completions']);
    expect(meter.requests[0]!.input.routeApp).toBe('claude-app');
    expect(meter.requests[2]!.input.path).toBe('/v1/chat/completions');
  });

  it('sends a rejection from the meter instead of forwarding', async () => {
    const up = await startUpstream((_q, res) => res.end('should not be called'));
    const meter = new RecordingMeter();
    meter.reject = {
      status: 429,
      type: { openai: 'budget_exceeded', anthropic: 'rate_limit_error' },
      message: 'budget team-day exceeded',
      headers: { 'x-should-retry': 'false' },
    };
    const { base } = await startProxy([upstreamSettings('default', up.url)], {}, meter);
    const res = await request(`${base}/v1/chat/completions`, { method: 'POST', body: '{"model":"m"}' });
    expect(res.status).toBe(429);
    expect(res.headers['x-should-retry']).toBe('false');
    expect(JSON.parse(res.body.toString())).toEqual({
      error: { message: 'budget team-day exceeded', type: 'budget_exceeded', code: 'budget_exceeded' },
    });
    const anthropic = await request(`${base}/v1/messages`, { method: 'POST', body: '{"model":"m"}' });
    expect(JSON.parse(anthropic.body.toString())).toEqual({
      type: 'error',
      error: { type: 'rate_limit_error', message: 'budget team-day exceeded' },
    });
    expect(up.seen).toHaveLength(0);
    expect(meter.requests[0]!.outcomes).toEqual([{ kind: 'rejected' }]);
  });
});

describe('request rewriting (§3.3) on the wire', () => {
  it('adds include_usage textually, fixes Content-Length, asks for identity, and changes nothing else', async () => {
    const up = await startUpstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: {"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}\n\n');
      res.write(
        'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\n',
      );
      res.end('data: [DONE]\n\n');
    });
    const { base, meter } = await startProxy([upstreamSettings('default', up.url)]);
    const body = '{ "model" : "gpt-4o",\n  "stream": true, "temperature": 0.70, "messages": [] }';
    const res = await request(`${base}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'accept-encoding': 'gzip, br' },
      body,
    });
    const sent = up.seen[0]!;
    expect(sent.body.toString()).toBe(
      '{"stream_options":{"include_usage":true}, "model" : "gpt-4o",\n  "stream": true, "temperature": 0.70, "messages": [] }',
    );
    expect(headerValues(sent.rawHeaders, 'content-length')).toEqual([String(sent.body.length)]);
    expect(headerValues(sent.rawHeaders, 'accept-encoding')).toEqual(['identity']);
    expect(res.body.toString()).toBe(
      'data: {"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}\n\ndata: [DONE]\n\n',
    );
    const rec = meter.requests[0]!;
    await rec.finished;
    expect(rec.input.injectedUsage).toBe(true);
    expect(rec.body()).toContain('"total_tokens":4');
  });

  it('leaves a request that asked for usage, and error responses of injected requests, untouched', async () => {
    const up = await startUpstream((req, res) => {
      if (req.headers['x-fail']) {
        res.writeHead(429, { 'content-type': 'application/json' });
        res.end('{"error":{"message":"slow down","type":"rate_limit"}}');
        return;
      }
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end('data: {"choices":[],"usage":{"total_tokens":4}}\n\ndata: [DONE]\n\n');
    });
    const { base } = await startProxy([upstreamSettings('default', up.url)]);
    const asked = '{"model":"m","stream":true,"stream_options":{"include_usage":true}}';
    const r1 = await request(`${base}/v1/chat/completions`, { method: 'POST', body: asked });
    expect(up.seen[0]!.body.toString()).toBe(asked);
    expect(r1.body.toString()).toBe('data: {"choices":[],"usage":{"total_tokens":4}}\n\ndata: [DONE]\n\n');
    const r2 = await request(`${base}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'x-fail': '1' },
      body: '{"model":"m","stream":true}',
    });
    expect(r2.status).toBe(429);
    expect(r2.body.toString()).toBe('{"error":{"message":"slow down","type":"rate_limit"}}');
  });
});

describe('other methods and bodies', () => {
  it('forwards HEAD, 204 and 304 without inventing a body', async () => {
    const up = await startUpstream((req, res) => {
      if (req.url === '/v1/none') res.writeHead(204).end();
      else if (req.url === '/v1/cached') res.writeHead(304, { etag: '"x"' }).end();
      else
        res
          .writeHead(200, { 'content-type': 'application/json', 'content-length': '11' })
          .end(req.method === 'HEAD' ? undefined : '{"ok":true}');
    });
    const { base, meter } = await startProxy([upstreamSettings('default', up.url)]);
    const head = await request(`${base}/v1/files`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers['content-length']).toBe('11');
    expect(head.body.length).toBe(0);
    expect((await request(`${base}/v1/none`, { method: 'DELETE' })).status).toBe(204);
    const cached = await request(`${base}/v1/cached`, { headers: { 'if-none-match': '"x"' } });
    expect(cached.status).toBe(304);
    expect(cached.headers.etag).toBe('"x"');
    expect(up.seen.map((x) => x.method)).toEqual(['HEAD', 'DELETE', 'GET']);
    await Promise.all(meter.requests.map((r) => r.finished));
    expect(meter.requests.map((r) => r.outcomes)).toEqual([
      [{ kind: 'complete' }],
      [{ kind: 'complete' }],
      [{ kind: 'complete' }],
    ]);
  });

  it('a client that aborts while uploading a body above the cap: upstream request destroyed, client_abort', async () => {
    let upstreamGotClose!: () => void;
    const closed = new Promise<void>((r) => (upstreamGotClose = r));
    const server = http.createServer((req) => {
      req.on('close', () => upstreamGotClose());
      req.resume();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(
      () =>
        new Promise((r) => {
          server.closeAllConnections();
          server.close(() => r());
        }),
    );
    const { base, meter } = await startProxy(
      [upstreamSettings('default', `http://127.0.0.1:${(server.address() as AddressInfo).port}`)],
      {
        limits: { ...testSettings([]).limits, maxRequestBody: 1024 },
      },
    );
    const req = http.request(`${base}/v1/files`, {
      method: 'POST',
      agent: false,
      headers: { 'content-type': 'application/json' },
    });
    req.on('error', () => {});
    req.write('x'.repeat(4096));
    await sleep(100);
    req.destroy();
    await closed;
    // The upload never completed: nothing can have been generated upstream.
    expect(await meter.requests[0]!.finished).toEqual({ kind: 'client_abort', reachedUpstream: false });
    expect(meter.requests[0]!.input.info.tooLargeToMeter).toBe(true);
  });
});

describe('failures (§3.2, §12)', () => {
  it('unreachable upstream → 502 JSON naming the upstream, no stack, no key', async () => {
    const port = await freePort();
    const { base, meter } = await startProxy([upstreamSettings('cailag', `http://127.0.0.1:${port}/v1`)]);
    const res = await request(`${base}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: 'Bearer sk-very-secret' },
      body: '{"model":"m"}',
    });
    expect(res.status).toBe(502);
    const err = JSON.parse(res.body.toString()) as { error: { message: string; type: string } };
    expect(err.error.message).toContain('"cailag"');
    expect(err.error.type).toBe('upstream_unreachable');
    expect(res.body.toString()).not.toContain('sk-very-secret');
    expect(res.body.toString()).not.toMatch(/\bat .*\.(ts|js):\d+/);
    expect(meter.requests[0]!.outcomes).toEqual([
      { kind: 'network', message: 'ECONNREFUSED', reachedUpstream: false },
    ]);
  });

  it('connect timeout → 504 shaped for the endpoint (OpenAI and Anthropic)', async () => {
    // A TCP server that accepts but never speaks TLS: the https connect (TCP+TLS) never completes.
    const silent = net.createServer(() => {});
    const held: net.Socket[] = [];
    silent.on('connection', (s) => held.push(s));
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    cleanups.push(async () => {
      held.forEach((s) => s.destroy());
      await new Promise((r) => silent.close(r));
    });
    const port = (silent.address() as AddressInfo).port;
    const { base, meter } = await startProxy([
      upstreamSettings('slow', `https://127.0.0.1:${port}`, { connectTimeoutMs: 150 }),
    ]);
    const openai = await request(`${base}/v1/chat/completions`, { method: 'POST', body: '{"model":"m"}' });
    expect(openai.status).toBe(504);
    const o = JSON.parse(openai.body.toString()) as {
      error: { type: string; code: string; message: string };
    };
    expect(o.error.type).toBe('timeout');
    expect(o.error.code).toBe('timeout');
    expect(o.error.message).toContain('connect timeout');
    const anth = await request(`${base}/v1/messages`, { method: 'POST', body: '{"model":"claude"}' });
    expect(anth.status).toBe(504);
    const a = JSON.parse(anth.body.toString()) as { type: string; error: { type: string; message: string } };
    expect(a.type).toBe('error');
    expect(a.error.type).toBe('timeout');
    expect(meter.requests.map((r) => r.outcomes)).toEqual([
      [{ kind: 'timeout', phase: 'connect', reachedUpstream: false }],
      [{ kind: 'timeout', phase: 'connect', reachedUpstream: false }],
    ]);
  });

  it('reuses one pooled upstream connection for back-to-back requests, with no per-request timer', async () => {
    const up = await startUpstream((_req, res) => res.end('{}'));
    let connections = 0;
    up.server.on('connection', () => connections++);
    // A connect timeout no other timer in the process uses, to count this one alone.
    const connectMs = 7_777;
    const { base } = await startProxy([upstreamSettings('up', up.url, { connectTimeoutMs: connectMs })]);
    const armed: number[] = [];
    const real = globalThis.setTimeout;
    globalThis.setTimeout = ((fn: () => void, ms?: number) => {
      if (ms === connectMs) armed.push(ms);
      return real(fn, ms);
    }) as typeof setTimeout;
    try {
      expect((await request(`${base}/v1/models`)).status).toBe(200);
      expect(connections).toBe(1);
      for (let i = 0; i < 3; i++) expect((await request(`${base}/v1/models`)).status).toBe(200);
      expect(connections).toBe(1); // the next three reused it
      // The connect timeout is the pool's, armed per new connection (not per request), at most once.
      expect(armed.length).toBeLessThanOrEqual(1);
    } finally {
      globalThis.setTimeout = real;
    }
  });

  it('idle timeout before any byte → 504; after bytes → the stream is closed', async () => {
    const up = await startUpstream((req, res) => {
      if (req.url === '/v1/silent') return; // never answers
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: {"n":1}\n\n'); // then stalls
    });
    const { base, meter } = await startProxy([upstreamSettings('default', up.url, { idleTimeoutMs: 200 })]);
    const silent = await request(`${base}/v1/silent`);
    expect(silent.status).toBe(504);
    expect(JSON.parse(silent.body.toString()).error.message).toContain('idle timeout');

    const got: Buffer[] = [];
    const outcome = await new Promise<string>((resolve) => {
      http.get(`${base}/v1/stall`, { agent: false }, (res) => {
        res.on('data', (c: Buffer) => got.push(c));
        res.on('end', () => resolve('end'));
        res.on('error', () => resolve('error'));
        res.on('close', () => resolve(res.complete ? 'end' : 'error'));
      });
    });
    expect(outcome).toBe('error'); // not a clean end: the client can tell the stream was cut
    expect(Buffer.concat(got).toString()).toBe('data: {"n":1}\n\n');
    expect(meter.requests.map((r) => r.outcomes)).toEqual([
      [{ kind: 'timeout', phase: 'idle', reachedUpstream: true }],
      [{ kind: 'timeout', phase: 'idle', reachedUpstream: true }],
    ]);
  });

  it('upstream reset mid-stream → client stream ends with an error, outcome upstream_reset', async () => {
    const up = await startUpstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: {"n":1}\n\n');
      setTimeout(() => res.socket?.destroy(), 30);
    });
    const { base, meter } = await startProxy([upstreamSettings('default', up.url)]);
    const got: Buffer[] = [];
    const outcome = await new Promise<string>((resolve) => {
      http.get(`${base}/v1/stream`, { agent: false }, (res) => {
        res.on('data', (c: Buffer) => got.push(c));
        res.on('close', () => resolve(res.complete ? 'end' : 'error'));
      });
    });
    expect(outcome).toBe('error');
    expect(Buffer.concat(got).toString()).toBe('data: {"n":1}\n\n');
    const rec = meter.requests[0]!;
    await rec.finished;
    expect(rec.outcomes).toHaveLength(1);
    expect(rec.outcomes[0]!.kind).toBe('upstream_reset');
  });

  it('client abort → the upstream request is destroyed at once, outcome client_abort', async () => {
    let upstreamClosed!: () => void;
    const upstreamClosedP = new Promise<void>((r) => (upstreamClosed = r));
    const up = await startUpstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: {"n":1}\n\n');
      const t = setInterval(() => res.write('data: {"n":2}\n\n'), 20);
      res.on('close', () => {
        clearInterval(t);
        upstreamClosed();
      });
    });
    const { base, meter } = await startProxy([upstreamSettings('default', up.url)]);
    await new Promise<void>((resolve) => {
      const req = http.get(`${base}/v1/stream`, { agent: false }, (res) => {
        res.once('data', () => {
          req.destroy();
          resolve();
        });
      });
      req.on('error', () => {});
    });
    // Bounded wait: without the abort the upstream keeps generating and this rejects.
    await Promise.race([
      upstreamClosedP,
      sleep(3000).then(() => Promise.reject(new Error('upstream request not aborted'))),
    ]);
    expect(await meter.requests[0]!.finished).toEqual({ kind: 'client_abort', reachedUpstream: true });
    expect(meter.requests[0]!.outcomes).toHaveLength(1);
  });

  it('a slow reader pauses the upstream (backpressure), and then gets every byte', async () => {
    const total = 64 * 1024 * 1024;
    let written = 0;
    let blockedAt: number | undefined;
    const up = await startUpstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const chunk = Buffer.alloc(64 * 1024, 0x61);
      const pump = () => {
        while (written < total) {
          written += chunk.length;
          if (!res.write(chunk)) {
            blockedAt ??= written;
            res.once('drain', pump);
            return;
          }
        }
        res.end();
      };
      pump();
    });
    const { base, meter } = await startProxy([upstreamSettings('default', up.url)]);
    let received = 0;
    let writtenWhilePaused = -1;
    await new Promise<void>((resolve) => {
      http.get(`${base}/v1/files/big/content`, { agent: false }, (res) => {
        res.pause();
        setTimeout(() => {
          writtenWhilePaused = written;
          res.on('data', (c: Buffer) => (received += c.length));
          res.on('end', () => resolve());
          res.resume();
        }, 300);
      });
    });
    // While the client did not read, the upstream could not push the whole body through us.
    expect(writtenWhilePaused).toBeGreaterThan(0);
    expect(writtenWhilePaused).toBeLessThan(total / 2);
    expect(blockedAt).toBeDefined();
    expect(received).toBe(total);
    expect(await meter.requests[0]!.finished).toEqual({ kind: 'complete' });
  });

  it('calls finish exactly once per request and leaks no sockets (incl. aborts)', async () => {
    const up = await startUpstream((req, res) => {
      if (req.url === '/v1/stream') {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write('data: 1\n\n');
        const t = setInterval(() => res.write('data: x\n\n'), 10);
        res.on('close', () => clearInterval(t));
        return;
      }
      res.end('{"ok":1}');
    });
    const { base, meter, proxy } = await startProxy([upstreamSettings('default', up.url)]);
    const upstreamConnections = () => new Promise<number>((r) => up.server.getConnections((_e, n) => r(n)));
    const proxyConnections = () => new Promise<number>((r) => proxy.server.getConnections((_e, n) => r(n)));
    const agent = new http.Agent({ keepAlive: true });
    await request(`${base}/v1/models`, { agent });
    await sleep(50);
    const baselineUp = await upstreamConnections();
    const n = 30;
    for (let i = 0; i < n; i++) {
      if (i % 3 === 0) {
        await new Promise<void>((resolve) => {
          const req = http.get(`${base}/v1/stream`, { agent: false }, (res) => {
            res.once('data', () => {
              req.destroy();
              resolve();
            });
          });
          req.on('error', () => {});
        });
      } else await request(`${base}/v1/models`, { agent });
    }
    await Promise.all(meter.requests.map((r) => r.finished));
    agent.destroy();
    await sleep(100);
    expect(meter.requests).toHaveLength(n + 1);
    expect(meter.requests.every((r) => r.outcomes.length === 1)).toBe(true);
    expect(meter.requests.filter((r) => r.outcomes[0]!.kind === 'client_abort')).toHaveLength(10);
    // Ten aborted streams close their ten upstream connections. The pool may hold one more idle
    // connection than before: a request that arrived while an aborted stream's connection was
    // still closing was given a second one (closed after the idle timeout like any other).
    expect(await upstreamConnections()).toBeLessThanOrEqual(baselineUp + 1);
    expect(await proxyConnections()).toBe(0);
    expect(proxy.inflight()).toBe(0);
  });
});

describe('admin endpoints and shutdown (§12)', () => {
  it('serves /healthz, /readyz, /metrics on the same port; /readyz and /metrics behind the auth token, liveness open', async () => {
    const up = await startUpstream((_q, res) => res.end('upstream'));
    let ready = false;
    const { base } = await startProxy(
      [upstreamSettings('default', up.url)],
      { authToken: 'tok-123' },
      new RecordingMeter(),
      {
        ready: () => ready,
        metrics: async () => ({
          contentType: 'text/plain; version=0.0.4',
          body: 'tokenmeter_requests_total 1\n',
        }),
      },
    );
    // Liveness stays open: container health checks and probes send no token.
    expect((await request(`${base}/healthz`)).status).toBe(200);
    expect((await request(`${base}/readyz`)).status).toBe(401);
    expect((await request(`${base}/metrics`)).status).toBe(401);
    expect((await request(`${base}/metrics`, { headers: { authorization: 'Bearer wrong' } })).status).toBe(
      401,
    );
    const auth = { authorization: 'Bearer tok-123' };
    expect((await request(`${base}/healthz`, { headers: auth })).status).toBe(200);
    expect((await request(`${base}/readyz`, { headers: auth })).status).toBe(503);
    ready = true;
    expect((await request(`${base}/readyz`, { headers: auth })).status).toBe(200);
    const m = await request(`${base}/metrics`, { headers: auth });
    expect(m.status).toBe(200);
    expect(m.headers['content-type']).toBe('text/plain; version=0.0.4');
    expect(m.body.toString()).toBe('tokenmeter_requests_total 1\n');
    expect(up.seen).toHaveLength(0);
  });

  it('close(grace) lets an in-flight stream finish, then stops', async () => {
    const up = await startUpstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: 1\n\n');
      setTimeout(() => res.end('data: 2\n\n'), 150);
    });
    const { base, meter, proxy } = await startProxy([upstreamSettings('default', up.url)]);
    const body = new Promise<string>((resolve) => {
      http.get(`${base}/v1/stream`, { agent: false }, (res) => {
        const cs: Buffer[] = [];
        res.on('data', (c: Buffer) => cs.push(c));
        res.on('end', () => resolve(Buffer.concat(cs).toString()));
      });
    });
    await sleep(50);
    await proxy.close(5000);
    expect(await body).toBe('data: 1\n\ndata: 2\n\n');
    expect(meter.requests[0]!.outcomes).toEqual([{ kind: 'complete' }]);
    await expect(request(`${base}/healthz`)).rejects.toThrow();
  });
});
