/**
 * Regressions found in review: a re-encoded (gzip) stream must not carry the upstream's
 * Content-Length, and a synchronous failure building the upstream request must still answer the
 * client and finish the record.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { gunzipSync, gzipSync } from 'node:zlib';
import { afterEach, describe, expect, it } from 'vitest';
import { SILENT_LOGGER } from '../../src/log.js';
import { createProxyServer, type ProxyServer } from '../../src/proxy/server.js';
import { testSettings, upstreamSettings } from './helpers.js';
import { RecordingMeter } from './recording-meter.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function listen(server: http.Server): Promise<string> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => new Promise((r) => server.close(() => r())));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function startProxy(upstreamUrl: string, headers: Record<string, string> = {}) {
  const meter = new RecordingMeter();
  const proxy: ProxyServer = createProxyServer({
    settings: testSettings([upstreamSettings('default', `${upstreamUrl}/v1`, { headers })]),
    meter,
    log: SILENT_LOGGER,
  });
  const addr = await proxy.listen();
  cleanups.push(() => proxy.close(0));
  return { meter, base: `http://127.0.0.1:${addr.port}` };
}

function post(
  url: string,
  body: object,
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer; aborted: boolean }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      { method: 'POST', headers: { 'content-type': 'application/json' } },
      (res) => {
        const chunks: Buffer[] = [];
        let aborted = false;
        res.on('aborted', () => (aborted = true));
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', () => (aborted = true));
        res.on('close', () =>
          resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks), aborted }),
        );
      },
    );
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

describe('proxy review regressions', () => {
  it('drops Content-Length when the injected usage chunk is removed from a gzip stream', async () => {
    const sse =
      'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n' +
      'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n' +
      'data: [DONE]\n\n';
    const gz = gzipSync(Buffer.from(sse));
    const upstream = http.createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        res.writeHead(200, {
          'content-type': 'text/event-stream',
          'content-encoding': 'gzip',
          'content-length': String(gz.length),
        });
        res.end(gz);
      });
    });
    const { meter, base } = await startProxy(await listen(upstream));
    const res = await post(`${base}/v1/chat/completions`, {
      model: 'gpt-4o',
      stream: true,
      messages: [{ role: 'user', content: 'hi' }],
    });
    expect(res.aborted).toBe(false);
    expect(res.headers['content-length']).toBeUndefined();
    const text = gunzipSync(res.body).toString('utf8');
    expect(text).toContain('"content":"hi"');
    expect(text).not.toContain('"usage"'); // hidden from the client …
    expect(await meter.requests[0]!.finished).toEqual({ kind: 'complete' });
    expect(gunzipSync(Buffer.concat(meter.requests[0]!.chunks)).toString('utf8')).toContain('"usage"'); // … seen by the meter
  });

  it('answers 502 and finishes the record when the upstream request cannot be built', async () => {
    const upstream = http.createServer((_req, res) => res.end('{}'));
    // A header value with a newline makes node:http throw synchronously while building the request.
    const { meter, base } = await startProxy(await listen(upstream), { 'x-group': 'a\nb' });
    const res = await post(`${base}/v1/chat/completions`, { model: 'gpt-4o', messages: [] });
    expect(res.status).toBe(502);
    expect(JSON.parse(res.body.toString('utf8'))).toMatchObject({ error: { type: 'upstream_error' } });
    expect(res.body.toString('utf8')).toContain('default');
    const outcome = await meter.requests[0]!.finished;
    expect(outcome.kind).toBe('network');
    expect(meter.inflight()).toBe(0);
  });
});
