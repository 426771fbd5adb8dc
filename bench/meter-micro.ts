/**
 * The metering path alone, in one process with no sockets: for N synthetic non-streamed chat
 * exchanges, inspect the request, begin the meter, feed it the response head and body, finish it
 * (record, pricing, audit row to the writer thread, metrics). Prints CPU µs per exchange for the
 * whole process (main and writer threads) and for the main thread. Investigation helper for issue 11,
 * not part of `npm run bench`: `npm run build && node --import tsx bench/meter-micro.ts [N]` (add
 * --cpu-prof to profile). With `MICRO_OTLP=<base URL of bench/otlp-receiver.ts>` traces are on
 * (only OTEL_EXPORTER_OTLP_ENDPOINT set, as a user turns them on: http/protobuf), so the span's
 * start, end and export are in the figures too. `MICRO_DIST=<absolute path of a built dist/>`
 * times another build instead (an A/B of one change: copy this tree's dist/ before the change to
 * a folder inside the repository, so its imports and presets resolve, and alternate the two runs).
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cpuMs } from './processes.js';
import { benchSettings } from './settings.js';
import { COMPLETION } from './upstream.js';

// The compiled tree (dist/, what `serve` runs) unless MICRO_SRC=1: tsx adds a __name() call to
// every closure it creates, which the metering path creates per request.
const from = process.env.MICRO_SRC ? '../src' : (process.env.MICRO_DIST ?? '../dist');
const { SILENT_LOGGER } = (await import(`${from}/log.js`)) as typeof import('../src/log.js');
const { inspectRequest } = (await import(
  `${from}/meter/inspect.js`
)) as typeof import('../src/meter/inspect.js');
const { buildRuntime } = (await import(`${from}/runtime.js`)) as typeof import('../src/runtime.js');

const N = Number(process.argv[2] ?? 100_000);
const settings = benchSettings(
  'http://127.0.0.1:9/v1',
  process.env.NO_DB ? null : join(mkdtempSync(join(tmpdir(), 'tm-micro-')), 'm.db'),
);
const otlp = process.env.MICRO_OTLP;
const rt = await buildRuntime(
  settings,
  SILENT_LOGGER,
  otlp
    ? { ...process.env, OTEL_EXPORTER_OTLP_ENDPOINT: otlp }
    : { ...process.env, OTEL_SDK_DISABLED: 'true' },
);
const reqBody = Buffer.from(
  JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'x' }] }),
);
const resBody = Buffer.from(COMPLETION);
const headers = {
  host: '127.0.0.1:4000',
  'content-type': 'application/json',
  authorization: 'Bearer sk-bench-key',
  'content-length': String(reqBody.length),
};
const resHeaders = { 'content-type': 'application/json', 'content-length': String(resBody.length) };
const upstreamUrl = new URL('http://127.0.0.1:9/v1');

async function batch(n: number): Promise<void> {
  const pending: Promise<void>[] = [];
  for (let i = 0; i < n; i++) {
    const info = inspectRequest('POST', '/v1/chat/completions', reqBody);
    const m = rt.meter.begin({
      method: 'POST',
      path: '/v1/chat/completions',
      headers,
      upstream: 'default',
      upstreamUrl,
      info,
      requestBytes: reqBody.length,
      injectedUsage: false,
    });
    m.onResponseHead(200, resHeaders);
    m.onResponseChunk(resBody);
    m.onFirstByteToClient();
    pending.push(m.finish({ kind: 'complete' }, { overheadSeconds: 0.0001 }));
    // Like a server under c=32: a few dozen exchanges in flight, then the event loop turns.
    if (pending.length === 32) {
      await Promise.all(pending);
      pending.length = 0;
      await new Promise((r) => setImmediate(r));
    }
  }
  await Promise.all(pending);
}

await batch(Math.min(N, 20_000)); // warm-up: JIT and the DB file's first pages
const p0 = process.cpuUsage();
const t0 = cpuMs(process.pid, process.pid);
await batch(N);
const t1 = (cpuMs(process.pid, process.pid) - t0) * 1000; // µs
const p1 = process.cpuUsage(p0);
const us = (u: { user: number; system: number }) => ((u.user + u.system) / N).toFixed(2);
console.log(JSON.stringify({ n: N, process_us: Number(us(p1)), main_us: Number((t1 / N).toFixed(2)) }));
await rt.close();
