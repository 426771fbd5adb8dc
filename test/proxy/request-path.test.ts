/**
 * The request path end to end (issue 11): `startServe` exactly as `tokenmeter serve` runs it (real
 * runtime, SQLite file, metrics, presets), real HTTP upstreams on 127.0.0.1, and for every path a
 * request can take, what the client got and the one record it left in the audit log.
 */
import http from 'node:http';
import net from 'node:net';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openSqlite } from '../../src/sinks/audit/sqlite.js';
import { afterEach, describe, expect, it } from 'vitest';
import { startServe, warnIfExposed, type RunningServer } from '../../src/cli/serve.js';
import { mkdirSync, rmSync } from 'node:fs';
import { createLogger, SILENT_LOGGER, type Logger } from '../../src/log.js';
import { createMeter } from '../../src/meter/index.js';
import type { Meter, RequestMeter } from '../../src/meter/types.js';
import { createProxyServer } from '../../src/proxy/server.js';
import type { RequestRecord } from '../../src/record.js';
import { NOOP_HEALTH, type HealthCounters, type Sink } from '../../src/sinks/types.js';
import { makeTempDir, waitFor } from '../e2e/helpers.js';
import { testSettings, upstreamSettings } from './helpers.js';
import { rawExchange, request, startRawUpstream, startTestUpstream, type Handler } from './http-helpers.js';
import { UsageChunkStripper } from '../../src/proxy/usage-injection.js';
import { RecordingMeter } from './recording-meter.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});
const startUpstream = (handler: Handler) => startTestUpstream(handler, cleanups);
/** An upstream answering every request with 200 and this body. */
const answering = (body: string, contentType = 'application/json') =>
  startUpstream((_q, res) => {
    res.writeHead(200, { 'content-type': contentType });
    res.end(body);
  });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** An upstream that holds each request's answer (a completion) until its function in `held` is called. */
async function heldUpstream() {
  const held: Array<() => void> = [];
  const up = await startUpstream((_q, res) =>
    held.push(() => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(completion({ prompt_tokens: 3, completion_tokens: 1 }));
    }),
  );
  return { up, held };
}

const CHAT = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello to the whole world' }] };
const completion = (usage?: object) =>
  JSON.stringify({
    id: 'chatcmpl-1',
    object: 'chat.completion',
    model: 'gpt-4o-mini',
    choices: [{ index: 0, message: { role: 'assistant', content: 'hello' }, finish_reason: 'stop' }],
    ...(usage ? { usage } : {}),
  });

interface Served {
  running: RunningServer;
  base: string;
  /** Stops serve (flushing the audit queue) and returns every row. */
  rows(): Promise<RequestRecord[]>;
  metrics(): Promise<string>;
}

