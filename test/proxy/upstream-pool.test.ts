/**
 * The HTTP exchange's upstream connections (docs/proxy.md, "Upstream connections"): undici's pool
 * per upstream, driven through a real proxy or directly. What node:http's client did for the
 * exchange and the pool must keep doing: one connection reused back to back, closed before the
 * upstream would close it, an idempotent request re-sent once after a reset, 1xx informational
 * answers skipped, and the response's raw headers and header object as node:http gives them.
 */
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { SILENT_LOGGER } from '../../src/log.js';
import { createProxyServer } from '../../src/proxy/server.js';
import { createPools, UpstreamRequest, type UpstreamResponse } from '../../src/proxy/upstream-call.js';
import { testSettings, upstreamSettings } from './helpers.js';
import { request, startKeepAliveUpstream, startTestUpstream, type Handler } from './http-helpers.js';
import { RecordingMeter } from './recording-meter.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

async function startProxy(upstreamUrl: string) {
  const meter = new RecordingMeter();
  const proxy = createProxyServer({
    settings: testSettings([upstreamSettings('default', upstreamUrl)]),
    meter,
    log: SILENT_LOGGER,
  });
  const addr = await proxy.listen();
  cleanups.push(() => proxy.close(0));
  return { base: `http://127.0.0.1:${addr.port}`, meter };
}

/** An upstream counting its connections; the handler gets the request's number (1-based). */
async function countingUpstream(handler: (n: number, ...a: Parameters<Handler>) => void) {
  let requests = 0;
  let connections = 0;
  const up = await startTestUpstream((req, res, body) => handler(++requests, req, res, body), cleanups);
  up.server.keepAliveTimeout = 60_000;
  up.server.on('connection', () => connections++);
  return {
    url: up.url,
    get requests() {
      return requests;
    },
    get connections() {
      return connections;
    },
  };
}

const ok = (res: http.ServerResponse, headers: http.OutgoingHttpHeaders = {}) => {
  res.writeHead(200, { 'content-type': 'application/json', ...headers });
  res.end('{"data":[]}');
};

describe('re-sending after a reset (§3.1)', () => {
  it('a GET whose pooled connection is reset before any answer is re-sent once and answered', async () => {
    const up = await countingUpstream((n, req, res) => {
      if (n === 2)
        req.socket.destroy(); // the pooled connection dies with the request on it
      else ok(res);
    });
    const { base, meter } = await startProxy(`${up.url}/v1`);
    expect((await request(`${base}/v1/models`)).status).toBe(200);
    const second = await request(`${base}/v1/models`);
    expect(second.status).toBe(200);
    expect(second.body.toString()).toBe('{"data":[]}');
    expect(up.requests).toBe(3); // the reset one, then its single re-send
    await Promise.all(meter.requests.map((r) => r.finished));
    expect(meter.requests).toHaveLength(2);
    expect(meter.requests[1]!.outcomes).toEqual([{ kind: 'complete' }]);
  });

  it('a GET reset again on its re-send is answered 502: one re-send, never a loop', async () => {
    const up = await countingUpstream((n, req, res) => {
      if (n >= 2) req.socket.destroy();
      else ok(res);
    });
    const { base } = await startProxy(`${up.url}/v1`);
    expect((await request(`${base}/v1/models`)).status).toBe(200);
    const second = await request(`${base}/v1/models`);
    expect(second.status).toBe(502);
    expect(JSON.parse(second.body.toString()).error.message).toContain('ECONNRESET');
    expect(up.requests).toBe(3);
  });
});

