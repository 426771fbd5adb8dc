/**
 * The WebSocket frame parser (src/ws/frames.ts) and the message reader with permessage-deflate
 * (src/ws/messages.ts): every frame shape fed whole, split at every byte boundary and byte by
 * byte; deflate with real zlib output, with and without context takeover.
 */
import zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';
import {
  OPCODE,
  WsFrameParser,
  parseClosePayload,
  type ControlOpcode,
  type DataOpcode,
} from '../../src/ws/frames.js';
import { parseDeflateExtension, WsMessageReader, type DeflateParams } from '../../src/ws/messages.js';

interface FrameSpec {
  fin?: boolean;
  rsv1?: boolean;
  opcode: number;
  payload: Buffer | string;
  mask?: Buffer;
  /** Force a length encoding (the parser must accept a non-minimal one). */
  lengthBits?: 7 | 16 | 64;
}

function frame(f: FrameSpec): Buffer {
  const payload = typeof f.payload === 'string' ? Buffer.from(f.payload) : f.payload;
  const bits = f.lengthBits ?? (payload.length < 126 ? 7 : payload.length < 65536 ? 16 : 64);
  const head: number[] = [((f.fin ?? true) ? 0x80 : 0) | (f.rsv1 ? 0x40 : 0) | f.opcode];
  const maskBit = f.mask ? 0x80 : 0;
  if (bits === 7) head.push(maskBit | payload.length);
  else if (bits === 16) head.push(maskBit | 126, payload.length >> 8, payload.length & 0xff);
  else {
    const len = Buffer.alloc(8);
    len.writeBigUInt64BE(BigInt(payload.length));
    head.push(maskBit | 127, ...len);
  }
  let body = payload;
  if (f.mask) {
    body = Buffer.from(payload.map((b, i) => b ^ f.mask![i & 3]!));
    head.push(...f.mask);
  }
  return Buffer.concat([Buffer.from(head), body]);
}

type Seen =
  | { kind: 'message'; opcode: DataOpcode; compressed: boolean; data: string }
  | { kind: 'control'; opcode: ControlOpcode; data: string }
  | { kind: 'error'; reason: string };

/** Parses `chunks` in order and lists what the parser reported. */
function parse(chunks: Buffer[]): Seen[] {
  const seen: Seen[] = [];
  let current: { opcode: DataOpcode; compressed: boolean; parts: Buffer[] } | undefined;
  const parser = new WsFrameParser({
    messageStart: (opcode, compressed) => (current = { opcode, compressed, parts: [] }),
    messageData: (chunk) => current!.parts.push(Buffer.from(chunk)),
    messageEnd: () => {
      seen.push({
        kind: 'message',
        opcode: current!.opcode,
        compressed: current!.compressed,
        data: Buffer.concat(current!.parts).toString('latin1'),
      });
      current = undefined;
    },
    control: (opcode, payload) => seen.push({ kind: 'control', opcode, data: payload.toString('latin1') }),
    protocolError: (reason) => seen.push({ kind: 'error', reason }),
  });
  for (const c of chunks) parser.feed(c);
  return seen;
}

const byteByByte = (b: Buffer) => [...b].map((x) => Buffer.from([x]));

const MASK = Buffer.from([0x37, 0xfa, 0x21, 0x3d]);
const big16 = Buffer.alloc(300, 'b');
const big64 = Buffer.alloc(70_000, 'c');

