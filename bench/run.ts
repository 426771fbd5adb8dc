/**
 * `npm run bench` (DESIGN.md §11). One process, one run, same fast upstream on 127.0.0.1, four
 * paths compared against each other:
 *   direct        client → upstream (the baseline for added latency)
 *   bare-proxy    client → http-proxy-middleware → upstream (the baseline for throughput)
 *   tm-noop       client → tokenmeter with a no-op Meter (the raw proxy cost)
 *   tm-full       client → tokenmeter with the real runtime (decoders, pricing, metrics, SQLite)
 * Measures added latency p50/p99 at concurrency 1/16/64, throughput ratio vs the bare proxy, added
 * time to first chunk, inter-chunk delivery (no coalescing), and RSS over 10,000 streamed requests
 * and during a slow reader of a long stream. Every phase is bounded in count and in time.
 * Client, proxies and upstream share one event loop, so absolute numbers are pessimistic; the
 * ratios against the baselines of the same run are what to compare between runs.
 * Writes bench/results/latest.json and prints a table.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createProxyMiddleware } from 'http-proxy-middleware';
import type { Settings } from '../src/config/types.js';
import { SILENT_LOGGER } from '../src/log.js';
import type { Meter } from '../src/meter/types.js';
import { createProxyServer, type ProxyServer } from '../src/proxy/server.js';
import { testSettings, upstreamSettings } from '../test/proxy/helpers.js';
import { NOOP_METER } from '../test/proxy/recording-meter.js';
import { startBenchUpstream } from './upstream.js';

const CONCURRENCY = [1, 16, 64] as const;
const LATENCY_REQUESTS = { 1: 2000, 16: 6000, 64: 8000 } as const;
const PHASE_TIME_LIMIT_MS = 6000;
const STREAM_REQUESTS_FOR_RSS = 10_000;
const SLOW_READER_MB = 64;

const CHAT_BODY = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'say ok' }] });
const STREAM_BODY = JSON.stringify({
  model: 'gpt-4o-mini',
  stream: true,
  messages: [{ role: 'user', content: 'count' }],
});

interface Target {
  name: string;
  base: string;
}

interface Timing {
  totalMs: number;
  ttfcMs: number;
  /** Arrival time of each data event, ms since request start. */
  arrivals: number[];
  bytes: number;
}