describe('the response head as node:http gave it', () => {
  it('a 103 Early Hints before the answer is skipped: the client gets the 200, its headers and body', async () => {
    const body = '{"ok":true}';
    const server = net.createServer((socket) => {
      socket.on('error', () => {});
      socket.once('data', () =>
        socket.end(
          'HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n' +
            `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Final: yes\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
        ),
      );
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
    const { base, meter } = await startProxy(`http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`);
    const r = await request(`${base}/v1/models`);
    expect(r.status).toBe(200);
    expect(r.headers['x-final']).toBe('yes');
    expect(r.headers.link).toBeUndefined();
    expect(r.body.toString()).toBe(body);
    await Promise.all(meter.requests.map((q) => q.finished));
    expect(meter.requests[0]!.head!.status).toBe(200);
  });

  it('an unsolicited 100 Continue: 502 upstream_error naming it, and the record says so', async () => {
    const server = net.createServer((socket) => {
      socket.on('error', () => {});
      socket.once('data', () =>
        socket.end(
          'HTTP/1.1 100 Continue\r\n\r\n' +
            'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}',
        ),
      );
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
    const { base, meter } = await startProxy(`http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`);
    const r = await request(`${base}/v1/chat/completions`, { method: 'POST', body: '{"model":"m"}' });
    expect(r.status).toBe(502);
    const body = JSON.parse(r.body.toString()) as { error: { type: string; message: string } };
    expect(body.error.type).toBe('upstream_error');
    expect(body.error.message).toContain('100 Continue');
    await Promise.all(meter.requests.map((q) => q.finished));
    expect(meter.requests[0]!.outcomes[0]).toMatchObject({ kind: 'upstream_reset', reachedUpstream: true });
  });

  it('keeps raw header case, order and repeats; the meter gets the lower-cased object node:http builds', async () => {
    const up = await countingUpstream((_n, _req, res) => {
      res.setHeader('X-Upper-Case', 'A');
      res.setHeader('set-cookie', ['a=1', 'b=2']);
      res.setHeader('x-repeat', ['one', 'two']);
      res.setHeader('Content-Type', 'application/json');
      res.end('{}');
    });
    const { base, meter } = await startProxy(`${up.url}/v1`);
    const r = await request(`${base}/v1/models`);
    const names = r.rawHeaders.filter((_, i) => i % 2 === 0);
    expect(names).toContain('X-Upper-Case');
    expect(names.filter((n) => n.toLowerCase() === 'set-cookie')).toHaveLength(2);
    expect(r.headers['set-cookie']).toEqual(['a=1', 'b=2']);
    await Promise.all(meter.requests.map((q) => q.finished));
    const head = meter.requests[0]!.head!;
    expect(head.headers['x-upper-case']).toBe('A');
    expect(head.headers['set-cookie']).toEqual(['a=1', 'b=2']);
    expect(head.headers['x-repeat']).toBe('one, two');
    expect(head.headers['content-type']).toBe('application/json');
  });
});

/** One GET through `createPools` directly; resolves with the status once the body has ended. */
function getVia(pool: ReturnType<ReturnType<typeof createPools>['poolFor']>, url: string): Promise<number> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    new UpstreamRequest(
      pool,
      { method: 'GET', path: '/v1/models', headers: ['Host', u.host], body: null },
      {
        onSent: () => {},
        onError: reject,
        onResponse: (res: UpstreamResponse) => {
          res.on('data', () => {});
          res.on('end', () => resolve(res.statusCode));
        },
      },
    );
  });
}

describe('the upstream pool', () => {
  it('reuses one connection back to back and closes it after the free-socket timeout, never much later', async () => {
    const up = await startKeepAliveUpstream(cleanups);
    const closed = up.closedAfter();
    const pools = createPools({ freeSocketTimeoutMs: 300 });
    cleanups.push(() => pools.destroy());
    const pool = pools.poolFor(upstreamSettings('default', `${up.url}/v1`));
    for (let i = 0; i < 3; i++) {
      expect(await getVia(pool, up.url)).toBe(200);
      // As traffic does, the next request comes on a later turn (within the same turn the
      // connection is still settling its last answer and the pool would open a second one).
      await new Promise((r) => setTimeout(r, 5));
    }
    expect(up.connections).toBe(1);
    // undici checks its keep-alive timers about once a second: closed after the timeout, within that.
    const ms = await closed;
    expect(ms).toBeGreaterThanOrEqual(250);
    expect(ms).toBeLessThan(1600);
  });

  it("closes a connection 1 s before the upstream's Keep-Alive hint when that comes first", async () => {
    const up = await startKeepAliveUpstream(cleanups, 'timeout=2');
    const closed = up.closedAfter();
    const pools = createPools({ freeSocketTimeoutMs: 30_000 });
    cleanups.push(() => pools.destroy());
    const pool = pools.poolFor(upstreamSettings('default', `${up.url}/v1`));
    expect(await getVia(pool, up.url)).toBe(200);
    const ms = await closed;
    expect(ms).toBeGreaterThanOrEqual(900);
    expect(ms).toBeLessThan(2000);
  });

  it('retires a connection after its time to live: the next request connects again', async () => {
    const up = await startKeepAliveUpstream(cleanups);
    const pools = createPools({ clientTtlMs: 300 });
    cleanups.push(() => pools.destroy());
    const pool = pools.poolFor(upstreamSettings('default', `${up.url}/v1`));
    expect(await getVia(pool, up.url)).toBe(200);
    await new Promise((r) => setTimeout(r, 50));
    expect(await getVia(pool, up.url)).toBe(200);
    expect(up.connections).toBe(1); // within its time to live: reused
    await new Promise((r) => setTimeout(r, 400));
    expect(await getVia(pool, up.url)).toBe(200);
    expect(up.connections).toBe(2); // past it (and well within the 4 s idle limit): a new connection
  });

  it('never reuses a connection whose upstream announces a keep-alive of 1 s or less', async () => {
    const up = await startKeepAliveUpstream(cleanups, 'timeout=1');
    const pools = createPools();
    cleanups.push(() => pools.destroy());
    const pool = pools.poolFor(upstreamSettings('default', `${up.url}/v1`));
    for (let i = 0; i < 3; i++) expect(await getVia(pool, up.url)).toBe(200);
    expect(up.connections).toBe(3);
  });
});