async function serve(
  upstreamUrl: string,
  config = '',
  opts: { log?: Logger; dbDir?: string } = {},
): Promise<Served> {
  const tmp = makeTempDir('tm-request-path-');
  const dbDir = opts.dbDir ?? tmp.dir;
  const db = join(dbDir, 'audit.db');
  const cfg = join(tmp.dir, 'tokenmeter.yaml');
  writeFileSync(cfg, config);
  const running = await startServe(
    { upstream: upstreamUrl, port: '0', db, config: cfg, logLevel: 'silent' },
    { OTEL_SDK_DISABLED: 'true' },
    tmp.dir,
    opts.log ?? SILENT_LOGGER,
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
  const base = `http://127.0.0.1:${running.port}`;
  return {
    running,
    base,
    async rows() {
      await stop();
      const conn = openSqlite(db, { readonly: true });
      const rows = conn.prepare('SELECT * FROM requests ORDER BY ts_start, id').all() as RequestRecord[];
      conn.close();
      return rows;
    },
    async metrics() {
      return (await request(`${base}/metrics`)).body.toString();
    },
  };
}

/** A proxy server with this meter (no runtime), and one chat request through it. */
async function proxyOnce(upstreamUrl: string, meter: Meter, health?: HealthCounters) {
  const proxy = createProxyServer({
    settings: testSettings([upstreamSettings('default', upstreamUrl)]),
    meter,
    log: SILENT_LOGGER,
    health,
  });
  const addr = await proxy.listen();
  cleanups.push(() => proxy.close(0));
  const r = await request(`http://127.0.0.1:${addr.port}/v1/chat/completions`, {
    method: 'POST',
    body: JSON.stringify(CHAT),
  });
  return { proxy, r };
}

/** Health counters that record each internal error's component, in order. */
const recordingHealth = (errors: string[]): HealthCounters => ({
  ...NOOP_HEALTH,
  internalError: (c) => errors.push(c),
});

const post = (base: string, path: string, body: string | Buffer, headers: Record<string, string> = {}) =>
  request(`${base}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Bearer sk-test-key', ...headers },
    body,
  });

describe('never a double generation (§3.1)', () => {
  it('a POST whose reused upstream socket is reset is answered 502 and never re-sent', async () => {
    let posts = 0;
    const up = await startUpstream((req, res) => {
      posts++;
      // The second request on the pooled connection: the upstream got it, then the connection dies.
      if (posts === 2) req.socket.destroy();
      else {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(completion({ prompt_tokens: 10, completion_tokens: 1 }));
      }
    });
    const s = await serve(`${up.url}/v1`);
    expect((await post(s.base, '/v1/chat/completions', JSON.stringify(CHAT))).status).toBe(200);
    const second = await post(s.base, '/v1/chat/completions', JSON.stringify(CHAT));
    expect(second.status).toBe(502);
    await sleep(100);
    expect(posts).toBe(2); // one per client request: the reset POST was not sent again
    const rows = await s.rows();
    expect(rows).toHaveLength(2);
    // It reached the upstream, so a generation may have been billed: input estimated, output unknown.
    expect(rows[1]).toMatchObject({ error_type: 'network', http_status: null, usage_source: 'estimated' });
    expect(rows[1]!.input_tokens).toBeGreaterThan(0);
    expect(rows[1]!.output_tokens).toBeNull();
  });
});

describe('unknown is not zero, end to end (§4.2)', () => {
  it('a client abort before the response head: input estimated from the body, counted as unreported', async () => {
    let seen!: () => void;
    const arrived = new Promise<void>((r) => (seen = r));
    const up = await startUpstream(() => seen()); // never answers
    const s = await serve(`${up.url}/v1`);
    const req = http.request(`${s.base}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
    });
    req.on('error', () => {});
    req.end(JSON.stringify(CHAT));
    await arrived;
    req.destroy();
    await sleep(100);
    expect(await s.metrics()).toMatch(
      /tokenmeter_usage_unreported_total\{upstream="default",model="gpt-4o-mini",usage_source="estimated"\} 1/,
    );
    const [row] = await s.rows();
    expect(row).toMatchObject({ error_type: 'client_abort', usage_source: 'estimated', output_tokens: null });
    expect(row!.input_tokens).toBeGreaterThan(0);
  });

  it('a 200 without usage and without text to count: missing, NULL tokens and cost, never 0', async () => {
    const up = await answering(JSON.stringify({ object: 'list', data: [], model: 'text-embedding-3-small' }));
    const s = await serve(`${up.url}/v1`);
    // Token arrays cannot be estimated without the model's own tokenizer here: an empty input list.
    const r = await post(
      s.base,
      '/v1/embeddings',
      JSON.stringify({ model: 'text-embedding-3-small', input: [] }),
    );
    expect(r.status).toBe(200);
    const [row] = await s.rows();
    expect(row).toMatchObject({
      usage_source: 'missing',
      input_tokens: null,
      output_tokens: null,
      cost_nanos: null,
    });
  });

  it('a response too large to meter: the client gets every byte, the record says missing (NULL tokens)', async () => {
    const big = completion({ prompt_tokens: 5, completion_tokens: 5 }).replace(
      '"hello"',
      JSON.stringify('x'.repeat(300_000)),
    );
    const up = await answering(big);
    const s = await serve(`${up.url}/v1`, 'limits:\n  max_request_body: 100000\n');
    const r = await post(s.base, '/v1/chat/completions', JSON.stringify(CHAT));
    expect(r.body.toString()).toBe(big);
    const [row] = await s.rows();
    expect(row).toMatchObject({
      usage_source: 'missing',
      input_tokens: null,
      output_tokens: null,
      cost_nanos: null,
    });
    expect(row!.note).toContain('response_too_large_to_meter');
  });

  it('images without usage: the image count is kept, token counts stay NULL', async () => {
    const up = await answering(
      JSON.stringify({ created: 1, data: [{ url: 'https://x/1.png' }, { url: 'https://x/2.png' }] }),
    );
    const s = await serve(`${up.url}/v1`);
    await post(
      s.base,
      '/v1/images/generations',
      JSON.stringify({ model: 'dall-e-3', prompt: 'a cat', n: 2 }),
    );
    const [row] = await s.rows();
    expect(row).toMatchObject({
      operation: 'image_generation',
      images: 2,
      input_tokens: null,
      output_tokens: null,
    });
    expect(row!.cost_nanos).toBe(80_000_000); // 2 × $0.04 per image (reference preset)
  });

  it('a 200 whose body is an HTML page: classified as an upstream error, output unknown', async () => {
    const html = '<html><head><title>502 Bad Gateway</title></head><body>cloudflare</body></html>';
    const up = await answering(html, 'text/html');
    const s = await serve(`${up.url}/v1`);
    const r = await post(s.base, '/v1/chat/completions', JSON.stringify(CHAT));
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe(html); // forwarded as-is
    const [row] = await s.rows();
    expect(row).toMatchObject({ error_type: 'upstream_error', usage_source: 'missing', output_tokens: null });
    expect(row!.error_message).toMatch(/non-JSON/);
  });

  it('implausible token counts never become numbers (1e30, 2^53+1, 1e12)', async () => {
    const usages = [
      { prompt_tokens: 1e30, completion_tokens: 1 },
      { prompt_tokens: '9007199254740993', completion_tokens: 1 },
      { prompt_tokens: 1, completion_tokens: 1e12 },
    ];
    let i = 0;
    const up = await answering(completion(usages[i++]));
    const s = await serve(`${up.url}/v1`);
    for (let k = 0; k < usages.length; k++) await post(s.base, '/v1/chat/completions', JSON.stringify(CHAT));
    const m = await s.metrics();
    const rows = await s.rows();
    expect(rows).toHaveLength(3);
    for (const row of rows) {
      expect(row.usage_source).not.toBe('reported');
      expect(row.note).toMatch(/usage_implausible/);
      for (const v of [row.input_tokens, row.output_tokens]) if (v !== null) expect(v).toBeLessThan(1e6);
      if (row.cost_nanos !== null) expect(row.cost_nanos).toBeLessThan(1_000_000);
    }
    expect(m).not.toMatch(/e\+\d\d/); // no astronomically large counter anywhere
  });
});

