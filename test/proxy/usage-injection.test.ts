import http from 'node:http';
import type { AddressInfo } from 'node:net';
import zlib from 'node:zlib';
import { afterEach, describe, expect, it } from 'vitest';
import { SILENT_LOGGER } from '../../src/log.js';
import { inspectRequest } from '../../src/meter/inspect.js';
import { createProxyServer } from '../../src/proxy/server.js';
import {
  EncodedUsageChunkStripper,
  injectUsageOption,
  isUsageOnlyEvent,
  shouldInjectUsage,
  USAGE_CHUNK_HOLD_CAP,
  UsageChunkStripper,
} from '../../src/proxy/usage-injection.js';
import { testSettings, upstreamSettings } from './helpers.js';
import { RecordingMeter } from './recording-meter.js';

const up = upstreamSettings('default', 'http://127.0.0.1:1');

function infoFor(path: string, body: object) {
  return inspectRequest('POST', path, Buffer.from(JSON.stringify(body)));
}

describe('shouldInjectUsage (§3.3)', () => {
  it('injects only for streamed chat/text_completion requests that did not ask, when the upstream allows', () => {
    expect(shouldInjectUsage(infoFor('/v1/chat/completions', { model: 'm', stream: true }), up)).toBe(true);
    expect(shouldInjectUsage(infoFor('/v1/completions', { model: 'm', stream: true }), up)).toBe(true);
    expect(shouldInjectUsage(infoFor('/v1/chat/completions', { model: 'm' }), up)).toBe(false);
    expect(
      shouldInjectUsage(
        infoFor('/v1/chat/completions', {
          model: 'm',
          stream: true,
          stream_options: { include_usage: true },
        }),
        up,
      ),
    ).toBe(false);
    expect(shouldInjectUsage(infoFor('/v1/messages', { model: 'm', stream: true }), up)).toBe(false);
    expect(shouldInjectUsage(infoFor('/v1/responses', { model: 'm', stream: true }), up)).toBe(false);
    expect(
      shouldInjectUsage(infoFor('/v1/chat/completions', { model: 'm', stream: true }), {
        ...up,
        injectUsage: false,
      }),
    ).toBe(false);
  });
});

describe('injectUsageOption', () => {
  it('inserts the field textually and leaves every other byte as the app wrote it', () => {
    const raw = Buffer.from('  {"model": "gpt-4o",\n "stream": true, "n": 1.0, "big": 12345678901234567890}');
    const out = injectUsageOption(raw, JSON.parse(raw.toString()) as Record<string, unknown>).toString();
    expect(out).toBe(
      '  {"stream_options":{"include_usage":true},"model": "gpt-4o",\n "stream": true, "n": 1.0, "big": 12345678901234567890}',
    );
    expect(JSON.parse(out).stream_options).toEqual({ include_usage: true });
  });
  it('sets include_usage inside an existing stream_options, keeping its other fields', () => {
    const body = { model: 'm', stream: true, stream_options: { include_usage: false, other: 1 } };
    const out = JSON.parse(injectUsageOption(Buffer.from(JSON.stringify(body)), body).toString());
    expect(out).toEqual({ model: 'm', stream: true, stream_options: { include_usage: true, other: 1 } });
  });
});

const usageEvent =
  'data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}';
function stream(eol: string): string {
  return [
    'data: {"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}',
    ': keep-alive',
    'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hé"}}],"usage":null}',
    'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}',
    usageEvent,
    'data: [DONE]',
  ]
    .map((e) => e + eol + eol)
    .join('');
}

function runStripper(
  input: Buffer,
  splits: (buf: Buffer) => Buffer[],
): { out: string; removed: number; pieces: number } {
  const s = new UsageChunkStripper();
  const out: Buffer[] = [];
  for (const part of splits(input)) out.push(...s.push(part));
  out.push(...s.flush());
  return { out: Buffer.concat(out).toString('utf8'), removed: s.removed, pieces: out.length };
}

const whole = (b: Buffer) => [b];
const byteByByte = (b: Buffer) => Array.from({ length: b.length }, (_, i) => b.subarray(i, i + 1));
const byLine = (b: Buffer) =>
  b
    .toString('latin1')
    .split(/(?<=\n)/)
    .map((s) => Buffer.from(s, 'latin1'));

