import type { ServerResponse } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import zlib from 'node:zlib';
import type { Scenario } from './scenarios.js';

/** One SSE event to write: `event:` name (optional) and a single-line `data:` payload. */
export interface OutEvent {
  event?: string;
  data: string;
}

export interface ResponseContext {
  res: ServerResponse;
  scenario: Scenario;
  /** Headers every response carries (x-request-id, rate-limit headers). */
  baseHeaders: Record<string, string>;
  /** Called right before the fake destroys the socket on purpose (reset-mid-stream). */
  onIntentionalReset(): void;
  /** Progress of a streamed answer: how many events it has and how many were written so far. */
  onStreamProgress?(written: number, total: number): void;
}

/** Writes bytes honouring backpressure; resolves false once the client has gone away. */
interface BodySink {
  write(bytes: Buffer): Promise<boolean>;
  end(): Promise<void>;
}

function waitDrainOrClose(emitter: NodeJS.EventEmitter): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      emitter.off('drain', done);
      emitter.off('close', done);
      resolve();
    };
    emitter.once('drain', done);
    emitter.once('close', done);
  });
}

function plainSink(res: ServerResponse): BodySink {
  return {
    async write(bytes) {
      if (res.destroyed) return false;
      if (!res.write(bytes)) await waitDrainOrClose(res);
      return !res.destroyed;
    },
    end() {
      return new Promise((resolve) => {
        if (res.destroyed) return resolve();
        res.end(resolve);
      });
    },
  };
}

/** gzip every write and flush it at once, so a gzip stream still arrives event by event. */
function gzipSink(res: ServerResponse): BodySink {
  const gzip = zlib.createGzip();
  gzip.pipe(res);
  // A destroyed gzip never calls a pending flush back; the close promise unblocks the writer.
  const closed = new Promise<void>((resolve) => res.once('close', resolve));
  res.once('close', () => gzip.destroy());
  return {
    async write(bytes) {
      if (res.destroyed) return false;
      if (!gzip.write(bytes)) await waitDrainOrClose(gzip);
      await Promise.race([
        new Promise<void>((resolve) => gzip.flush(zlib.constants.Z_SYNC_FLUSH, () => resolve())),
        closed,
      ]);
      return !res.destroyed;
    },
    end() {
      return new Promise((resolve) => {
        if (res.destroyed) return resolve();
        res.once('finish', resolve);
        res.once('close', resolve);
        gzip.end();
      });
    },
  };
}

function encodingHeaders(scenario: Scenario): Record<string, string> {
  return scenario.names.has('gzip') ? { 'content-encoding': 'gzip' } : {};
}

function wantsGzip(scenario: Scenario): boolean {
  return scenario.names.has('gzip') || scenario.names.has('gzip-no-header');
}

/**
 * Destroys the socket once what was written has reached it: http.ServerResponse corks the socket
 * until the next tick, so destroying at once would drop the events we meant to deliver first.
 */
async function intentionalReset(ctx: ResponseContext): Promise<void> {
  ctx.onIntentionalReset();
  const { res } = ctx;
  for (let i = 0; i < 1000; i++) {
    await new Promise((resolve) => setImmediate(resolve));
    const socket = res.socket;
    if (socket === null || (res.writableLength === 0 && socket.writableLength === 0)) break;
  }
  res.socket?.destroy();
}

export async function sendJson(
  ctx: ResponseContext,
  status: number,
  body: unknown,
  extraHeaders: Record<string, string> = {},
): Promise<void> {
  const { res, scenario } = ctx;
  // A non-streamed answer "generates" for one delay before anything is sent.
  if (scenario.delayMs > 0) await sleep(scenario.delayMs);
  if (res.destroyed) return;
  const raw = Buffer.from(JSON.stringify(body));
  const bytes = wantsGzip(scenario) ? zlib.gzipSync(raw) : raw;
  res.writeHead(status, {
    ...ctx.baseHeaders,
    ...extraHeaders,
    ...encodingHeaders(scenario),
    'content-type': 'application/json',
    'content-length': String(bytes.length),
  });
  if (scenario.names.has('hang-after-head')) {
    res.flushHeaders();
    return;
  }
  if (scenario.names.has('reset-mid-stream')) {
    // Half the promised body, then a dead socket: the client sees a truncated response.
    res.write(bytes.subarray(0, Math.floor(bytes.length / 2)));
    void intentionalReset(ctx);
    return;
  }
  if (scenario.names.has('split-writes')) {
    const sink = plainSink(res);
    if (!(await writeSplit(sink, bytes, scenario.splitBytes))) return;
    await sink.end();
    return;
  }
  res.end(bytes);
}

/** Writes in `size`-byte pieces, yielding between them so each leaves as its own TCP segment. */
async function writeSplit(sink: BodySink, bytes: Buffer, size: number): Promise<boolean> {
  for (let offset = 0; offset < bytes.length; offset += size) {
    if (!(await sink.write(bytes.subarray(offset, offset + size)))) return false;
    await new Promise((resolve) => setImmediate(resolve));
  }
  return true;
}

export function formatEvent(event: OutEvent, eol: string): string {
  return `${event.event !== undefined ? `event: ${event.event}${eol}` : ''}data: ${event.data}${eol}${eol}`;
}

/** Streams SSE events with the transport scenarios applied (delay, keepalive, crlf, gzip, reset). */
export async function sendSse(
  ctx: ResponseContext,
  events: OutEvent[],
  extraHeaders: Record<string, string> = {},
): Promise<void> {
  const { res, scenario } = ctx;
  res.writeHead(200, {
    ...ctx.baseHeaders,
    ...extraHeaders,
    ...encodingHeaders(scenario),
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
  });
  res.flushHeaders();
  if (scenario.names.has('hang-after-head')) return;
  const sink = wantsGzip(scenario) ? gzipSink(res) : plainSink(res);
  const eol = scenario.names.has('crlf') ? '\r\n' : '\n';
  const keepalive = scenario.names.has('keepalive');
  const reset = scenario.names.has('reset-mid-stream');
  const split = scenario.names.has('split-writes');
  ctx.onStreamProgress?.(0, events.length);
  for (const [index, event] of events.entries()) {
    if (index > 0 && scenario.delayMs > 0) await sleep(scenario.delayMs);
    if (keepalive && !(await sink.write(Buffer.from(`: ping${eol}${eol}`)))) return;
    const bytes = Buffer.from(formatEvent(event, eol));
    const written = split ? await writeSplit(sink, bytes, scenario.splitBytes) : await sink.write(bytes);
    if (!written) return;
    ctx.onStreamProgress?.(index + 1, events.length);
    if (reset && index + 1 >= scenario.resetAfter) {
      await intentionalReset(ctx);
      return;
    }
  }
  if (keepalive && !(await sink.write(Buffer.from(`: ping${eol}${eol}`)))) return;
  await sink.end();
}