describe('no way around metering (§3.3)', () => {
  it('a request padded past the body cap is still metered from its response', async () => {
    const up = await answering(completion({ prompt_tokens: 1000, completion_tokens: 100 }));
    const s = await serve(`${up.url}/v1`, 'limits:\n  max_request_body: 4096\n');
    const padded = Buffer.from(JSON.stringify(CHAT).replace('{', '{' + ' '.repeat(20_000)));
    const r = await post(s.base, '/v1/chat/completions', padded);
    expect(r.status).toBe(200);
    expect(up.seen[0]!.body.equals(padded)).toBe(true);
    const [row] = await s.rows();
    expect(row).toMatchObject({ usage_source: 'reported', input_tokens: 1000, output_tokens: 100 });
    expect(row!.request_model).toBeNull();
    expect(row!.cost_nanos).toBe(210_000); // priced by the response's model: 1000×0.15 + 100×0.6 per 1M
    expect(row!.note).toContain('request_too_large_to_meter');
  });

  it('a stream sent with a non-JSON Content-Type is still metered (usage injected and reported)', async () => {
    const up = await startUpstream((_q, res, body) => {
      const asked = body.toString().includes('"include_usage":true');
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(
        'data: {"id":"c","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n',
      );
      if (asked)
        res.write(
          'data: {"id":"c","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":1}}\n\n',
        );
      res.end('data: [DONE]\n\n');
    });
    const s = await serve(`${up.url}/v1`);
    const r = await post(s.base, '/v1/chat/completions', JSON.stringify({ ...CHAT, stream: true }), {
      'content-type': 'text/plain',
    });
    expect(r.body.toString()).not.toContain('"choices":[]'); // the injected chunk is hidden
    const [row] = await s.rows();
    expect(row).toMatchObject({ usage_source: 'reported', input_tokens: 9, output_tokens: 1, stream: 1 });
  });
});