describe('UsageChunkStripper', () => {
  for (const [name, eol] of [
    ['LF', '\n'],
    ['CRLF', '\r\n'],
    ['CR', '\r'],
  ] as const) {
    for (const [how, split] of [
      ['whole', whole],
      ['line by line', byLine],
      ['byte by byte', byteByByte],
    ] as const) {
      it(`removes exactly the usage-only event (${name}, ${how})`, () => {
        const input = Buffer.from(stream(eol), 'utf8');
        const expected = stream(eol).replace(usageEvent + eol + eol, '');
        const r = runStripper(input, split);
        expect(r.out).toBe(expected);
        expect(r.removed).toBe(1);
      });
    }
  }

  it('forwards each complete event at once and holds only an incomplete tail', () => {
    const s = new UsageChunkStripper();
    expect(Buffer.concat(s.push(Buffer.from('data: {"a":1}\n\ndata: {"b"'))).toString()).toBe(
      'data: {"a":1}\n\n',
    );
    expect(Buffer.concat(s.push(Buffer.from(':2}\n\n'))).toString()).toBe('data: {"b":2}\n\n');
  });

  it('keeps usage that comes with content (GLM finish chunk, Moonshot choices[0].usage) and unterminated events', () => {
    const glm =
      'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":1}}\n\n';
    expect(runStripper(Buffer.from(glm), whole).out).toBe(glm);
    const moon = 'data: {"choices":[{"index":0,"delta":{},"usage":{"prompt_tokens":1}}]}\n\n';
    expect(runStripper(Buffer.from(moon), whole).out).toBe(moon);
    expect(runStripper(Buffer.from('data: {"choices":[{"delta":{}}]}'), whole).out).toBe(
      'data: {"choices":[{"delta":{}}]}',
    );
    expect(runStripper(Buffer.from(usageEvent), whole)).toMatchObject({ out: '', removed: 1 });
  });

  it('recognises usage-only events and nothing else', () => {
    expect(isUsageOnlyEvent(Buffer.from(usageEvent + '\n\n'))).toBe(true);
    expect(isUsageOnlyEvent(Buffer.from('data: {"choices":[],"usage":null}\n\n'))).toBe(false);
    expect(isUsageOnlyEvent(Buffer.from('data: {"choices":[],"prompt_filter_results":[]}\n\n'))).toBe(false);
    expect(isUsageOnlyEvent(Buffer.from('data: [DONE]\n\n'))).toBe(false);
    expect(isUsageOnlyEvent(Buffer.from('data: {"usage": \n\n'))).toBe(false);
  });
});

// --- One SSE parser (issue 11): the stripper runs on src/sse's capped parser -------------------

/** A stream as pieces; `true` marks the bytes the stripper must remove (a usage-only event). */
type Piece = [string, boolean];
const usageOnly = (eol: string) =>
  `data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}${eol}${eol}`;
const pieceStreams: Record<string, Piece[]> = {
  'LF with BOM, comments, event/id lines': [
    ['\uFEFF: connected\n\n', false],
    ['data: {"id":"c","choices":[{"index":0,"delta":{"content":"hé😀"}}],"usage":null}\n\n', false],
    ['event: message\nid: 7\ndata: {"choices":[{"delta":{}}]}\n\n', false],
    [': ping\n\n', false],
    ['data: {"choices":[],"usage":null}\n\n', false],
    ['data: {"choices":[{"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":1}}\n\n', false],
    [usageOnly('\n'), true],
    ['data: [DONE]\n\n', false],
  ],
  'CRLF, usage-only chunk split over two data lines': [
    ['data: {"choices":[{"delta":{"content":"a"}}]}\r\n\r\n', false],
    [': keep-alive\r\n\r\n', false],
    ['data: {"choices":[],\r\ndata: "usage":{"total_tokens":3}}\r\n\r\n', true],
    ['data: [DONE]\r\n\r\n', false],
  ],
  'CR only': [
    ['data: {"choices":[{"delta":{"content":"三"}}]}\r\r', false],
    [usageOnly('\r'), true],
    ['data: [DONE]\r\r', false],
  ],
  'mixed line ends, usage-only last without a final blank line': [
    ['\r\n', false],
    ['data: {"choices":[{"delta":{"content":"x"}}]}\r\n\n', false],
    ['data: [DONE]\n\r\n', false],
    [usageOnly('\r').slice(0, -2), true],
  ],
  'a comment line inside the usage-only event goes through, the rest is removed': [
    ['data: {"choices":[{"delta":{"content":"x"}}]}\n\n', false],
    [': ping\r\n', false],
    [usageOnly('\r\n'), true],
    ['data: [DONE]\n\n', false],
  ],
};

