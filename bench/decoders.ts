/**
 * Parser + decoder throughput (not a test: numbers are reported, never asserted).
 * Run alone: `npx tsx bench/decoders.ts`. Bounded to a few seconds.
 *
 * Measures MB/s of SseParser + createDecoder over a synthetic OpenAI chat stream and an
 * Anthropic Messages stream, fed in 64 KiB chunks (typical socket reads), in 1 KiB chunks, and
 * byte by byte (worst case, over a 256 KiB slice so it stays bounded). The baseline in the same
 * run is a raw `Buffer.indexOf('\n\n')` scan of the same bytes: the floor any framing must pay.
 */
import { pathToFileURL } from 'node:url';
import { createDecoder } from '../src/decoders/index.js';
import type { DecoderRequestInfo } from '../src/decoders/types.js';
import { SseParser } from '../src/sse/parser.js';

const TARGET_BYTES = 8 * 1024 * 1024;
const MIN_MS = 300;

function openAiStream(): Buffer {
  const parts: string[] = [];
  let size = 0;
  for (let i = 0; size < TARGET_BYTES; i++) {
    const line = `data: ${JSON.stringify({
      id: 'chatcmpl-bench',
      object: 'chat.completion.chunk',
      created: 1763880000,
      model: 'gpt-4o-mini',
      choices: [{ index: 0, delta: { content: `token ${i} 你好 ` }, finish_reason: null }],
    })}\n\n`;
    parts.push(line);
    size += Buffer.byteLength(line);
  }
  parts.push(
    `data: ${JSON.stringify({ id: 'chatcmpl-bench', choices: [], usage: { prompt_tokens: 10, completion_tokens: 99, total_tokens: 109 } })}\n\ndata: [DONE]\n\n`,
  );
  return Buffer.from(parts.join(''));
}

function anthropicStream(): Buffer {
  const ev = (name: string, data: unknown): string => `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`;
  const parts: string[] = [
    ev('message_start', {
      type: 'message_start',
      message: { id: 'msg_b', model: 'claude-x', usage: { input_tokens: 10, output_tokens: 1 } },
    }),
  ];
  let size = 0;
  for (let i = 0; size < TARGET_BYTES; i++) {
    const e = ev('content_block_delta', {
      type: 'content_block_delta',
      index: 0,
      delta: { type: 'text_delta', text: `token ${i} ` },
    });
    parts.push(e);
    size += Buffer.byteLength(e);
  }
  parts.push(
    ev('message_delta', {
      type: 'message_delta',
      delta: { stop_reason: 'end_turn' },
      usage: { output_tokens: 99 },
    }),
  );
  return Buffer.from(parts.join(''));
}

function chunks(bytes: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < bytes.length; i += size) out.push(bytes.subarray(i, i + size));
  return out;
}

function decodeAll(parts: Buffer[], info: DecoderRequestInfo): number {
  const decoder = createDecoder(info);
  const parser = new SseParser({ onEvent: (e) => decoder.onEvent(e) });
  for (const p of parts) parser.feed(p);
  parser.end();
  return decoder.result().usage.output ?? -1;
}

function parseOnly(parts: Buffer[]): number {
  let events = 0;
  const parser = new SseParser({ onEvent: () => events++ });
  for (const p of parts) parser.feed(p);
  parser.end();
  return events;
}

function baselineScan(parts: Buffer[]): number {
  let events = 0;
  for (const p of parts) {
    let i = p.indexOf('\n\n');
    while (i !== -1) {
      events++;
      i = p.indexOf('\n\n', i + 2);
    }
  }
  return events;
}

/** MB/s of `fn` over `bytes`, repeating until at least MIN_MS elapsed. */
function measure(bytes: number, fn: () => number): number {
  let sink = 0;
  sink += fn(); // warm-up
  let runs = 0;
  const start = process.hrtime.bigint();
  let elapsedMs = 0;
  while (elapsedMs < MIN_MS) {
    sink += fn();
    runs++;
    elapsedMs = Number(process.hrtime.bigint() - start) / 1e6;
  }
  if (sink === Number.MIN_SAFE_INTEGER) console.log(sink); // keep the work observable
  return Number(((bytes * runs) / (1024 * 1024) / (elapsedMs / 1000)).toFixed(1));
}

export async function runDecoderBench(): Promise<Record<string, number>> {
  const results: Record<string, number> = {};
  const streams: [string, Buffer, DecoderRequestInfo][] = [
    ['openai', openAiStream(), { operation: 'chat', stream: true }],
    ['anthropic', anthropicStream(), { operation: 'messages', stream: true }],
  ];
  for (const [name, bytes, info] of streams) {
    const big = chunks(bytes, 64 * 1024);
    const small = chunks(bytes, 1024);
    const slice = bytes.subarray(0, 256 * 1024);
    const single = chunks(slice, 1);
    results[`${name}_baseline_indexof_mb_s`] = measure(bytes.length, () => baselineScan(big));
    results[`${name}_parser_only_64k_mb_s`] = measure(bytes.length, () => parseOnly(big));
    results[`${name}_64k_chunks_mb_s`] = measure(bytes.length, () => decodeAll(big, info));
    results[`${name}_1k_chunks_mb_s`] = measure(bytes.length, () => decodeAll(small, info));
    results[`${name}_1byte_chunks_mb_s`] = measure(slice.length, () => decodeAll(single, info));
    results[`${name}_baseline_ratio_64k`] = Number(
      (Number(results[`${name}_64k_chunks_mb_s`]) / Number(results[`${name}_baseline_indexof_mb_s`])).toFixed(
        4,
      ),
    );
  }
  return results;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const results = await runDecoderBench();
  console.log(JSON.stringify(results, null, 2));
}
