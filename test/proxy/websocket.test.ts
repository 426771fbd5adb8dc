/**
 * WebSocket pass-through (issue 12, OpenAI Realtime) end to end: `startServe` exactly as `tokenmeter
 * serve` runs it (SQLite file, metrics, a price file), a fake Realtime upstream built on the `ws`
 * package's WebSocketServer on 127.0.0.1, and `ws` clients (and the `openai` SDK's realtime client).
 * For each path a session can take: what each side got, and the one record it left.
 */
import http, { type IncomingMessage } from 'node:http';
import net, { type AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openSqlite } from '../../src/sinks/audit/sqlite.js';
import OpenAI from 'openai';
import { OpenAIRealtimeWS } from 'openai/realtime/ws';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer, type PerMessageDeflateOptions } from 'ws';
import { startServe, type RunningServer } from '../../src/cli/serve.js';
import { SILENT_LOGGER } from '../../src/log.js';
import { WsSession } from '../../src/proxy/websocket.js';
import type { RequestRecord } from '../../src/record.js';
import { makeTempDir } from '../e2e/helpers.js';
import { rawExchange, request, startRawUpstream } from './http-helpers.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const MODEL = 'gpt-realtime';
const API_KEY = 'sk-realtime-test-key';
/** USD per 1M tokens: uncached input 4, cached 0.4, output 16 (text prices of gpt-realtime). */
const PRICES = `currency: USD
unit: 1M
prices:
  - { model: ${MODEL}, input: 4, cache_read: 0.4, output: 16, max_output_tokens: 4096 }
`;

interface Usage {
  input: number;
  cached: number;
  output: number;
  audioIn?: number;
  audioOut?: number;
}
/** Two responses: 220 uncached input, 80 cached, 120 output → 220×4 + 80×0.4 + 120×16 = 2832 per 1M. */
const TWO_RESPONSES: Usage[] = [
  { input: 100, cached: 20, output: 50 },
  { input: 200, cached: 60, output: 70 },
];
const EXPECTED_NANOS = 2_832_000;

function responseDone(i: number, u: Usage) {
  return {
    type: 'response.done',
    event_id: `event_done_${i}`,
    response: {
      object: 'realtime.response',
      id: `resp_${i}`,
      status: 'completed',
      output: [{ type: 'message', content: [{ type: 'output_audio', transcript: 'hello there' }] }],
      usage: {
        total_tokens: u.input + u.output,
        input_tokens: u.input,
        output_tokens: u.output,
        input_token_details: {
          cached_tokens: u.cached,
          text_tokens: u.input - (u.audioIn ?? 0),
          audio_tokens: u.audioIn ?? 0,
          image_tokens: 0,
          cached_tokens_details: { text_tokens: u.cached, audio_tokens: 0, image_tokens: 0 },
        },
        output_token_details: { text_tokens: u.output - (u.audioOut ?? 0), audio_tokens: u.audioOut ?? 0 },
      },
    },
  };
}

interface UpstreamOptions {
  perMessageDeflate?: boolean | PerMessageDeflateOptions;
  /** Send each response.done in fragments of this many bytes. */
  fragment?: number;
  /** Usage per response.done; `undefined` entries send a response without response.done. */
  usages?: Array<Usage | undefined>;
  /** Answer the upgrade with this HTTP response instead. */
  refuse?: { status: number; body: string };
}

interface FakeRealtime {
  url: string;
  /** Every text message the server sent, in order (what the client must receive). */
  sent: string[];
  /** Every message the server received (what the client sent). */
  received: string[];
  /** Upgrade request heads as the upstream saw them. */
  upgrades: IncomingMessage[];
  /** Resolves when a server-side socket closes, with its close code. */
  closed: Promise<number>;
  /** The server-side sockets of open sessions. */
  clients(): Set<WebSocket>;
}

/**
 * A Realtime-speaking upstream: session.created on connect; for each `response.create` from the
 * client, response.created, transcript deltas, an audio delta and a response.done with the next usage.
 */