function stripAll(chunks: Buffer[], s = new UsageChunkStripper()): { out: Buffer; removed: number } {
  const out: Buffer[] = [];
  for (const c of chunks) out.push(...s.push(c));
  out.push(...s.flush());
  return { out: Buffer.concat(out), removed: s.removed };
}

describe('UsageChunkStripper on the shared SSE parser', () => {
  for (const [name, pieces] of Object.entries(pieceStreams)) {
    it(`${name}: output is the input minus exactly the usage-only bytes, at every split point and byte by byte`, () => {
      const input = Buffer.from(pieces.map(([p]) => p).join(''));
      const expected = Buffer.from(pieces.flatMap(([p, drop]) => (drop ? [] : [p])).join(''));
      const removedEvents = pieces.filter(([, drop]) => drop).length;
      for (let i = 0; i <= input.length; i++) {
        const r = stripAll([input.subarray(0, i), input.subarray(i)]);
        expect(r.out.toString('latin1'), `split at ${i}`).toBe(expected.toString('latin1'));
        expect(r.removed, `split at ${i}`).toBe(removedEvents);
      }
      const single = stripAll(byteByByte(input));
      expect(single.out.equals(expected)).toBe(true);
      expect(single.removed).toBe(removedEvents);
      for (let seed = 1; seed <= 50; seed++) {
        let x = seed;
        const chunks: Buffer[] = [];
        for (let i = 0; i < input.length;) {
          x = (x * 1103515245 + 12345) % 2147483648;
          const n = x % 9; // includes empty chunks
          chunks.push(input.subarray(i, i + n));
          i += n;
        }
        expect(stripAll(chunks).out.equals(expected), `seed ${seed}`).toBe(true);
      }
    });
  }

  it('20,000 data: lines with no blank line reach the client as they arrive; held bytes stay bounded', () => {
    const line = 'data: {"id":"c","choices":[{"index":0,"delta":{"content":"x"}}],"usage":null}\n';
    const input = Buffer.from(line.repeat(20_000));
    const s = new UsageChunkStripper();
    let inBytes = 0;
    let outBytes = 0;
    const out: Buffer[] = [];
    for (let i = 0; i < input.length; i += 1021) {
      const chunk = input.subarray(i, i + 1021);
      inBytes += chunk.length;
      for (const b of s.push(chunk)) {
        outBytes += b.length;
        out.push(b);
      }
      expect(inBytes - outBytes).toBeLessThanOrEqual(USAGE_CHUNK_HOLD_CAP);
      expect(s.heldBytes).toBeLessThanOrEqual(USAGE_CHUNK_HOLD_CAP);
    }
    // Not "held until the end": the first line is visibly not a usage-only chunk, so all of it flows.
    expect(outBytes).toBe(inBytes);
    out.push(...s.flush());
    expect(Buffer.concat(out).equals(input)).toBe(true);
    expect(s.removed).toBe(0);
  });

  it('20,000 usage-only-looking data: lines with no blank line: released at the second line, nothing removed', () => {
    const line = 'data: {"choices":[],"usage":{"total_tokens":1}}\n';
    const input = Buffer.from(line.repeat(20_000));
    const s = new UsageChunkStripper();
    const out: Buffer[] = [];
    let inBytes = 0;
    let outBytes = 0;
    for (let i = 0; i < input.length; i += 4096) {
      inBytes += Math.min(4096, input.length - i);
      for (const b of s.push(input.subarray(i, i + 4096))) {
        outBytes += b.length;
        out.push(b);
      }
      expect(inBytes - outBytes).toBeLessThanOrEqual(USAGE_CHUNK_HOLD_CAP);
    }
    out.push(...s.flush());
    expect(Buffer.concat(out).equals(input)).toBe(true);
    expect(s.removed).toBe(0);
  });

  it('an event that stays a usage-only candidate is held only up to the cap, then passes through', () => {
    const s = new UsageChunkStripper();
    const head = Buffer.from('data: {"choices":[],"usage":{"total_tokens":1,"pad":[\n');
    const body = Buffer.from('data: 1,\n'.repeat(20_000));
    const out: Buffer[] = [...s.push(head)];
    expect(out).toEqual([]); // still a candidate: held
    let inBytes = head.length;
    let outBytes = 0;
    for (let i = 0; i < body.length; i += 512) {
      const chunk = body.subarray(i, i + 512);
      inBytes += chunk.length;
      for (const b of s.push(chunk)) {
        outBytes += b.length;
        out.push(b);
      }
      expect(s.heldBytes).toBeLessThanOrEqual(USAGE_CHUNK_HOLD_CAP);
      expect(inBytes - outBytes).toBeLessThanOrEqual(USAGE_CHUNK_HOLD_CAP);
    }
    expect(outBytes).toBe(inBytes); // released at the cap: the rest flowed through as it came
    const tail = Buffer.from('data: 1]}}\n\ndata: [DONE]\n\n');
    out.push(...s.push(tail), ...s.flush());
    expect(Buffer.concat(out).equals(Buffer.concat([head, body, tail]))).toBe(true);
    expect(s.removed).toBe(0);
  });

  it('an oversize usage-only event passes through whole, byte for byte', () => {
    const big = `data: {"choices":[],"usage":{"total_tokens":1},"pad":"${'p'.repeat(USAGE_CHUNK_HOLD_CAP)}"}\n\n`;
    const input = Buffer.from(`data: {"choices":[{"delta":{}}]}\n\n${big}${usageOnly('\n')}data: [DONE]\n\n`);
    const expected = Buffer.from(`data: {"choices":[{"delta":{}}]}\n\n${big}data: [DONE]\n\n`);
    for (const size of [1, 1000, 64 * 1024, input.length]) {
      const chunks: Buffer[] = [];
      for (let i = 0; i < input.length; i += size) chunks.push(input.subarray(i, i + size));
      const r = stripAll(chunks);
      expect(r.out.equals(expected), `chunks of ${size}`).toBe(true);
      expect(r.removed).toBe(1);
    }
  });

  it('forwards a content event as soon as its data line ends and a keep-alive line at once, before any blank line', () => {
    const s = new UsageChunkStripper();
    const content = 'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}\n';
    expect(Buffer.concat(s.push(Buffer.from(content))).toString()).toBe(content);
    expect(Buffer.concat(s.push(Buffer.from('\n'))).toString()).toBe('\n');
    expect(Buffer.concat(s.push(Buffer.from(': ping\n'))).toString()).toBe(': ping\n');
    expect(Buffer.concat(s.push(Buffer.from('data: [DONE]\n'))).toString()).toBe('data: [DONE]\n');
    expect(s.heldBytes).toBe(0);
  });

  it('holds a usage-only event arriving byte by byte, and removes it', () => {
    const s = new UsageChunkStripper();
    const ev = Buffer.from(usageOnly('\n'));
    for (let i = 0; i < ev.length; i++) {
      expect(s.push(ev.subarray(i, i + 1))).toEqual([]);
    }
    expect(s.heldBytes).toBe(0);
    expect(s.removed).toBe(1);
    expect(Buffer.concat([...s.push(Buffer.from('data: [DONE]\n\n')), ...s.flush()]).toString()).toBe(
      'data: [DONE]\n\n',
    );
  });
});