describe('timeouts and limits on the client side (§3.1)', () => {
  it('request bodies held at once are bounded (max_buffered_bodies): a body that does not fit waits, a small one does not', async () => {
    const { up, held } = await heldUpstream();
    const s = await serve(`${up.url}/v1`, 'limits:\n  max_request_body: 1MiB\n  max_buffered_bodies: 2MiB\n');
    const big = (tag: string) =>
      post(
        s.base,
        '/v1/chat/completions',
        JSON.stringify({ ...CHAT, user: tag, pad: 'x'.repeat(700 * 1024) }),
      );
    const first = [big('a'), big('b')];
    await waitFor('2 request(s) at the upstream', () => (up.seen.length >= 2 ? true : undefined));
    // 2 × 700 KiB are held until their answers; a third would take the total past 2 MiB.
    const third = big('c');
    const small = post(s.base, '/v1/chat/completions', JSON.stringify(CHAT));
    await waitFor('3 request(s) at the upstream', () => (up.seen.length >= 3 ? true : undefined));
    await sleep(300);
    expect(up.seen.map((r) => r.body.length < 1024)).toEqual([false, false, true]); // the small one went on
    held.shift()!(); // one big answer releases its body
    await waitFor('4 request(s) at the upstream', () => (up.seen.length >= 4 ? true : undefined));
    while (held.length) held.shift()!();
    for (const r of await Promise.all([...first, third, small])) expect(r.status).toBe(200);
    // The wait is visible to operators: one body waited.
    expect(await s.metrics()).toMatch(/^tokenmeter_request_body_waits_total 1$/m);
    const rows = await s.rows();
    expect(rows).toHaveLength(4);
    for (const row of rows)
      expect(row).toMatchObject({ usage_source: 'reported', input_tokens: 3, note: null });
  });

  it('a body that waits for room longer than client_request_timeout gets 408, like any slow request', async () => {
    const { up, held } = await heldUpstream();
    const s = await serve(
      `${up.url}/v1`,
      'limits:\n  max_request_body: 1MiB\n  max_buffered_bodies: 1MiB\n  client_request_timeout: 1s\n',
    );
    const body = JSON.stringify({ ...CHAT, pad: 'x'.repeat(700 * 1024) });
    const first = post(s.base, '/v1/chat/completions', body);
    await waitFor('the first request at the upstream', () => (up.seen.length >= 1 ? true : undefined));
    const waiting = await post(s.base, '/v1/chat/completions', body).then(
      (r) => r.status,
      (err: Error) => err.message,
    );
    expect(waiting).toBe(408);
    held.shift()!();
    expect((await first).status).toBe(200); // the holder's own request is complete: never timed out
    expect(up.seen).toHaveLength(1);
    const rows = await s.rows();
    expect(rows.map((r) => r.error_type)).toEqual([null, 'client_abort']);
  });

  it('a chunked body (no Content-Length) holds room for the cap only while it uploads, then its own size', async () => {
    const { up, held } = await heldUpstream();
    const s = await serve(`${up.url}/v1`, 'limits:\n  max_request_body: 1MiB\n  max_buffered_bodies: 2MiB\n');
    const chunked = () =>
      new Promise<number>((resolve, reject) => {
        const req = http.request(`${s.base}/v1/chat/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
        });
        req.on('response', (res) => {
          res.resume();
          resolve(res.statusCode!);
        });
        req.on('error', reject);
        req.write(JSON.stringify(CHAT)); // no Content-Length: sent chunked
        req.end();
      });
    // Three small chunked bodies held at the upstream at once: had each kept room for the 1 MiB
    // cap, the third would wait for one of the first two to be answered.
    const answers = [chunked(), chunked(), chunked()];
    await waitFor('3 requests at the upstream', () => (up.seen.length >= 3 ? true : undefined));
    while (held.length) held.shift()!();
    expect(await Promise.all(answers)).toEqual([200, 200, 200]);
  });

  for (const waiting of [false, true])
    it(`shutdown cuts a request ${waiting ? 'waiting for body room' : 'still uploading'}: it is recorded before serve stops`, async () => {
      const { up, held } = await heldUpstream();
      const s = await serve(
        `${up.url}/v1`,
        'limits:\n  max_request_body: 1MiB\n  max_buffered_bodies: 1MiB\n  shutdown_grace: 100ms\n',
      );
      const body = JSON.stringify({ ...CHAT, pad: 'x'.repeat(700 * 1024) });
      if (waiting) {
        void post(s.base, '/v1/chat/completions', body).catch(() => {});
        await waitFor('the first request at the upstream', () => (up.seen.length >= 1 ? true : undefined));
      }
      const socket = net.connect(Number(new URL(s.base).port), '127.0.0.1');
      socket.on('error', () => {});
      socket.write(
        `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
          `Content-Length: ${body.length}\r\n\r\n${body.slice(0, 1000)}`,
      );
      await sleep(200);
      const rows = await s.rows(); // stops serve: the grace runs out, connections are cut
      held.length = 0;
      socket.destroy();
      expect(rows.filter((r) => r.error_type === 'client_abort')).toHaveLength(waiting ? 2 : 1);
    });

  it('a client that leaves while its body waits for room is dropped from the wait, and the room is not lost', async () => {
    const { up, held } = await heldUpstream();
    const s = await serve(`${up.url}/v1`, 'limits:\n  max_request_body: 1MiB\n  max_buffered_bodies: 1MiB\n');
    const body = JSON.stringify({ ...CHAT, pad: 'x'.repeat(700 * 1024) });
    const first = post(s.base, '/v1/chat/completions', body);
    await waitFor('1 request(s) at the upstream', () => (up.seen.length >= 1 ? true : undefined));
    const port = Number(new URL(s.base).port);
    // Sends its head and part of its body, then leaves while waiting.
    await new Promise<void>((resolve) => {
      const socket = net.connect(port, '127.0.0.1', () => {
        socket.write(
          `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
            `Content-Length: ${body.length}\r\n\r\n${body.slice(0, 1000)}`,
        );
        setTimeout(() => {
          socket.destroy();
          // The proxy notices the close before any room is given back.
          setTimeout(resolve, 400);
        }, 200);
      });
    });
    held.shift()!();
    expect((await first).status).toBe(200);
    // The room the first body held, and none for the one that left, is free again.
    const again = post(s.base, '/v1/chat/completions', body);
    await waitFor('2 request(s) at the upstream', () => (up.seen.length >= 2 ? true : undefined));
    held.shift()!();
    expect((await again).status).toBe(200);
    const rows = await s.rows();
    expect(rows.map((r) => r.error_type)).toEqual([null, 'client_abort', null]);
  });

  it('the upstream idle timer starts after the request is sent: a slow upload is not a 504', async () => {
    const up = await answering(completion({ prompt_tokens: 3, completion_tokens: 1 }));
    // A body over the metering cap is piped to the upstream as it arrives, so the upstream request
    // is open while the client is still uploading.
    const s = await serve(`${up.url}/v1`, 'limits:\n  idle_timeout: 200ms\n  max_request_body: 64\n');
    const body = JSON.stringify(CHAT);
    const status = await new Promise<number>((resolve, reject) => {
      const req = http.request(`${s.base}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': String(body.length) },
      });
      req.on('response', (res) => {
        res.resume();
        resolve(res.statusCode!);
      });
      req.on('error', reject);
      void (async () => {
        for (let i = 0; i < body.length; i += 20) {
          req.write(body.slice(i, i + 20));
          await sleep(60);
        }
        req.end();
      })();
    });
    expect(status).toBe(200);
  });

  it('slowloris: headers sent byte by byte are cut after the header timeout; connections are capped', async () => {
    const up = await startUpstream((_q, res) => res.end('{}'));
    const s = await serve(`${up.url}/v1`, 'limits:\n  client_header_timeout: 300ms\n  max_connections: 5\n');
    const { port } = s.running;
    // One client dribbling its headers.
    const slow = net.connect(port, '127.0.0.1');
    // The server answering FIN is what frees its socket; 'end' is when the client sees it.
    const slowClosed = new Promise<number>((r) => slow.on('end', () => r(Date.now())));
    const t0 = Date.now();
    void (async () => {
      for (const ch of 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Pad: ' + 'a'.repeat(100)) {
        if (slow.destroyed) return;
        slow.write(ch);
        await sleep(50);
      }
    })();
    slow.on('error', () => {});
    let answer = '';
    slow.on('data', (d: Buffer) => (answer += d.toString()));
    const closedAt = await Promise.race([slowClosed, sleep(3000).then(() => -1)]);
    expect(closedAt).not.toBe(-1);
    expect(closedAt - t0).toBeLessThan(2000);
    expect(answer).toMatch(/^HTTP\/1\.1 408 /);

    // Idle connections beyond the cap are refused, not kept.
    const idle = Array.from({ length: 12 }, () => {
      const c = net.connect(port, '127.0.0.1');
      c.on('error', () => {});
      return c;
    });
    await sleep(150);
    const open = idle.filter((c) => !c.destroyed && c.readyState === 'open').length;
    for (const c of idle) c.destroy();
    expect(open).toBeLessThanOrEqual(5);
  });
});

describe('one exchange, one record, whatever throws (§3.4)', () => {
  it('a failure inside the exchange answers 500 and still finishes the record', async () => {
    const up = await startUpstream((_q, res) => res.end('{}'));
    const inner = new RecordingMeter();
    const meter: Meter = {
      begin(input) {
        const m = inner.begin(input);
        return {
          ...m,
          finish: m.finish,
          get upstreamHeaders(): Record<string, string> {
            throw new Error('trace context exploded');
          },
        } as RequestMeter;
      },
    };
    const errors: string[] = [];
    const health = recordingHealth(errors);
    const { proxy, r } = await proxyOnce(up.url, meter, health);
    expect(r.status).toBe(500);
    expect(r.body.toString()).not.toContain('exploded'); // no internals to the client
    // A bug of tokenmeter's own, on the forward path as on the response path: counted once.
    expect(errors).toEqual(['proxy']);
    expect(await inner.requests[0]!.finished).toEqual({
      kind: 'internal',
      message: 'trace context exploded',
    });
    expect(up.seen).toHaveLength(0);
    await sleep(20);
    expect(proxy.inflight()).toBe(0);
  });

  it('a sink throwing in begin: the request succeeds and every sink still gets exactly one record', async () => {
    const up = await answering(completion({ prompt_tokens: 4, completion_tokens: 2 }));
    const got: Record<string, RequestRecord[]> = { bad: [], good: [] };
    const errors: string[] = [];
    const bad: Sink = {
      name: 'bad',
      begin: () => {
        throw new Error('begin failed');
      },
      write: (r) => got.bad!.push(r),
      close: async () => {},
    };
    const good: Sink = {
      name: 'good',
      begin: () => ({ end: (r) => got.good!.push(r) }),
      write: () => {
        throw new Error('a begun sink gets its record through its handle');
      },
      close: async () => {},
    };
    const health = recordingHealth(errors);
    const meter = createMeter({
      sinks: [bad, good],
      priceBook: {
        price: () => ({
          cost_nanos: null,
          currency: null,
          cost_source: 'unpriced',
          price_id: null,
          multiplier: null,
          upstream_reported_cost_nanos: null,
          upstream_reported_currency: null,
        }),
      },
      health,
      log: SILENT_LOGGER,
      keySecret: 'secret-0123456789',
      apps: {},
      maxEventBytes: 1 << 20,
      maxResponseBodyBytes: 1 << 20,
    });
    const { proxy, r } = await proxyOnce(up.url, meter, health);
    expect(r.status).toBe(200);
    for (let i = 0; i < 100 && proxy.inflight() > 0; i++) await sleep(5);
    expect(proxy.inflight()).toBe(0);
    expect(got.bad).toHaveLength(1);
    expect(got.good).toHaveLength(1);
    expect(got.good![0]!.input_tokens).toBe(4);
    expect(errors).toEqual(['sink:bad']);
  });
});

/** An upstream that answers each connection's first request with these raw bytes, then closes. */
const rawUpstream = (raw: string) => startRawUpstream(raw, cleanups);

/**
 * The one row a response head tokenmeter could not forward leaves: upstream_error, no usable
 * status, the reason in error_message; the upstream had the request, so its input is estimated
 * (it may be billed) while output and cost stay unknown, never a partial cost.
 */
async function expectUnforwardedHeadRow(s: Served, reason: string): Promise<void> {
  const rows = await s.rows();
  expect(rows).toHaveLength(1);
  expect(rows[0]).toMatchObject({
    error_type: 'upstream_error',
    http_status: null,
    usage_source: 'estimated',
    output_tokens: null,
    cost_nanos: null,
  });
  expect(rows[0]!.error_message).toContain(reason);
  expect(rows[0]!.input_tokens).toBeGreaterThan(0);
}

describe('a response head Node cannot send on (§3.4, traffic first)', () => {
  it('a status below 100 (099): 502 upstream_error, serve keeps serving, one record with estimated input', async () => {
    const up = await rawUpstream(
      'HTTP/1.1 099 Odd\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}',
    );
    const s = await serve(`${up}/v1`);
    const r = await post(s.base, '/v1/chat/completions', JSON.stringify(CHAT));
    expect(r.status).toBe(502);
    expect(JSON.parse(r.body.toString())).toMatchObject({ error: { type: 'upstream_error' } });
    expect(r.body.toString()).toContain('Invalid status code');
    // The process is still up and still proxying.
    expect((await request(`${s.base}/healthz`)).status).toBe(200);
    await expectUnforwardedHeadRow(s, 'Invalid status code: 99');
  });

  it('a control character in the reason phrase: status, headers and body go through with the standard phrase', async () => {
    const body = completion({ prompt_tokens: 7, completion_tokens: 3 });
    const up = await rawUpstream(
      `HTTP/1.1 200 O\x01K\r\ncontent-type: application/json\r\nx-upstream: kept\r\ncontent-length: ${body.length}\r\n\r\n${body}`,
    );
    const s = await serve(`${up}/v1`);
    const r = await post(s.base, '/v1/chat/completions', JSON.stringify(CHAT));
    expect(r.status).toBe(200);
    expect(r.headers['x-upstream']).toBe('kept');
    expect(r.body.toString()).toBe(body);
    const rows = await s.rows();
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({
      error_type: null,
      http_status: 200,
      usage_source: 'reported',
      input_tokens: 7,
      output_tokens: 3,
    });
  });

  it('an exception on the response path cuts that response, counts it and still records; serve keeps serving', async () => {
    const up = await startUpstream((_q, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: {"choices":[{"delta":{"content":"hi"}}]}\n\n');
      setTimeout(() => res.end('data: [DONE]\n\n'), 20);
    });
    const push = UsageChunkStripper.prototype.push;
    UsageChunkStripper.prototype.push = () => {
      throw new Error('stripper exploded');
    };
    cleanups.push(async () => {
      UsageChunkStripper.prototype.push = push;
    });
    const s = await serve(`${up.url}/v1`);
    // A streamed chat without include_usage: usage is injected, so the stripper sees the stream.
    const streamed = await post(
      s.base,
      '/v1/chat/completions',
      JSON.stringify({ ...CHAT, stream: true }),
    ).then(
      (r) => ({ status: r.status, body: r.body.toString() }),
      (err: Error) => ({ status: 0, body: err.message }),
    );
    expect(streamed.body).not.toContain('exploded'); // no internals to the client
    expect(streamed.body).not.toContain('[DONE]'); // cut, never a clean end
    UsageChunkStripper.prototype.push = push;
    expect((await request(`${s.base}/healthz`)).status).toBe(200);
    const errors = await s.metrics();
    expect(errors).toMatch(/tokenmeter_internal_errors_total\{component="proxy"\} 1/);
    const rows = await s.rows();
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ error_type: 'internal_error', stream: 1 });
    expect(rows[0]!.error_message).toContain('stripper exploded');
  });
});

/** Opens a raw connection, sends `raw`, and resets it (RST) once `after` bytes came back (0: at once). */
function sendAndReset(port: number, raw: string, after = 0): Promise<void> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let got = 0;
    socket.on('error', () => {});
    socket.on('close', () => resolve());
    socket.on('data', (d: Buffer) => {
      got += d.length;
      if (got > after && !socket.destroyed) socket.resetAndDestroy();
    });
    socket.write(raw, () => {
      if (after === 0) socket.resetAndDestroy();
    });
  });
}