async function startFakeRealtime(opts: UpstreamOptions = {}): Promise<FakeRealtime> {
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"plain":true}');
  });
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: opts.perMessageDeflate ?? false });
  const sent: string[] = [];
  const received: string[] = [];
  const upgrades: IncomingMessage[] = [];
  let closedResolve!: (code: number) => void;
  const closed = new Promise<number>((r) => (closedResolve = r));
  const usages = [...(opts.usages ?? TWO_RESPONSES)];
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    upgrades.push(req);
    if (opts.refuse) {
      const { status, body } = opts.refuse;
      socket.end(
        `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\ncontent-type: application/json\r\n` +
          `x-request-id: req_refused\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
      );
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
  });
  wss.on('connection', (ws) => {
    const send = (event: object) => {
      const text = JSON.stringify(event);
      sent.push(text);
      if (!opts.fragment) {
        ws.send(text);
        return;
      }
      const buf = Buffer.from(text);
      // Small events in tiny fragments; the 40 kB audio deltas in 4 kB ones (still several frames).
      const size = buf.length > 2000 ? 4096 : opts.fragment;
      for (let at = 0; at < buf.length; at += size) {
        ws.send(buf.subarray(at, at + size), { binary: false, fin: at + size >= buf.length });
      }
    };
    ws.on('close', (code) => closedResolve(code));
    send({
      type: 'session.created',
      event_id: 'event_1',
      session: { id: 'sess_123', object: 'realtime.session', model: MODEL },
    });
    let n = 0;
    ws.on('message', (data: Buffer) => {
      const text = data.toString();
      received.push(text);
      if ((JSON.parse(text) as { type: string }).type !== 'response.create') return;
      const i = n++;
      send({ type: 'response.created', event_id: `event_c${i}`, response: { id: `resp_${i}` } });
      for (const word of ['Hel', 'lo ', 'there'])
        send({ type: 'response.output_audio_transcript.delta', response_id: `resp_${i}`, delta: word });
      send({ type: 'response.output_audio.delta', response_id: `resp_${i}`, delta: 'A'.repeat(40_000) });
      const u = usages.shift();
      if (u) send(responseDone(i, u));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  cleanups.push(async () => {
    for (const c of wss.clients) c.terminate();
    wss.close();
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  });
  return { url: `http://127.0.0.1:${port}/v1`, sent, received, upgrades, closed, clients: () => wss.clients };
}

interface Served {
  running: RunningServer;
  port: number;
  rows(): Promise<RequestRecord[]>;
  stop(): Promise<void>;
}

async function serve(upstreamUrl: string, extraConfig = ''): Promise<Served> {
  const tmp = makeTempDir('tm-websocket-');
  const db = join(tmp.dir, 'audit.db');
  const cfg = join(tmp.dir, 'tokenmeter.yaml');
  writeFileSync(join(tmp.dir, 'prices.yaml'), PRICES);
  writeFileSync(cfg, `presets: false\nprices: [prices.yaml]\n${extraConfig}`);
  const running = await startServe(
    { upstream: upstreamUrl, port: '0', db, config: cfg, logLevel: 'silent' },
    { OTEL_SDK_DISABLED: 'true' },
    tmp.dir,
    SILENT_LOGGER,
  );
  let stopped = false;
  const stop = async () => {
    if (!stopped) await running.stop();
    stopped = true;
  };
  cleanups.push(async () => {
    await stop();
    tmp.remove();
  });
  return {
    running,
    port: running.port,
    stop,
    async rows() {
      await stop();
      const conn = openSqlite(db, { readonly: true });
      const rows = conn.prepare('SELECT * FROM requests ORDER BY ts_start, id').all() as RequestRecord[];
      conn.close();
      return rows;
    },
  };
}

function connect(url: string, opts: WebSocket.ClientOptions = {}): WebSocket {
  const ws = new WebSocket(url, { headers: { authorization: `Bearer ${API_KEY}` }, ...opts });
  cleanups.push(async () => ws.terminate());
  return ws;
}

/** Opens a session, asks for `responses` responses, waits for each one's last event, closes cleanly. */
async function runSession(
  url: string,
  responses: number,
  opts: WebSocket.ClientOptions & { waitFor?: string; close?: boolean } = {},
): Promise<{ got: string[]; sent: string[]; ws: WebSocket }> {
  const ws = connect(url, opts);
  const got: string[] = [];
  const sent: string[] = [];
  let waiting: (() => void) | undefined;
  const waitFor = opts.waitFor ?? 'response.done';
  ws.on('message', (data: Buffer) => {
    const text = data.toString();
    got.push(text);
    if ((JSON.parse(text) as { type: string }).type === waitFor) waiting?.();
  });
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  for (let i = 0; i < responses; i++) {
    const done = new Promise<void>((r) => (waiting = r));
    const text = JSON.stringify({ type: 'response.create', event_id: `client_${i}` });
    sent.push(text);
    ws.send(text);
    await done;
  }
  if (opts.close !== false) {
    const closed = new Promise<void>((r) => ws.once('close', () => r()));
    ws.close(1000);
    await closed;
  }
  return { got, sent, ws };
}

/** The record's usage and money, without ids, times and byte counts (equal whatever the framing). */
function usageOf(r: RequestRecord) {
  return {
    operation: r.operation,
    method: r.method,
    path: r.path,
    http_status: r.http_status,
    request_model: r.request_model,
    response_model: r.response_model,
    error_type: r.error_type,
    usage_source: r.usage_source,
    input_tokens: r.input_tokens,
    cache_read_tokens: r.cache_read_tokens,
    cache_write_tokens: r.cache_write_tokens,
    output_tokens: r.output_tokens,
    cost_nanos: r.cost_nanos,
    currency: r.currency,
    cost_source: r.cost_source,
    upstream_request_id: r.upstream_request_id,
  };
}

const EXPECTED_RECORD = {
  operation: 'realtime',
  method: 'GET',
  path: '/v1/realtime',
  http_status: 101,
  request_model: MODEL,
  response_model: MODEL,
  error_type: null,
  usage_source: 'reported',
  input_tokens: 220,
  cache_read_tokens: 80,
  cache_write_tokens: null,
  output_tokens: 120,
  cost_nanos: EXPECTED_NANOS,
  currency: 'USD',
  cost_source: 'computed',
  upstream_request_id: 'sess_123',
};

const wsUrl = (port: number, path = `/v1/realtime?model=${MODEL}`) => `ws://127.0.0.1:${port}${path}`;

describe('a Realtime session passes through and is recorded', () => {
  for (const deflate of [false, true]) {
    it(`permessage-deflate ${deflate ? 'on' : 'off'}: messages identical both ways, one record with summed usage and exact cost`, async () => {
      const up = await startFakeRealtime({ perMessageDeflate: deflate });
      const tm = await serve(up.url);
      const t0 = Date.now();
      const { got, sent } = await runSession(wsUrl(tm.port), 2, { perMessageDeflate: deflate });
      const elapsed = Date.now() - t0;
      expect(got).toStrictEqual(up.sent);
      expect(up.received).toStrictEqual(sent);
      // The client's upgrade reached the upstream with its auth and WebSocket headers untouched.
      const head = up.upgrades[0]!;
      expect(head.url).toBe(`/v1/realtime?model=${MODEL}`);
      expect(head.headers.authorization).toBe(`Bearer ${API_KEY}`);
      expect(head.headers['sec-websocket-key']).toBeDefined();
      expect(String(head.headers['sec-websocket-extensions'] ?? '')).toContain(
        deflate ? 'permessage-deflate' : '',
      );
      const rows = await tm.rows();
      expect(rows).toHaveLength(1);
      const r = rows[0]!;
      expect(usageOf(r)).toStrictEqual(EXPECTED_RECORD);
      expect(r.duration_ms).toBeGreaterThanOrEqual(0);
      expect(r.duration_ms).toBeLessThanOrEqual(elapsed + 50);
      expect(r.ttft_ms).toBeNull();
      expect(r.stream).toBeFalsy();
      expect(r.request_bytes).toBeGreaterThan(0);
      // Bytes as they crossed the wire: the 40 kB audio deltas compress to almost nothing.
      if (deflate) expect(r.response_bytes).toBeLessThan(2 * 40_000);
      else expect(r.response_bytes).toBeGreaterThan(2 * 40_000);
      expect(r.note).toContain('realtime_responses:2');
    });
  }

  it('fragmented messages (continuation frames), deflate on and off, give the same record', async () => {
    for (const deflate of [false, true]) {
      const up = await startFakeRealtime({ perMessageDeflate: deflate, fragment: 7 });
      const tm = await serve(up.url);
      const { got } = await runSession(wsUrl(tm.port), 2, { perMessageDeflate: deflate });
      expect(got).toStrictEqual(up.sent);
      const rows = await tm.rows();
      expect(rows.map(usageOf)).toStrictEqual([EXPECTED_RECORD]);
    }
  });

  it('the openai SDK realtime client (openai/realtime/ws) works through the proxy', async () => {
    const up = await startFakeRealtime({ perMessageDeflate: true });
    const tm = await serve(up.url);
    const client = new OpenAI({ apiKey: API_KEY, baseURL: `http://127.0.0.1:${tm.port}/v1` });
    // openai 6.x always builds a wss:// URL (realtime/internal-base.js sets url.protocol = 'wss'),
    // whatever the baseURL's scheme; tokenmeter listens on plain HTTP, so the socket is opened
    // with plain TCP (ws's createConnection option). See docs/proxy.md.
    const rt = new OpenAIRealtimeWS(
      { model: MODEL, options: { createConnection: net.createConnection } },
      client,
    );
    rt.on('error', () => {
      /* asserted through the events below */
    });
    cleanups.push(async () => rt.socket.terminate());
    const events: string[] = [];
    rt.on('event', (e) => events.push(e.type));
    await new Promise<void>((resolve, reject) => {
      rt.socket.once('open', () => resolve());
      rt.socket.once('error', reject);
    });
    for (let i = 0; i < 2; i++) {
      const done = new Promise<void>((r) => rt.once('response.done', () => r()));
      rt.send({ type: 'response.create' });
      await done;
    }
    const closed = new Promise<void>((r) => rt.socket.once('close', () => r()));
    rt.close();
    await closed;
    expect(events.filter((t) => t === 'response.done')).toHaveLength(2);
    expect(events[0]).toBe('session.created');
    const rows = await tm.rows();
    expect(rows.map(usageOf)).toStrictEqual([EXPECTED_RECORD]);
  });

  it('a session without response.done: usage missing, cost NULL with a reason — never zero', async () => {
    const up = await startFakeRealtime({ usages: [] });
    const tm = await serve(up.url);
    await runSession(wsUrl(tm.port), 1, { waitFor: 'response.output_audio.delta' });
    const [r] = await tm.rows();
    expect(r).toMatchObject({
      operation: 'realtime',
      http_status: 101,
      usage_source: 'missing',
      input_tokens: null,
      output_tokens: null,
      cost_nanos: null,
      error_type: null,
    });
    expect(r!.note).toContain('usage_missing');
  });

  it('audio tokens: usage recorded, cost NULL because the price table has no audio price', async () => {
    const up = await startFakeRealtime({
      usages: [{ input: 100, cached: 0, output: 50, audioIn: 60, audioOut: 40 }],
    });
    const tm = await serve(up.url);
    await runSession(wsUrl(tm.port), 1);
    const [r] = await tm.rows();
    expect(r).toMatchObject({
      usage_source: 'reported',
      input_tokens: 100,
      output_tokens: 50,
      cost_nanos: null,
    });
    expect(r!.audio_tokens).toBe(100);
    expect(r!.note).toContain('unpriced token kind: 100 audio tokens');
  });
});

describe('session ends', () => {
  it('a session outlives the client header/request timeouts (they bound the upgrade request, not the session)', async () => {
    const up = await startFakeRealtime();
    const tm = await serve(
      up.url,
      'limits: { client_header_timeout: 300ms, client_request_timeout: 600ms }\n',
    );
    const ws = connect(wsUrl(tm.port));
    await new Promise((r) => ws.once('open', r));
    await sleep(1500);
    expect(ws.readyState).toBe(WebSocket.OPEN);
    const done = new Promise<void>((resolve) =>
      ws.on('message', (d: Buffer) => {
        if (d.toString().includes('"response.done"')) resolve();
      }),
    );
    ws.send(JSON.stringify({ type: 'response.create' }));
    await done;
    ws.close(1000);
    await new Promise((r) => ws.once('close', r));
    expect((await tm.rows()).map(usageOf)).toMatchObject([
      { error_type: null, input_tokens: 80, output_tokens: 50 },
    ]);
  });

  it('a slow client pauses the upstream (backpressure), and still gets every byte', async () => {
    const up = await startFakeRealtime({ usages: [{ input: 1, cached: 0, output: 1 }] });
    const tm = await serve(up.url);
    const ws = connect(wsUrl(tm.port));
    await new Promise((r) => ws.once('open', r));
    const got: string[] = [];
    ws.on('message', (d: Buffer) => got.push(d.toString()));
    await sleep(50);
    // The client stops reading; the server sends 40 MB (more than the loopback socket buffers hold).
    ws.pause();
    const server = [...up.clients()][0]!;
    const big = JSON.stringify({ type: 'response.output_audio.delta', delta: 'B'.repeat(1024 * 1024) });
    for (let i = 0; i < 40; i++) server.send(big);
    await sleep(300);
    // The proxy stopped reading the upstream: its unsent bytes pile up on the server side.
    expect(server.bufferedAmount).toBeGreaterThan(8 * 1024 * 1024);
    ws.resume();
    for (let i = 0; i < 100 && got.filter((m) => m === big).length < 40; i++) await sleep(50);
    expect(server.bufferedAmount).toBe(0);
    expect(got.filter((m) => m === big)).toHaveLength(40);
  });

  it('client drops mid-session: the upstream sees the close at once, record client_abort with usage so far', async () => {
    const up = await startFakeRealtime();
    const tm = await serve(up.url);
    const { ws } = await runSession(wsUrl(tm.port), 1, { close: false });
    const t0 = Date.now();
    ws.terminate();
    const code = await up.closed;
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(code).toBe(1006); // no close frame: the connection was cut
    await sleep(50);
    const metrics = (await request(`http://127.0.0.1:${tm.port}/metrics`)).body.toString();
    expect(metrics).toMatch(/tokenmeter_inflight_requests\{upstream="default"\} 0/);
    const [r] = await tm.rows();
    expect(r).toMatchObject({
      error_type: 'client_abort',
      http_status: 101,
      usage_source: 'reported',
      input_tokens: 80,
      cache_read_tokens: 20,
      output_tokens: 50,
    });
  });

  it('upstream closes with an error code: the client gets the close frame, the record names it', async () => {
    const up = await startFakeRealtime();
    const tm = await serve(up.url);
    const ws = connect(wsUrl(tm.port));
    const got = new Promise<{ code: number; reason: string }>((r) =>
      ws.once('close', (code, reason) => r({ code, reason: reason.toString() })),
    );
    await new Promise((r) => ws.once('message', r));
    // Close from the server side with 1011 (internal error).
    await sleep(20);
    [...up.clients()][0]!.close(1011, 'boom');
    expect(await got).toStrictEqual({ code: 1011, reason: 'boom' });
    const [r] = await tm.rows();
    expect(r).toMatchObject({ error_type: 'upstream_error', usage_source: 'missing' });
    expect(r!.error_message).toBe('WebSocket closed by upstream with code 1011: boom');
  });

  it('tokenmeter shuts down during a session: the session is cut and recorded', async () => {
    const up = await startFakeRealtime();
    const tm = await serve(up.url, 'limits: { shutdown_grace: 200ms }\n');
    const { ws } = await runSession(wsUrl(tm.port), 1, { close: false });
    const clientClosed = new Promise<number>((r) => ws.once('close', (code) => r(code)));
    const rows = await tm.rows(); // stop(): drain, then the open session is cut
    expect(await clientClosed).toBe(1006);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ operation: 'realtime', error_type: 'client_abort', input_tokens: 80 });
  });
});