describe('EncodedUsageChunkStripper (gzip, deflate, br)', () => {
  const plain = pieceStreams['LF with BOM, comments, event/id lines']!;
  const input = Buffer.from(plain.map(([p]) => p).join(''));
  const expected = Buffer.from(plain.flatMap(([p, drop]) => (drop ? [] : [p])).join(''));
  const codecs: Array<[string, (b: Buffer) => Buffer, (b: Buffer) => Buffer]> = [
    ['gzip', zlib.gzipSync, zlib.gunzipSync],
    ['deflate', zlib.deflateSync, zlib.inflateSync],
    ['br', zlib.brotliCompressSync, zlib.brotliDecompressSync],
  ];
  for (const [encoding, compress, decompress] of codecs) {
    it(`${encoding}: decodes, removes the usage-only event, re-encodes with the same encoding`, async () => {
      const out: Buffer[] = [];
      const s = new EncodedUsageChunkStripper(
        encoding,
        (b) => out.push(b),
        (err) => {
          throw err;
        },
      );
      const z = compress(input);
      for (let i = 0; i < z.length; i += 7) s.push(z.subarray(i, i + 7));
      await new Promise<void>((resolve) => s.end(resolve));
      expect(decompress(Buffer.concat(out)).equals(expected)).toBe(true);
      expect(s.removed).toBe(1);
    });
  }
});