describe('a client cannot stop the proxy (§3.4, traffic first)', () => {
  it('a reset on a request with a non-WebSocket Upgrade, or a WebSocket upgrade to an admin path, costs that request only', async () => {
    const up = await startUpstream((_q, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      let n = 0;
      const t = setInterval(() => {
        if (res.destroyed || n++ > 100) {
          clearInterval(t);
          res.end();
          return;
        }
        res.write(`data: {"choices":[{"delta":{"content":"${'x'.repeat(500)}"}}]}\n\n`);
      }, 5);
    });
    const s = await serve(`${up.url}/v1`);
    const port = Number(new URL(s.base).port);
    const h2c = 'Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n';
    // Served as plain HTTP (the Upgrade ignored), reset mid-response.
    for (let i = 0; i < 3; i++)
      await sendAndReset(port, `GET /v1/models HTTP/1.1\r\nHost: x\r\n${h2c}\r\n`, 2000);
    // Refused on the raw socket (a body with Upgrade; a WebSocket to an admin path), reset at once.
    for (let i = 0; i < 10; i++) {
      await sendAndReset(
        port,
        'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\n{}',
      );
      await sendAndReset(
        port,
        'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n',
      );
    }
    await sleep(100);
    expect((await request(`${s.base}/healthz`)).status).toBe(200);
    const rows = await s.rows();
    // The three proxied requests, each recorded once as the client's abort.
    expect(rows.map((r) => [r.path, r.error_type])).toEqual([
      ['/v1/models', 'client_abort'],
      ['/v1/models', 'client_abort'],
      ['/v1/models', 'client_abort'],
    ]);
  });
});