describe('upgrades that do not become a session', () => {
  it('upstream refuses with 401: the client gets the 401 and its body, one record with status 401', async () => {
    const body =
      '{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}';
    const up = await startFakeRealtime({ refuse: { status: 401, body } });
    const tm = await serve(up.url);
    const ws = connect(wsUrl(tm.port));
    const res = await unexpectedResponse(ws);
    expect(res.status).toBe(401);
    expect(res.body).toBe(body);
    expect(res.headers['x-request-id']).toBe('req_refused');
    const rows = await tm.rows();
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({
      operation: 'realtime',
      http_status: 401,
      error_type: 'auth',
      usage_source: 'none',
      cost_nanos: null,
    });
  });

  it('an exhausted block budget refuses the upgrade with 429 (nothing reaches the upstream)', async () => {
    const up = await startFakeRealtime();
    const tm = await serve(
      up.url,
      `budgets:\n  - { name: rt-daily, scope: {}, period: day, limit: "0.01", currency: USD, action: block }\n`,
    );
    const res = await unexpectedResponse(connect(wsUrl(tm.port)));
    expect(res.status).toBe(429);
    expect(JSON.parse(res.body)).toMatchObject({ error: { type: 'budget_exceeded' } });
    expect(res.body).toContain('rt-daily');
    expect(up.upgrades).toHaveLength(0);
    const rows = await tm.rows();
    expect(rows).toMatchObject([{ operation: 'realtime', http_status: 429, error_type: 'budget_exceeded' }]);
  });

  it('admin paths and /-/ are never upgraded (404), nothing recorded', async () => {
    const up = await startFakeRealtime();
    const tm = await serve(up.url);
    for (const path of ['/metrics', '/healthz', '/-/ui/']) {
      const res = await unexpectedResponse(connect(wsUrl(tm.port, path)));
      expect(res.status).toBe(404);
    }
    expect(up.upgrades).toHaveLength(0);
    expect(await tm.rows()).toHaveLength(0);
  });

  it('unreachable upstream: 502 JSON before any 101, recorded as network', async () => {
    const tm = await serve('http://127.0.0.1:1/v1');
    const res = await unexpectedResponse(connect(wsUrl(tm.port)));
    expect(res.status).toBe(502);
    expect(JSON.parse(res.body)).toMatchObject({ error: { type: 'upstream_unreachable' } });
    const rows = await tm.rows();
    expect(rows).toMatchObject([{ operation: 'realtime', error_type: 'network', http_status: null }]);
  });

  it('an upstream that never answers the upgrade: 504 JSON before any 101, recorded as timeout', async () => {
    const held: net.Socket[] = [];
    const silent = net.createServer((s) => held.push(s)); // accepts and says nothing
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    cleanups.push(async () => {
      for (const s of held) s.destroy();
      await new Promise<void>((r) => silent.close(() => r()));
    });
    const port = (silent.address() as AddressInfo).port;
    const tm = await serve(`http://127.0.0.1:${port}/v1`, 'limits: { idle_timeout: 300ms }\n');
    const res = await unexpectedResponse(connect(wsUrl(tm.port)));
    expect(res.status).toBe(504);
    expect(JSON.parse(res.body)).toMatchObject({ error: { type: 'timeout' } });
    const rows = await tm.rows();
    expect(rows).toMatchObject([{ operation: 'realtime', error_type: 'timeout', http_status: null }]);
  });

  it('a non-WebSocket Upgrade (h2c) is ignored and served as plain HTTP/1.1', async () => {
    const up = await startFakeRealtime();
    const tm = await serve(up.url);
    const r = await request(`http://127.0.0.1:${tm.port}/v1/models`, {
      headers: {
        connection: 'Upgrade, HTTP2-Settings',
        upgrade: 'h2c',
        'http2-settings': 'AAMAAABkAARAAAAAAAIAAAAA',
      },
    });
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe('{"plain":true}');
    expect(await tm.rows()).toMatchObject([{ operation: 'other', http_status: 200 }]);
  });
});