describe('WsFrameParser', () => {
  const small = Buffer.concat([
    frame({ opcode: OPCODE.text, payload: 'hello' }),
    frame({ opcode: OPCODE.binary, payload: big16 }),
    frame({ opcode: OPCODE.text, payload: '{"type":"masked"}', mask: MASK }),
    frame({ opcode: OPCODE.ping, payload: 'p' }),
    frame({ opcode: OPCODE.text, payload: '' }),
    frame({ opcode: OPCODE.text, payload: 'x', lengthBits: 64 }),
    frame({ opcode: OPCODE.close, payload: Buffer.concat([Buffer.from([0x03, 0xe8]), Buffer.from('bye')]) }),
  ]);
  const expected: Seen[] = [
    { kind: 'message', opcode: 1, compressed: false, data: 'hello' },
    { kind: 'message', opcode: 2, compressed: false, data: big16.toString('latin1') },
    { kind: 'message', opcode: 1, compressed: false, data: '{"type":"masked"}' },
    { kind: 'control', opcode: 9, data: 'p' },
    { kind: 'message', opcode: 1, compressed: false, data: '' },
    { kind: 'message', opcode: 1, compressed: false, data: 'x' },
    { kind: 'control', opcode: 8, data: '\u0003\u00e8bye' },
  ];

  it('reads 7-, 16- and 64-bit lengths, masked and control frames, whole', () => {
    expect(parse([small])).toStrictEqual(expected);
  });

  it('gives the same at every split point (two chunks) and byte by byte', () => {
    for (let i = 0; i <= small.length; i++)
      expect(parse([small.subarray(0, i), small.subarray(i)]), `split at ${i}`).toStrictEqual(expected);
    expect(parse(byteByByte(small))).toStrictEqual(expected);
  });

  it('a 64-bit length frame (70,000 bytes), whole and byte by byte', () => {
    const f = frame({ opcode: OPCODE.binary, payload: big64 });
    expect(f[1]).toBe(127);
    const want = [{ kind: 'message', opcode: 2, compressed: false, data: big64.toString('latin1') }];
    expect(parse([f])).toStrictEqual(want);
    expect(parse(byteByByte(f))).toStrictEqual(want);
  });

  it('unmasks a copy: the forwarded bytes are left as they were', () => {
    const f = frame({ opcode: OPCODE.text, payload: 'secret', mask: MASK });
    const before = Buffer.from(f);
    parse([f]);
    expect(f.equals(before)).toBe(true);
  });

  it('fragmented messages with control frames interleaved (RFC 6455 §5.4)', () => {
    const stream = Buffer.concat([
      frame({ opcode: OPCODE.text, fin: false, rsv1: true, payload: 'he' }),
      frame({ opcode: OPCODE.ping, payload: 'ping' }),
      frame({ opcode: OPCODE.continuation, fin: false, payload: 'll' }),
      frame({ opcode: OPCODE.pong, payload: '' }),
      frame({ opcode: OPCODE.continuation, fin: true, payload: 'o', mask: MASK }),
      frame({ opcode: OPCODE.binary, payload: 'next' }),
    ]);
    const want: Seen[] = [
      { kind: 'control', opcode: 9, data: 'ping' },
      { kind: 'control', opcode: 10, data: '' },
      { kind: 'message', opcode: 1, compressed: true, data: 'hello' },
      { kind: 'message', opcode: 2, compressed: false, data: 'next' },
    ];
    expect(parse([stream])).toStrictEqual(want);
    for (let i = 0; i <= stream.length; i++)
      expect(parse([stream.subarray(0, i), stream.subarray(i)])).toStrictEqual(want);
  });

  it('protocol violations stop the parser with a reason', () => {
    const cases: Array<[Buffer, string]> = [
      [frame({ opcode: OPCODE.continuation, payload: 'x' }), 'continuation frame without a message'],
      [frame({ opcode: OPCODE.ping, fin: false, payload: 'x' }), 'fragmented or over-long control frame'],
      [frame({ opcode: OPCODE.close, payload: Buffer.alloc(126) }), 'fragmented or over-long control frame'],
      [
        Buffer.concat([
          frame({ opcode: OPCODE.text, fin: false, payload: 'a' }),
          frame({ opcode: OPCODE.text, payload: 'b' }),
        ]),
        'new data frame inside a fragmented message',
      ],
      [frame({ opcode: 0x3, payload: '' }), 'unknown data opcode 3'],
      [Buffer.from([0x82, 0x7f, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]), 'frame length beyond 2^53'],
    ];
    for (const [bytes, reason] of cases) {
      const seen = parse([bytes, frame({ opcode: OPCODE.text, payload: 'after' })]);
      expect(seen).toStrictEqual([{ kind: 'error', reason }]);
    }
  });

  it('close payloads: code and reason, or neither', () => {
    expect(parseClosePayload(Buffer.from([0x03, 0xf3, 0x62, 0x6f, 0x6f, 0x6d]))).toStrictEqual({
      code: 1011,
      reason: 'boom',
    });
    expect(parseClosePayload(Buffer.alloc(0))).toStrictEqual({ reason: '' });
  });
});

/** Reads `chunks` with a WsMessageReader and resolves with what it delivered once it has drained. */
async function read(
  chunks: Buffer[],
  opts: { deflate?: DeflateParams; max?: number } = {},
): Promise<{ messages: string[]; problems: string[]; oversize: number; closes: Array<number | undefined> }> {
  const messages: string[] = [];
  const problems: string[] = [];
  const closes: Array<number | undefined> = [];
  let oversize = 0;
  const reader = new WsMessageReader({
    deflate: opts.deflate,
    maxMessageBytes: opts.max ?? 1024 * 1024,
    onMessage: (_op, data) => messages.push(data.toString('utf8')),
    onClose: (code) => closes.push(code),
    onOversize: () => oversize++,
    onProblem: (note) => problems.push(note),
  });
  for (const c of chunks) reader.write(c);
  await new Promise<void>((r) => reader.end(r));
  return { messages, problems, oversize, closes };
}