describe('an upstream that switches protocols uninvited (§3.1)', () => {
  it('a 101 to a plain POST is a prompt 502, recorded, never a hang until the idle timeout', async () => {
    const up = await rawUpstream(
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n',
    );
    const s = await serve(`${up}/v1`);
    const started = Date.now();
    const r = await post(s.base, '/v1/chat/completions', JSON.stringify(CHAT));
    expect(r.status).toBe(502);
    expect(Date.now() - started).toBeLessThan(5000); // the idle timeout is 300 s
    expect(r.body.toString()).toContain('101');
    await expectUnforwardedHeadRow(s, '101 Switching Protocols');
  });

  it('a 101 without an Upgrade header (a 1xx as the final answer) is a 502, not a success', async () => {
    const up = await rawUpstream('HTTP/1.1 101 Switching Protocols\r\ncontent-length: 0\r\n\r\n');
    const s = await serve(`${up}/v1`);
    const r = await post(s.base, '/v1/chat/completions', JSON.stringify(CHAT));
    expect(r.status).toBe(502);
    await expectUnforwardedHeadRow(s, '101');
  });

  it('a 101 while a streamed body is still uploading ends the exchange too', async () => {
    const up = await rawUpstream(
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n',
    );
    const s = await serve(`${up}/v1`, 'limits:\n  max_request_body: 1KiB\n');
    const status = await new Promise<number>((resolve, reject) => {
      const req = http.request(`${s.base}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
      });
      req.on('response', (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      req.write(JSON.stringify({ ...CHAT, pad: 'x'.repeat(4096) }).slice(0, 3000)); // over the cap, never finished
      setTimeout(() => reject(new Error('no answer within 5 s')), 5000).unref();
    });
    expect(status).toBe(502);
    const rows = await s.rows();
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ error_type: 'upstream_error', http_status: null });
  });
});

describe('usage injection never refuses a request (§3.3, traffic first)', () => {
  it('a streamed body too deep to re-serialize is forwarded unchanged, not answered 500', async () => {
    const up = await startUpstream((_q, res, body) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ received: body.length }));
    });
    const s = await serve(`${up.url}/v1`);
    const deep = '['.repeat(200_000) + ']'.repeat(200_000);
    const body = `{"model":"gpt-4o-mini","stream":true,"stream_options":{"x":1},"messages":[],"deep":${deep}}`;
    const r = await post(s.base, '/v1/chat/completions', body);
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body.toString())).toEqual({ received: body.length }); // the app's bytes, as sent
    const rows = await s.rows();
    expect(rows).toHaveLength(1);
    expect(rows[0]!.error_type).toBeNull();
  });
});

describe('request targets other than a path (RFC 9112 §3.2)', () => {
  const port = (s: Served) => Number(new URL(s.base).port);

  it('absolute-form (a client that takes tokenmeter for a forward proxy): forwarded by its path and metered', async () => {
    const up = await answering(completion({ prompt_tokens: 5, completion_tokens: 2 }));
    const s = await serve(`${up.url}/v1`);
    const body = JSON.stringify(CHAT);
    const text = await rawExchange(
      port(s),
      `POST http://api.example.test/v1/chat/completions?x=1 HTTP/1.1\r\nHost: api.example.test\r\n` +
        `Content-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
    );
    expect(text).toMatch(/^HTTP\/1\.1 200 /);
    expect(up.seen.map((r) => r.url)).toEqual(['/v1/chat/completions?x=1']);
    const rows = await s.rows();
    expect(rows).toMatchObject([
      { path: '/v1/chat/completions', operation: 'chat', input_tokens: 5, output_tokens: 2 },
    ]);
  });

  it('absolute-form naming an admin path is answered by tokenmeter, never forwarded', async () => {
    const up = await answering('{}');
    const s = await serve(`${up.url}/v1`);
    const text = await rawExchange(
      port(s),
      'GET http://127.0.0.1/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n',
    );
    expect(text).toMatch(/^HTTP\/1\.1 200 /);
    expect(text).toContain('{"status":"ok"}');
    expect(up.seen).toHaveLength(0);
  });

  it('OPTIONS * is answered by tokenmeter; * with any other method is a 400; neither is forwarded', async () => {
    const up = await answering('{}');
    const s = await serve(`${up.url}/v1`);
    const options = await rawExchange(
      port(s),
      'OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n',
    );
    expect(options).toMatch(/^HTTP\/1\.1 204 /);
    expect(options).toMatch(/\r\nallow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n/i);
    const get = await rawExchange(port(s), 'GET * HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n');
    expect(get).toMatch(/^HTTP\/1\.1 400 /);
    expect(get).toContain('request target');
    const ftp = await rawExchange(
      port(s),
      'GET ftp://127.0.0.1/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n',
    );
    expect(ftp).toMatch(/^HTTP\/1\.1 400 /);
    expect(up.seen).toHaveLength(0);
    expect(await s.rows()).toHaveLength(0);
  });
});

describe('admin surface (§12)', () => {
  it('/readyz is 503 while the audit log cannot write, and ready again once it can', async () => {
    const up = await answering(completion({ prompt_tokens: 2, completion_tokens: 1 }));
    const holder = makeTempDir('tm-readyz-');
    cleanups.push(async () => holder.remove());
    const dbDir = join(holder.dir, 'db');
    mkdirSync(dbDir);
    const s = await serve(`${up.url}/v1`, '', { dbDir });
    expect((await request(`${s.base}/readyz`)).status).toBe(200);
    rmSync(dbDir, { recursive: true, force: true }); // the DB and its directory are gone
    await post(s.base, '/v1/chat/completions', JSON.stringify(CHAT));
    let status = 200;
    for (let i = 0; i < 100 && status === 200; i++) {
      await sleep(20);
      status = (await request(`${s.base}/readyz`)).status;
    }
    expect(status).toBe(503);
    mkdirSync(dbDir); // the operator fixes it: the log reopens and writes the queued row
    for (let i = 0; i < 300 && status !== 200; i++) {
      await sleep(20);
      status = (await request(`${s.base}/readyz`)).status;
    }
    expect(status).toBe(200);
    const rows = await s.rows();
    expect(rows).toHaveLength(1);
  });

  it('warns at start when listening beyond loopback without auth_token', () => {
    // Checked on the settings serve starts with (no socket is bound beyond loopback in tests).
    const lines: string[] = [];
    const log = createLogger('warn', (l) => lines.push(l));
    expect(warnIfExposed({ host: '0.0.0.0', authToken: undefined }, log)).toBe(true);
    expect(lines.some((l) => l.includes('beyond loopback without auth_token'))).toBe(true);
    expect(warnIfExposed({ host: '0.0.0.0', authToken: 'tok' }, log)).toBe(false);
    for (const host of ['127.0.0.1', '127.0.0.2', 'localhost', '::1']) {
      expect(warnIfExposed({ host, authToken: undefined }, log)).toBe(false);
    }
    expect(lines).toHaveLength(1);
  });
});