describe('a refusal whose head cannot be forwarded as received (§3.4)', () => {
  it('a status below 100 (099): 502 upstream_error, never a head the client cannot parse', async () => {
    const up = await startRawUpstream('HTTP/1.1 099 Odd\r\ncontent-length: 2\r\n\r\n{}', cleanups);
    const tm = await serve(`${up}/v1`);
    const text = await rawUpgrade(tm.port);
    expect(text).toMatch(/^HTTP\/1\.1 502 Bad Gateway\r\n/);
    expect(text).toContain('"type":"upstream_error"');
    expect(text).toContain('Invalid status code: 99');
    const rows = await tm.rows();
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ operation: 'realtime', error_type: 'upstream_error', http_status: null });
    expect(rows[0]!.error_message).toContain('Invalid status code: 99');
  });

  it('a control character in the reason phrase: the refusal goes through with the standard phrase', async () => {
    const body = '{"error":{"message":"not allowed"}}';
    const up = await startRawUpstream(
      `HTTP/1.1 403 Forbid\x01den\r\ncontent-type: application/json\r\nx-upstream: kept\r\ncontent-length: ${body.length}\r\n\r\n${body}`,
      cleanups,
    );
    const tm = await serve(`${up}/v1`);
    const text = await rawUpgrade(tm.port);
    expect(text).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
    expect(text).not.toContain('\x01');
    expect(text).toContain('x-upstream: kept\r\n');
    expect(text.endsWith(`\r\n\r\n${body}`)).toBe(true);
    expect(await tm.rows()).toMatchObject([{ operation: 'realtime', http_status: 403, error_type: 'auth' }]);
  });
});

