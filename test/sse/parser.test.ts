import { describe, expect, it } from 'vitest';
import { SseParser } from '../../src/sse/parser.js';
import type { SseEvent, SseLineKind } from '../../src/sse/types.js';
import { mulberry32 } from '../random.js';

function parseChunks(
  chunks: Uint8Array[],
  maxEventBytes?: number,
): { events: SseEvent[]; oversize: number[] } {
  const events: SseEvent[] = [];
  const oversize: number[] = [];
  const parser = new SseParser({
    onEvent: (e) => events.push(e),
    onOversize: (n) => oversize.push(n),
    ...(maxEventBytes === undefined ? {} : { maxEventBytes }),
  });
  for (const c of chunks) parser.feed(c);
  parser.end();
  return { events, oversize };
}

const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);
const parseText = (s: string, max?: number) => parseChunks([bytes(s)], max);

describe('SseParser framing', () => {
  it('parses LF-framed data events and ignores [DONE] semantics (framing only)', () => {
    const { events } = parseText('data: {"a":1}\n\ndata: [DONE]\n\n');
    expect(events).toEqual([{ data: '{"a":1}' }, { data: '[DONE]' }]);
  });

  it('accepts CRLF and bare CR line ends', () => {
    expect(parseText('data: a\r\n\r\ndata: b\r\n\r\n').events).toEqual([{ data: 'a' }, { data: 'b' }]);
    expect(parseText('data: a\r\rdata: b\r\r').events).toEqual([{ data: 'a' }, { data: 'b' }]);
    expect(parseText('data: a\r\n\ndata: b\n\r\n').events).toEqual([{ data: 'a' }, { data: 'b' }]);
  });

  it('treats a CR ending one chunk and a LF starting the next as one line end', () => {
    const { events } = parseChunks([bytes('data: a\r'), bytes('\ndata: b\r'), bytes('\n\r'), bytes('\n')]);
    // If CR and LF were two line ends, "a" and "b" would be dispatched as two events.
    expect(events).toEqual([{ data: 'a\nb' }]);
  });

  it('skips comments and keep-alives', () => {
    const { events } = parseText(': ping\n\n:keep-alive\ndata: x\n: inside\n\n');
    expect(events).toEqual([{ data: 'x' }]);
  });

  it('reads event and id fields, and joins multi-line data with LF', () => {
    const { events } = parseText('event: message_start\nid: 7\ndata: {"a":\ndata:1}\n\nevent: ping\n\n');
    expect(events).toEqual([{ event: 'message_start', id: '7', data: '{"a":\n1}' }]);
  });

  it('strips exactly one leading space from values and handles a field without colon', () => {
    const { events } = parseText('data:  two\ndata\ndata:none\n\n');
    expect(events).toEqual([{ data: ' two\n\nnone' }]);
  });

  it('drops a leading BOM, also when split across chunks', () => {
    expect(parseText('\uFEFFdata: x\n\n').events).toEqual([{ data: 'x' }]);
    const b = bytes('\uFEFFdata: y\n\n');
    expect(parseChunks([b.subarray(0, 1), b.subarray(1, 2), b.subarray(2)]).events).toEqual([{ data: 'y' }]);
    // Only at the start of the stream: a later BOM makes the field name unknown and the line is ignored.
    expect(parseText('data: a\n\n\uFEFFdata: b\n\n').events).toEqual([{ data: 'a' }]);
  });

  it('flushes a final event that has no closing blank line on end()', () => {
    expect(parseText('data: one\n\ndata: last').events).toEqual([{ data: 'one' }, { data: 'last' }]);
    expect(parseText('data: last\n').events).toEqual([{ data: 'last' }]);
  });

  it('does not dispatch before end() when the blank line is missing', () => {
    const events: SseEvent[] = [];
    const parser = new SseParser({ onEvent: (e) => events.push(e) });
    parser.feed(bytes('data: a\n'));
    expect(events).toEqual([]);
    parser.end();
    expect(events).toEqual([{ data: 'a' }]);
    parser.feed(bytes('data: after end\n\n'));
    expect(events).toHaveLength(1);
  });

  it('decodes UTF-8 sequences split across chunks', () => {
    const b = bytes('data: 你好😀\n\n');
    for (let i = 1; i < b.length; i++) {
      expect(parseChunks([b.subarray(0, i), b.subarray(i)]).events).toEqual([{ data: '你好😀' }]);
    }
  });

  it('does not let the caller reusing its chunk buffer corrupt a carried line', () => {
    const events: SseEvent[] = [];
    const parser = new SseParser({ onEvent: (e) => events.push(e) });
    const reused = Buffer.from('data: abc');
    parser.feed(reused);
    reused.fill(0x78);
    parser.feed(Buffer.from('def\n\n'));
    expect(events).toEqual([{ data: 'abcdef' }]);
  });

  it('reassembles a long line (larger than the initial line buffer) from small chunks', () => {
    const value = 'é'.repeat(60_000) + 'end'; // 120 KiB of UTF-8
    const b = bytes(`data: ${value}\n\ndata: next\n\n`);
    const chunks: Uint8Array[] = [];
    for (let i = 0; i < b.length; i += 1021) chunks.push(b.subarray(i, i + 1021));
    expect(parseChunks(chunks).events).toEqual([{ data: value }, { data: 'next' }]);
  });

  it('skips an oversize event, reports its size once, and resumes at the next event', () => {
    const big = 'x'.repeat(5000);
    const text = `data: small\n\ndata: ${big}\ndata: more\n\ndata: after\n\n`;
    const oversizeBytes = `data: ${big}\ndata: more\n\n`.length;
    for (const chunkSize of [1, 7, 100, 1 << 20]) {
      const b = bytes(text);
      const chunks: Uint8Array[] = [];
      for (let i = 0; i < b.length; i += chunkSize) chunks.push(b.subarray(i, i + chunkSize));
      const { events, oversize } = parseChunks(chunks, 1024);
      expect(events).toEqual([{ data: 'small' }, { data: 'after' }]);
      expect(oversize).toEqual([oversizeBytes]);
    }
  });

  it('reports an oversize event cut by the end of the stream', () => {
    const { events, oversize } = parseText(`data: ok\n\ndata: ${'y'.repeat(300)}`, 100);
    expect(events).toEqual([{ data: 'ok' }]);
    expect(oversize).toHaveLength(1);
  });

  it('keeps events at exactly the cap', () => {
    const line = `data: ${'z'.repeat(94)}\n`; // 101 bytes with its LF
    expect(parseText(`${line}\n`, 101).events).toHaveLength(1);
    expect(parseText(`${line}\n`, 100).events).toHaveLength(0);
  });
});