const TAKEOVER: DeflateParams = { serverNoContextTakeover: false, serverMaxWindowBits: 15 };
const NO_TAKEOVER: DeflateParams = { serverNoContextTakeover: true, serverMaxWindowBits: 15 };

/** permessage-deflate as a server with context takeover sends it: one deflater, SYNC flush per message, tail removed. */
async function compressTakeover(messages: string[]): Promise<Buffer[]> {
  const deflater = zlib.createDeflateRaw({ windowBits: 15 });
  const out: Buffer[] = [];
  let pending: Buffer[] = [];
  deflater.on('data', (d: Buffer) => pending.push(d));
  for (const m of messages) {
    deflater.write(m);
    await new Promise<void>((r) => deflater.flush(zlib.constants.Z_SYNC_FLUSH, () => r()));
    const all = Buffer.concat(pending);
    pending = [];
    expect(all.subarray(-4)).toStrictEqual(Buffer.from([0, 0, 0xff, 0xff]));
    out.push(all.subarray(0, -4));
  }
  deflater.close();
  return out;
}

function compressAlone(message: string): Buffer {
  const all = zlib.deflateRawSync(message, { finishFlush: zlib.constants.Z_SYNC_FLUSH });
  return all.subarray(0, -4);
}

const EVENT = (i: number) =>
  JSON.stringify({
    type: 'response.done',
    event_id: `event_${i}`,
    response: { usage: { total_tokens: 150, input_tokens: 100, output_tokens: 50 }, status: 'completed' },
  });