describe("an exception of tokenmeter's own in a session (§3.4, traffic first)", () => {
  for (const step of ['onRefused', 'onUpgrade'] as const) {
    it(`in ${step}: that session is answered 500, counted and recorded; serve keeps serving`, async () => {
      const proto = WsSession.prototype as unknown as Record<string, unknown>;
      const original = proto[step];
      proto[step] = () => {
        throw new Error(`${step} exploded`);
      };
      cleanups.push(async () => {
        proto[step] = original;
      });
      const up = await startFakeRealtime(
        step === 'onRefused' ? { refuse: { status: 401, body: '{"error":{}}' } } : {},
      );
      const tm = await serve(up.url);
      const text = await rawUpgrade(tm.port);
      proto[step] = original;
      expect(text).toMatch(/^HTTP\/1\.1 500 /);
      expect(text).toContain('"type":"internal_error"');
      expect(text).not.toContain('exploded'); // no internals to the client
      // After a 101, the upstream's side of the session is closed too, not left open.
      if (step === 'onUpgrade') expect(await up.closed).toBeGreaterThan(0);
      expect((await request(`http://127.0.0.1:${tm.port}/healthz`)).status).toBe(200);
      const metrics = (await request(`http://127.0.0.1:${tm.port}/metrics`)).body.toString();
      expect(metrics).toMatch(/tokenmeter_internal_errors_total\{component="proxy"\} 1/);
      const rows = await tm.rows();
      expect(rows).toHaveLength(1);
      expect(rows[0]).toMatchObject({ operation: 'realtime', error_type: 'internal_error' });
      expect(rows[0]!.error_message).toBe(`${step} exploded`);
    });
  }
});

/** Sends a WebSocket upgrade request on a raw socket; resolves with every byte the proxy sent back (latin1). */
const rawUpgrade = (port: number, path = `/v1/realtime?model=${MODEL}`): Promise<string> =>
  rawExchange(
    port,
    `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
      `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n` +
      `Authorization: Bearer ${API_KEY}\r\n\r\n`,
  );

function unexpectedResponse(
  ws: WebSocket,
): Promise<{ status: number; body: string; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    ws.on('error', () => {
      /* the refused handshake also errors; the response is what we look at */
    });
    ws.once('open', () => reject(new Error('upgraded unexpectedly')));
    ws.once('unexpected-response', (_req, res: IncomingMessage) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          body: Buffer.concat(chunks).toString(),
          headers: res.headers,
        }),
      );
    });
  });
}