function timedRequest(
  agent: http.Agent,
  base: string,
  body: string,
  headers: Record<string, string> = {},
  onData?: (res: http.IncomingMessage, chunk: Buffer) => void,
): Promise<Timing> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    let ttfc = -1;
    const arrivals: number[] = [];
    let bytes = 0;
    const req = http.request(
      `${base}/v1/chat/completions`,
      {
        method: 'POST',
        agent,
        headers: {
          'content-type': 'application/json',
          authorization: 'Bearer sk-bench',
          'content-length': Buffer.byteLength(body),
          ...headers,
        },
      },
      (res) => {
        res.on('data', (c: Buffer) => {
          const t = performance.now() - start;
          if (ttfc < 0) ttfc = t;
          arrivals.push(t);
          bytes += c.length;
          onData?.(res, c);
        });
        res.on('end', () => resolve({ totalMs: performance.now() - start, ttfcMs: ttfc, arrivals, bytes }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

const round = (n: number, d = 3) => Math.round(n * 10 ** d) / 10 ** d;

async function runLoad(
  target: Target,
  concurrency: number,
  count: number,
  body: string,
  headers: Record<string, string> = {},
): Promise<{ timings: Timing[]; elapsedMs: number }> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const timings: Timing[] = [];
  let issued = 0;
  const start = performance.now();
  const worker = async () => {
    while (issued < count && performance.now() - start < PHASE_TIME_LIMIT_MS) {
      issued++;
      timings.push(await timedRequest(agent, target.base, body, headers));
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const elapsedMs = performance.now() - start;
  agent.destroy();
  return { timings, elapsedMs };
}

function gcAndRssMb(): number {
  (globalThis as { gc?: () => void }).gc?.();
  return process.memoryUsage().rss / (1024 * 1024);
}

async function listenBareProxy(upstreamUrl: string): Promise<{ base: string; close(): Promise<void> }> {
  const agent = new http.Agent({ keepAlive: true, maxFreeSockets: 256 });
  const mw = createProxyMiddleware({ target: upstreamUrl, changeOrigin: true, agent });
  const server = http.createServer((req, res) => {
    void mw(req, res, () => {
      res.statusCode = 404;
      res.end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise((r) => {
        agent.destroy();
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

function benchSettings(upstreamUrl: string, db: string | null): Settings {
  return testSettings([upstreamSettings('default', `${upstreamUrl}/v1`)], { db, presets: true });
}

async function main(): Promise<void> {
  const results: Record<string, unknown> = {
    started: new Date().toISOString(),
    node: process.version,
    gc: typeof (globalThis as { gc?: unknown }).gc === 'function',
  };
  const rows: Array<[string, string, string]> = [];
  const row = (name: string, value: number | string, vsBaseline: number | string = '') =>
    rows.push([
      name,
      typeof value === 'number' ? String(round(value)) : value,
      typeof vsBaseline === 'number' ? String(round(vsBaseline)) : vsBaseline,
    ]);

  const upstream = await startBenchUpstream();
  const bare = await listenBareProxy(upstream.url);
  const tmNoop: ProxyServer = createProxyServer({
    settings: benchSettings(upstream.url, null),
    meter: NOOP_METER,
    log: SILENT_LOGGER,
  });
  const noopAddr = await tmNoop.listen();

  const dir = mkdtempSync(join(tmpdir(), 'tm-bench-'));
  let tmFull: ProxyServer | undefined;
  let fullClose: (() => Promise<void>) | undefined;
  let fullMeter: Meter | undefined;
  const targets: Target[] = [
    { name: 'direct', base: upstream.url },
    { name: 'bare-proxy', base: bare.base },
    { name: 'tm-noop', base: `http://127.0.0.1:${noopAddr.port}` },
  ];
  if (existsSync(new URL('../src/runtime.ts', import.meta.url))) {
    const { buildRuntime } = await import('../src/runtime.js');
    const settings = benchSettings(upstream.url, join(dir, 'bench.db'));
    const runtime = await buildRuntime(settings, SILENT_LOGGER, {
      ...process.env,
      OTEL_SDK_DISABLED: 'true',
    });
    fullMeter = runtime.meter;
    tmFull = createProxyServer({
      settings,
      meter: runtime.meter,
      log: SILENT_LOGGER,
      admin: { metrics: runtime.metrics, ready: runtime.ready },
    });
    const addr = await tmFull.listen();
    targets.push({ name: 'tm-full', base: `http://127.0.0.1:${addr.port}` });
    fullClose = async () => {
      await tmFull!.close(1000);
      await runtime.close();
    };
  } else results.note = 'src/runtime.ts missing: tm-full skipped';

  // Warm up every path (JIT, keep-alive pools).
  for (const t of targets) await runLoad(t, 4, 300, CHAT_BODY);

  // 1. Non-streamed latency and throughput.
  const latency: Record<string, unknown> = {};
  for (const c of CONCURRENCY) {
    const per: Record<string, { p50: number; p99: number; rps: number; n: number }> = {};
    // Two rounds in opposite orders, merged, so no target always runs first (JIT, GC, heat).
    const merged = new Map<string, { totals: number[]; elapsedMs: number }>();
    for (const order of [targets, [...targets].reverse()]) {
      for (const t of order) {
        const { timings, elapsedMs } = await runLoad(t, c, LATENCY_REQUESTS[c] / 2, CHAT_BODY);
        const m = merged.get(t.name) ?? { totals: [], elapsedMs: 0 };
        m.totals.push(...timings.map((x) => x.totalMs));
        m.elapsedMs += elapsedMs;
        merged.set(t.name, m);
      }
    }
    for (const [name, m] of merged) {
      const sorted = m.totals.sort((a, b) => a - b);
      per[name] = {
        p50: percentile(sorted, 50),
        p99: percentile(sorted, 99),
        rps: (sorted.length / m.elapsedMs) * 1000,
        n: sorted.length,
      };
    }
    const d = per.direct!;
    const b = per['bare-proxy']!;
    for (const name of ['bare-proxy', 'tm-noop', 'tm-full']) {
      const p = per[name];
      if (!p) continue;
      row(`c=${c} ${name} added p50 ms`, p.p50 - d.p50, p.p50 / d.p50);
      row(`c=${c} ${name} added p99 ms`, p.p99 - d.p99, p.p99 / d.p99);
      row(`c=${c} ${name} throughput rps`, p.rps, name === 'bare-proxy' ? p.rps / d.rps : p.rps / b.rps);
    }
    latency[`c${c}`] = {
      ...per,
      added_ms: Object.fromEntries(
        Object.entries(per)
          .filter(([k]) => k !== 'direct')
          .map(([k, v]) => [
            k,
            {
              p50: round(v.p50 - d.p50),
              p99: round(v.p99 - d.p99),
              throughput_vs_bare: round(v.rps / b.rps),
            },
          ]),
      ),
    };
  }
  results.latency = latency;
  rows.push(['(throughput ratio column: tm-* vs bare-proxy; bare-proxy vs direct)', '', '']);

  // 2. Time to first chunk for streams (8 chunks, no gaps), concurrency 1.
  const ttfc: Record<string, { p50: number; p99: number }> = {};
  for (const t of targets) {
    const { timings } = await runLoad(t, 1, 1500, STREAM_BODY);
    const sorted = timings.map((x) => x.ttfcMs).sort((a, b) => a - b);
    ttfc[t.name] = { p50: percentile(sorted, 50), p99: percentile(sorted, 99) };
  }
  for (const name of ['bare-proxy', 'tm-noop', 'tm-full']) {
    const v = ttfc[name];
    if (!v) continue;
    row(`stream ${name} added TTFC p50 ms`, v.p50 - ttfc.direct!.p50, v.p50 / ttfc.direct!.p50);
    row(`stream ${name} added TTFC p99 ms`, v.p99 - ttfc.direct!.p99, v.p99 / ttfc.direct!.p99);
  }
  results.ttfc_ms = ttfc;

  // 3. Inter-chunk delivery: 20 chunks 10 ms apart; every chunk must arrive on its own, on time.
  const gaps: Record<string, { data_events_per_request: number; mean_gap_ms: number; p99_gap_ms: number }> =
    {};
  for (const t of targets) {
    const { timings } = await runLoad(t, 4, 24, STREAM_BODY, {
      'x-bench-chunks': '20',
      'x-bench-gap-ms': '10',
    });
    const all: number[] = [];
    let events = 0;
    for (const tm of timings) {
      events += tm.arrivals.length;
      for (let i = 1; i < tm.arrivals.length; i++) all.push(tm.arrivals[i]! - tm.arrivals[i - 1]!);
    }
    all.sort((a, b) => a - b);
    gaps[t.name] = {
      data_events_per_request: events / timings.length,
      mean_gap_ms: all.reduce((s, x) => s + x, 0) / Math.max(1, all.length),
      p99_gap_ms: percentile(all, 99),
    };
  }
  for (const name of ['bare-proxy', 'tm-noop', 'tm-full']) {
    const v = gaps[name];
    if (!v) continue;
    row(
      `stream ${name} data events/request`,
      v.data_events_per_request,
      v.data_events_per_request / gaps.direct!.data_events_per_request,
    );
    row(`stream ${name} p99 inter-chunk gap ms`, v.p99_gap_ms, v.p99_gap_ms / gaps.direct!.p99_gap_ms);
  }
  results.inter_chunk = gaps;

  // 4. RSS across 10,000 streamed requests through tokenmeter (full runtime if present).
  const rssTarget = targets.find((t) => t.name === 'tm-full') ?? targets.find((t) => t.name === 'tm-noop')!;
  const rssStart = gcAndRssMb();
  const half = STREAM_REQUESTS_FOR_RSS / 2;
  const r1 = await runLoad(rssTarget, 16, half, STREAM_BODY);
  if (fullMeter)
    for (let i = 0; i < 200 && fullMeter.inflight() > 0; i++) await new Promise((r) => setTimeout(r, 10));
  const rssMid = gcAndRssMb();
  const r2 = await runLoad(rssTarget, 16, half, STREAM_BODY);
  if (fullMeter)
    for (let i = 0; i < 200 && fullMeter.inflight() > 0; i++) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setTimeout(r, 300)); // let the audit queue flush
  const rssEnd = gcAndRssMb();
  const streamed = r1.timings.length + r2.timings.length;
  results.rss_streams = {
    target: rssTarget.name,
    requests: streamed,
    start_mb: rssStart,
    middle_mb: rssMid,
    end_mb: rssEnd,
    end_vs_start: rssEnd / rssStart,
  };
  row(`RSS ${rssTarget.name} start MB (${streamed} streams)`, rssStart, 1);
  row(`RSS ${rssTarget.name} middle MB`, rssMid, rssMid / rssStart);
  row(`RSS ${rssTarget.name} end MB`, rssEnd, rssEnd / rssStart);

  // 5. Slow reader of a long stream: the proxy must hold only socket buffers, not the stream.
  //    Run through the raw proxy (no-op meter) and through the full runtime, to tell them apart.
  const slow: Record<string, unknown> = {};
  for (const t of targets.filter((x) => x.name.startsWith('tm-'))) {
    const slowStart = gcAndRssMb();
    let slowMax = slowStart;
    const sampler = setInterval(() => {
      slowMax = Math.max(slowMax, process.memoryUsage().rss / (1024 * 1024));
    }, 100);
    const slowAgent = new http.Agent({ keepAlive: false });
    let received = 0;
    const slowT0 = performance.now();
    await timedRequest(
      slowAgent,
      t.base,
      STREAM_BODY,
      { 'x-bench-long-mb': String(SLOW_READER_MB) },
      (res, c) => {
        received += c.length;
        // Read ~256 KiB, then stall 10 ms: a reader much slower than the upstream.
        if (received % (256 * 1024) < c.length) {
          res.pause();
          setTimeout(() => res.resume(), 10);
        }
      },
    );
    clearInterval(sampler);
    if (fullMeter)
      for (let i = 0; i < 200 && fullMeter.inflight() > 0; i++) await new Promise((r) => setTimeout(r, 10));
    const slowEnd = gcAndRssMb();
    slow[t.name] = {
      mb_streamed: received / (1024 * 1024),
      seconds: (performance.now() - slowT0) / 1000,
      start_mb: slowStart,
      max_mb: slowMax,
      end_mb: slowEnd,
      max_vs_start: slowMax / slowStart,
    };
    row(`slow reader ${t.name} ${round(received / 1048576, 0)} MiB: RSS start MB`, slowStart, 1);
    row(`slow reader ${t.name}: RSS max MB`, slowMax, slowMax / slowStart);
    row(`slow reader ${t.name}: RSS end MB (after gc)`, slowEnd, slowEnd / slowStart);
  }
  results.rss_slow_reader = slow;

  // 6. Other engineers' component benchmarks, when present.
  for (const [file, fn] of [
    ['./decoders.ts', 'runDecoderBench'],
    ['./audit.ts', 'runAuditBench'],
  ] as const) {
    if (!existsSync(new URL(file, import.meta.url))) continue;
    try {
      const mod = (await import(file.replace(/\.ts$/, '.js'))) as Record<
        string,
        () => Promise<Record<string, number>>
      >;
      if (typeof mod[fn] !== 'function') continue;
      const r = await mod[fn]!();
      results[fn] = r;
      for (const [k, v] of Object.entries(r)) row(`${fn}: ${k}`, v);
    } catch (err) {
      results[fn] = { error: (err as Error).message };
    }
  }

  await tmNoop.close(0);
  await fullClose?.();
  await bare.close();
  await upstream.close();
  rmSync(dir, { recursive: true, force: true });

  results.finished = new Date().toISOString();
  results.targets = {
    added_p50_ms_max: Math.max(
      ...CONCURRENCY.map(
        (c) =>
          (
            (latency[`c${c}`] as { added_ms: Record<string, { p50: number }> }).added_ms['tm-full'] ??
            (latency[`c${c}`] as { added_ms: Record<string, { p50: number }> }).added_ms['tm-noop']!
          ).p50,
      ),
    ),
    added_p99_ms_max: Math.max(
      ...CONCURRENCY.map(
        (c) =>
          (
            (latency[`c${c}`] as { added_ms: Record<string, { p99: number }> }).added_ms['tm-full'] ??
            (latency[`c${c}`] as { added_ms: Record<string, { p99: number }> }).added_ms['tm-noop']!
          ).p99,
      ),
    ),
    goal: 'added p50 <= 1 ms, p99 <= 5 ms, throughput >= 0.8 x bare proxy, RSS flat (+-20%)',
  };
  mkdirSync(new URL('./results/', import.meta.url), { recursive: true });
  writeFileSync(new URL('./results/latest.json', import.meta.url), JSON.stringify(results, null, 2) + '\n');

  const w0 = Math.max(...rows.map((r) => r[0].length));
  const w1 = Math.max(...rows.map((r) => r[1].length), 8);
  process.stdout.write(`${'measure'.padEnd(w0)}  ${'value'.padStart(w1)}  ratio vs baseline\n`);
  for (const [a, b, c] of rows) process.stdout.write(`${a.padEnd(w0)}  ${b.padStart(w1)}  ${c}\n`);
  process.stdout.write('\nwritten: bench/results/latest.json\n');
}

await main();
