/**
 * The table-driven fixture test (STYLE.md habit 5): every recorded response under
 * test/fixtures/streams/ is fed whole, line by line, byte by byte (and in seeded random splits) through the one SSE parser
 * and the decoder chosen by createDecoder, and must give exactly the expected DecodedResponse.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { createDecoder } from '../../src/decoders/index.js';
import type { DecodedResponse, DecoderRequestInfo } from '../../src/decoders/types.js';
import { SseParser } from '../../src/sse/parser.js';

const FIXTURE_DIR = join(dirname(fileURLToPath(import.meta.url)), '../fixtures/streams');

interface FixtureSpec {
  source: string;
  request: DecoderRequestInfo;
  expected: DecodedResponse;
}

interface Fixture {
  name: string;
  kind: 'sse' | 'json';
  bytes: Buffer;
  spec: FixtureSpec;
}

function loadFixtures(): Fixture[] {
  const files = readdirSync(FIXTURE_DIR);
  return files
    .filter((f) => f.endsWith('.expected.json'))
    .sort()
    .map((f) => {
      const name = f.slice(0, -'.expected.json'.length);
      const kind = files.includes(`${name}.sse`) ? 'sse' : 'json';
      return {
        name,
        kind,
        bytes: readFileSync(join(FIXTURE_DIR, `${name}.${kind}`)),
        spec: JSON.parse(readFileSync(join(FIXTURE_DIR, f), 'utf8')) as FixtureSpec,
      };
    });
}

type SplitMode = 'whole' | 'line by line' | 'byte by byte' | 'random splits';

/** Chunks exactly as a TCP reader might deliver them: whole, cut after every line end, or one byte each. */
function split(bytes: Buffer, mode: SplitMode): Buffer[] {
  if (mode === 'whole') return [bytes];
  if (mode === 'byte by byte')
    return Array.from({ length: bytes.length }, (_, i) => bytes.subarray(i, i + 1));
  if (mode === 'random splits') {
    // Deterministic LCG so a failure reproduces: chunk sizes 0..16 bytes, empty chunks included.
    let state = bytes.length + 7;
    const out: Buffer[] = [];
    for (let i = 0; i < bytes.length;) {
      state = (state * 1103515245 + 12345) % 2147483648;
      const n = state % 17;
      out.push(bytes.subarray(i, i + n));
      i += n;
    }
    return out;
  }
  const chunks: Buffer[] = [];
  let start = 0;
  for (let i = 0; i < bytes.length; i++) {
    // Cutting between CR and LF on purpose: the parser must treat them as one line end.
    if (bytes[i] === 0x0a || bytes[i] === 0x0d) {
      chunks.push(bytes.subarray(start, i + 1));
      start = i + 1;
    }
  }
  if (start < bytes.length) chunks.push(bytes.subarray(start));
  return chunks;
}

function decode(fixture: Fixture, mode: SplitMode): DecodedResponse {
  const decoder = createDecoder(fixture.spec.request);
  const chunks = split(fixture.bytes, mode);
  if (fixture.kind === 'sse') {
    const parser = new SseParser({ onEvent: (e) => decoder.onEvent(e) });
    for (const c of chunks) parser.feed(c);
    parser.end();
  } else {
    // Non-streamed bodies reach the decoder as text decoded from however many chunks arrived.
    const text = new TextDecoder();
    let body = '';
    for (const c of chunks) body += text.decode(c, { stream: true });
    body += text.decode();
    decoder.onBody(body);
  }
  return decoder.result();
}

const fixtures = loadFixtures();

describe('recorded wire fixtures', () => {
  it('has a corpus of at least 60 fixtures, each with its body file and a source', () => {
    expect(fixtures.length).toBeGreaterThanOrEqual(60);
    for (const f of fixtures) expect(f.spec.source.length, f.name).toBeGreaterThan(10);
  });

  for (const fixture of fixtures) {
    describe(fixture.name, () => {
      for (const mode of ['whole', 'line by line', 'byte by byte', 'random splits'] as const) {
        it(`${mode}`, () => {
          expect(decode(fixture, mode)).toStrictEqual(fixture.spec.expected);
        });
      }
    });
  }
});