describe('SseParser split invariance (property tests)', () => {
  const streams: Record<string, string> = {
    lf: 'data: {"id":"c1","choices":[{"delta":{"content":"héllo 你好 😀"}}]}\n\n: ping\n\nevent: x\nid: 1\ndata: a\ndata: b\n\ndata: [DONE]\n\n',
    crlf: '\uFEFFevent: message_start\r\ndata: {"t":"ü"}\r\n\r\n: keep-alive\r\n\r\ndata: 2\r\n\r\ndata: tail',
    cr: 'data: one\r\rdata: two\rdata: 三\r\r:c\r\rdata: end\r\r',
    mixed: 'data: a\r\n\ndata: b\n\r\ndata: c\r\rdata: d\n\ndata:e',
  };

  for (const [name, text] of Object.entries(streams)) {
    const b = bytes(text);
    const reference = parseChunks([b]).events;

    it(`${name}: every single split point yields the same events`, () => {
      expect(reference.length).toBeGreaterThan(1);
      for (let i = 0; i <= b.length; i++) {
        expect(parseChunks([b.subarray(0, i), b.subarray(i)]).events, `split at ${i}`).toEqual(reference);
      }
    });

    it(`${name}: byte by byte yields the same events`, () => {
      const chunks = Array.from({ length: b.length }, (_, i) => b.subarray(i, i + 1));
      expect(parseChunks(chunks).events).toEqual(reference);
    });

    it(`${name}: random multi-splits yield the same events`, () => {
      for (let seed = 1; seed <= 200; seed++) {
        const rand = mulberry32(seed);
        const chunks: Uint8Array[] = [];
        let i = 0;
        while (i < b.length) {
          const n = Math.floor(rand() * 12); // includes empty chunks
          chunks.push(b.subarray(i, i + n));
          i += n;
        }
        expect(parseChunks(chunks).events, `seed ${seed}`).toEqual(reference);
      }
    });
  }

  it('oversize skipping is split-invariant too', () => {
    const text = `data: a\n\ndata: ${'q'.repeat(200)}\r\n\r\ndata: b\r\rdata: ${'w'.repeat(150)}\n\ndata: c\n\n`;
    const b = bytes(text);
    const reference = parseChunks([b], 128);
    expect(reference.events).toEqual([{ data: 'a' }, { data: 'b' }, { data: 'c' }]);
    expect(reference.oversize).toHaveLength(2);
    for (let i = 0; i <= b.length; i++) {
      expect(parseChunks([b.subarray(0, i), b.subarray(i)], 128), `split at ${i}`).toEqual(reference);
    }
  });
});

/**
 * The byte observer lets a caller map parsed events back to the exact bytes they came from (the
 * usage-chunk stripper forwards or drops an event's original bytes). Spans are rebuilt here the
 * way a caller must: bytes up to each reported boundary, a continued CRLF's LF going with the
 * boundary reported last.
 */