describe('WsMessageReader: permessage-deflate (RFC 7692)', () => {
  it('context takeover: later messages refer back to earlier ones and still inflate exactly', async () => {
    const texts = [EVENT(1), EVENT(2), 'plain-looking text', EVENT(3)];
    const compressed = await compressTakeover(texts);
    // The repeated event compresses to far less than the first: it is made of back-references.
    expect(compressed[1]!.length).toBeLessThan(compressed[0]!.length / 2);
    const stream = Buffer.concat(
      compressed.map((c) => frame({ opcode: OPCODE.text, rsv1: true, payload: c })),
    );
    expect((await read([stream], { deflate: TAKEOVER })).messages).toStrictEqual(texts);
    expect((await read(byteByByte(stream), { deflate: TAKEOVER })).messages).toStrictEqual(texts);
    for (let i = 0; i <= stream.length; i += 3)
      expect(
        (await read([stream.subarray(0, i), stream.subarray(i)], { deflate: TAKEOVER })).messages,
      ).toStrictEqual(texts);
    // Inflated on its own (no window), the second message cannot be read: the test does exercise takeover.
    expect(() =>
      zlib.inflateRawSync(Buffer.concat([compressed[1]!, Buffer.from([0, 0, 0xff, 0xff])])),
    ).toThrow();
  });

  it('server_no_context_takeover: each message inflates on its own; uncompressed messages interleave in order', async () => {
    const stream = Buffer.concat([
      frame({ opcode: OPCODE.text, rsv1: true, payload: compressAlone(EVENT(1)) }),
      frame({ opcode: OPCODE.text, payload: 'not compressed' }),
      frame({ opcode: OPCODE.text, rsv1: true, payload: compressAlone(EVENT(2)) }),
    ]);
    const r = await read([stream], { deflate: NO_TAKEOVER });
    expect(r.messages).toStrictEqual([EVENT(1), 'not compressed', EVENT(2)]);
    expect(r.problems).toStrictEqual([]);
  });

  it('a fragmented compressed message (RSV1 on the first frame only), control frames between fragments', async () => {
    const [c1, c2] = await compressTakeover([EVENT(1), EVENT(2)]);
    const stream = Buffer.concat([
      frame({ opcode: OPCODE.text, rsv1: true, payload: c1! }),
      frame({ opcode: OPCODE.text, fin: false, rsv1: true, payload: c2!.subarray(0, 3) }),
      frame({ opcode: OPCODE.ping, payload: '' }),
      frame({ opcode: OPCODE.continuation, fin: true, payload: c2!.subarray(3) }),
      frame({ opcode: OPCODE.close, payload: Buffer.from([0x03, 0xe8]) }),
    ]);
    const r = await read(byteByByte(stream), { deflate: TAKEOVER });
    expect(r.messages).toStrictEqual([EVENT(1), EVENT(2)]);
    expect(r.closes).toStrictEqual([1000]);
  });

  it('over the cap: skipped and counted, yet inflated so the next message still reads', async () => {
    const huge = JSON.stringify({ type: 'response.output_audio.delta', delta: 'QUJD'.repeat(5000) });
    const texts = [huge, EVENT(1)];
    const compressed = await compressTakeover(texts);
    const stream = Buffer.concat(
      compressed.map((c) => frame({ opcode: OPCODE.text, rsv1: true, payload: c })),
    );
    const r = await read([stream], { deflate: TAKEOVER, max: 1000 });
    expect(r.messages).toStrictEqual([EVENT(1)]);
    expect(r.oversize).toBe(1);
    // Uncompressed over the cap likewise; the bytes around it are unaffected.
    const plain = await read(
      [
        Buffer.concat([
          frame({ opcode: OPCODE.text, payload: huge }),
          frame({ opcode: OPCODE.text, payload: 'ok' }),
        ]),
      ],
      { max: 1000 },
    );
    expect(plain).toMatchObject({ messages: ['ok'], oversize: 1 });
  });

  it('data that does not inflate: a problem is reported, later compressed messages are not read', async () => {
    const stream = Buffer.concat([
      frame({ opcode: OPCODE.text, rsv1: true, payload: Buffer.from([0xff, 0xff, 0xff, 0x00, 0x12]) }),
      frame({ opcode: OPCODE.text, rsv1: true, payload: compressAlone(EVENT(1)) }),
      frame({ opcode: OPCODE.text, payload: 'plain still reads' }),
    ]);
    const r = await read([stream], { deflate: TAKEOVER });
    expect(r.problems[0]).toMatch(/^ws_inflate_failed: /);
    expect(r.messages).toStrictEqual(['plain still reads']);
  });

  it('RSV1 without a negotiated extension is a problem, not a message', async () => {
    const r = await read([frame({ opcode: OPCODE.text, rsv1: true, payload: compressAlone('x') })]);
    expect(r).toMatchObject({ messages: [], problems: ['ws_compressed_without_extension'] });
  });

  it('a message cut by the end of the stream is dropped; end() still calls back', async () => {
    const [c1, c2] = await compressTakeover([EVENT(1), EVENT(2)]);
    const stream = Buffer.concat([
      frame({ opcode: OPCODE.text, rsv1: true, payload: c1! }),
      frame({ opcode: OPCODE.text, rsv1: true, payload: c2! }).subarray(0, 10),
    ]);
    expect((await read([stream], { deflate: TAKEOVER })).messages).toStrictEqual([EVENT(1)]);
  });

  it('parses the negotiated Sec-WebSocket-Extensions', () => {
    expect(parseDeflateExtension(undefined)).toBeUndefined();
    expect(parseDeflateExtension('')).toBeUndefined();
    expect(parseDeflateExtension('permessage-deflate')).toStrictEqual(TAKEOVER);
    expect(
      parseDeflateExtension('permessage-deflate; server_no_context_takeover; client_max_window_bits=15'),
    ).toStrictEqual(NO_TAKEOVER);
    expect(parseDeflateExtension('permessage-deflate; server_max_window_bits="10"')).toStrictEqual({
      serverNoContextTakeover: false,
      serverMaxWindowBits: 10,
    });
    expect(parseDeflateExtension('permessage-deflate; server_max_window_bits=16')).toBe('unsupported');
    expect(parseDeflateExtension('x-webkit-deflate-frame')).toBe('unsupported');
  });

  it('server_max_window_bits below 15: a 9-bit window stream inflates', async () => {
    const deflater = zlib.createDeflateRaw({ windowBits: 9 });
    const parts: Buffer[] = [];
    deflater.on('data', (d: Buffer) => parts.push(d));
    deflater.write(EVENT(1).repeat(20));
    await new Promise<void>((r) => deflater.flush(zlib.constants.Z_SYNC_FLUSH, () => r()));
    deflater.close();
    const payload = Buffer.concat(parts).subarray(0, -4);
    const r = await read([frame({ opcode: OPCODE.text, rsv1: true, payload })], {
      deflate: { serverNoContextTakeover: false, serverMaxWindowBits: 9 },
    });
    expect(r.messages).toStrictEqual([EVENT(1).repeat(20)]);
  });
});