describe('stripping through the real proxy server', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    while (cleanups.length) await cleanups.pop()!();
  });

  it('20,000 data: lines streamed slowly with no blank line reach the client before the upstream finishes', async () => {
    const line = 'data: {"id":"c","choices":[{"index":0,"delta":{"content":"x"}}],"usage":null}\n';
    const total = 20_000;
    const half = Buffer.from(line.repeat(total / 2));
    let clientBytes = 0;
    let clientBytesBeforeSecondHalf = -1;
    const waitFor = async (cond: () => boolean, ms: number) => {
      const deadline = Date.now() + ms;
      while (!cond() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    };
    let sentBody = '';
    const upstream = http.createServer((req, res) => {
      const body: Buffer[] = [];
      req.on('data', (c: Buffer) => body.push(c));
      req.on('end', () => {
        sentBody = Buffer.concat(body).toString();
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        void (async () => {
          // First half slowly, in 20 pieces; then wait (bounded) until the client has seen it.
          for (let i = 0; i < half.length; i += Math.ceil(half.length / 20)) {
            res.write(half.subarray(i, i + Math.ceil(half.length / 20)));
            await new Promise((r) => setTimeout(r, 2));
          }
          await waitFor(() => clientBytes >= half.length - USAGE_CHUNK_HOLD_CAP, 3000);
          clientBytesBeforeSecondHalf = clientBytes;
          res.end(half);
        })();
      });
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    cleanups.push(
      () =>
        new Promise((r) => {
          upstream.closeAllConnections();
          upstream.close(() => r());
        }),
    );
    const meter = new RecordingMeter();
    const proxy = createProxyServer({
      settings: testSettings([
        upstreamSettings('default', `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`),
      ]),
      meter,
      log: SILENT_LOGGER,
    });
    const addr = await proxy.listen();
    cleanups.push(() => proxy.close(0));

    const received = await new Promise<Buffer>((resolve, reject) => {
      const req = http.request(
        `http://127.0.0.1:${addr.port}/v1/chat/completions`,
        { method: 'POST', agent: false, headers: { 'content-type': 'application/json' } },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => {
            clientBytes += c.length;
            chunks.push(c);
          });
          res.on('end', () => resolve(Buffer.concat(chunks)));
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      req.end('{"model":"gpt-4o","stream":true,"messages":[]}');
    });
    expect(sentBody).toContain('"stream_options":{"include_usage":true}'); // the stripper was on the path
    expect(clientBytesBeforeSecondHalf).toBeGreaterThanOrEqual(half.length - USAGE_CHUNK_HOLD_CAP);
    expect(received.equals(Buffer.concat([half, half]))).toBe(true);
    await meter.requests[0]!.finished;
  });
});

describe('early release needs positive evidence', () => {
  it('a key written with an escape may spell "choices": the event is held and judged by JSON.parse', () => {
    const ev = 'data: {"ch\\u006fices":[],"usage":{"total_tokens":3}}\n\n';
    const r = stripAll([Buffer.from(ev + 'data: [DONE]\n\n')]);
    expect(r).toMatchObject({ removed: 1 });
    expect(r.out.toString()).toBe('data: [DONE]\n\n');
  });

  it('each rule that releases a held event early: non-object data, usage not an object, choices not empty, a closed object without both', () => {
    for (const line of [
      'data: [DONE]\n',
      'data: "usage"\n',
      'data: {"usage":null,"choices":[]\n',
      'data: {"choices":{},"usage":{}\n',
      'data: {"choices":[ 1 ],"usage":{}\n',
      'data: {"choices":[],"x":{"usage":{}}}\n',
      'data: {"choices":[],"usage":{}} {\n',
    ]) {
      const s = new UsageChunkStripper();
      expect(Buffer.concat(s.push(Buffer.from(line))).toString(), line).toBe(line);
      expect(s.heldBytes).toBe(0);
    }
    const held = new UsageChunkStripper();
    expect(held.push(Buffer.from('data: {"choices": [ ] ,"usage" : {"a":[1,{"b":"}"}]}\n'))).toEqual([]);
    expect(held.heldBytes).toBeGreaterThan(0);
  });
});