function observe(
  chunks: Uint8Array[],
  maxEventBytes?: number,
): { spans: string[]; lines: Array<[SseLineKind, string, string]>; order: string[] } {
  const spans: string[] = [];
  const lines: Array<[SseLineKind, string, string]> = [];
  const order: string[] = [];
  let cur: number[] = [];
  let chunk: Uint8Array = new Uint8Array(0);
  let pos = 0;
  let lineStart = 0;
  let lastWasEventEnd = false;
  const take = (end: number) => {
    for (let i = pos; i < end; i++) cur.push(chunk[i]!);
    pos = end;
  };
  const dec = (a: number[]) => Buffer.from(a).toString('utf8');
  const parser = new SseParser({
    onEvent: (e) => order.push(`event ${e.data}`),
    onOversize: (n) => order.push(`oversize ${n}`),
    ...(maxEventBytes === undefined ? {} : { maxEventBytes }),
    byteObserver: {
      onLine(kind, end, value, valueStart, valueEnd) {
        take(end);
        lines.push([kind, dec(cur.slice(lineStart)), value.toString('utf8', valueStart, valueEnd)]);
        lineStart = cur.length;
        lastWasEventEnd = false;
      },
      onEventEnd(end) {
        take(end);
        spans.push(dec(cur));
        order.push('end');
        cur = [];
        lineStart = 0;
        lastWasEventEnd = true;
      },
      onLineEndContinued() {
        if (lastWasEventEnd) spans[spans.length - 1] += '\n';
        else cur.push(0x0a);
        if (!lastWasEventEnd) lines[lines.length - 1]![1] += '\n';
        lineStart = cur.length;
        pos = 1;
      },
    },
  });
  for (const c of chunks) {
    chunk = c;
    pos = 0;
    parser.feed(c);
    take(c.length);
  }
  chunk = new Uint8Array(0);
  pos = 0;
  parser.end();
  if (cur.length > 0) spans.push(`UNREPORTED:${dec(cur)}`);
  return { spans, lines, order };
}

describe('SseParser byte observer', () => {
  it('reports each event span, line kinds and data values, onEvent before the span end', () => {
    const text = '\uFEFF: hi\nevent: x\ndata: {"a":\ndata:1}\n\n: ping\n\ndata: [DONE]\r\n\r\ndata: tail';
    const r = observe([bytes(text)]);
    expect(r.spans).toEqual([
      '\uFEFF: hi\nevent: x\ndata: {"a":\ndata:1}\n\n',
      ': ping\n\n',
      'data: [DONE]\r\n\r\n',
      'data: tail',
    ]);
    expect(r.lines).toEqual([
      ['comment', '\uFEFF: hi\n', ''],
      ['field', 'event: x\n', ''],
      ['data', 'data: {"a":\n', '{"a":'],
      ['data', 'data:1}\n', '1}'],
      ['comment', ': ping\n', ''],
      ['data', 'data: [DONE]\r\n', '[DONE]'],
      ['data', 'data: tail', 'tail'],
    ]);
    expect(r.order).toEqual(['event {"a":\n1}', 'end', 'end', 'event [DONE]', 'end', 'event tail', 'end']);
  });

  it('marks the lines of an oversize event and still ends its span at its blank line', () => {
    const text = `data: ok\n\ndata: ${'x'.repeat(200)}\ndata: more\n\ndata: after\n\n`;
    const r = observe([bytes(text)], 64);
    expect(r.spans).toEqual(['data: ok\n\n', `data: ${'x'.repeat(200)}\ndata: more\n\n`, 'data: after\n\n']);
    expect(r.lines.map(([k]) => k)).toEqual(['data', 'oversize', 'oversize', 'data']);
  });

  const streams: Record<string, string> = {
    lf: 'data: {"choices":[{"delta":{"content":"héllo 😀"}}]}\n\n: ping\n\nevent: x\nid: 1\ndata: a\ndata: b\n\ndata: [DONE]\n\n',
    crlf: '\uFEFFevent: message_start\r\ndata: {"t":"ü"}\r\n\r\n: keep-alive\r\n\r\ndata: 2\r\n\r\ndata: tail',
    cr: 'data: one\r\rdata: two\rdata: 三\r\r:c\r\rdata: end\r\r',
    mixed: '\r\ndata: a\r\n\ndata: b\n\r\ndata: c\r\rdata: d\n\ndata:e\r',
  };
  for (const [name, text] of Object.entries(streams)) {
    it(`${name}: spans tile the input and are the same at every split point and byte by byte`, () => {
      const b = bytes(text);
      const reference = observe([b]);
      expect(reference.spans.join('')).toBe(text);
      expect(reference.spans.length).toBeGreaterThan(2);
      for (let i = 0; i <= b.length; i++) {
        expect(observe([b.subarray(0, i), b.subarray(i)]), `split at ${i}`).toEqual(reference);
      }
      const single = Array.from({ length: b.length }, (_, i) => b.subarray(i, i + 1));
      expect(observe(single)).toEqual(reference);
    });
  }
});
