/**
 * The benchmark's measured phases (docs/benchmarks.md). Each takes the targets of the run, drives
 * load from this process, and adds rows to the table; each returns its raw figures for the JSON.
 * Every phase is bounded in request count and wall time (scaled by TOKENMETER_BENCH_SCALE).
 * Phases that compare targets run them in rounds whose order rotates and reverses, so no target
 * always runs first (JIT warm-up, GC, CPU heat and neighbours' load fall on each in turn).
 */
import http from 'node:http';
import {
  CHAT_BODY,
  STREAM_BODY,
  percentile,
  runLoad,
  sleep,
  sortedNumbers,
  timedRequest,
  type LoadSpec,
  type Timing,
} from './load.js';
import { cpuMs, rssMb, rssSampler } from './processes.js';
import { round, type Table } from './report.js';

export interface Target {
  /** direct | bare | tm-serve | tm-traces | tm-noop */
  name: string;
  base: string;
  /** The server process measured for RSS (undefined for direct: that is the upstream). */
  pid?: number;
  /** Requests this bench sent to it (compared with the audit rows tokenmeter wrote). */
  sent: number;
}

export interface PhaseContext {
  targets: Target[];
  table: Table;
  /** Multiplies every count and time limit (1 = the full bench). */
  scale: number;
  /** Pause between runs so one target's background work (audit flush, export) settles. */
  settleMs: number;
}

type Raw = Record<string, unknown>;

const n = (ctx: PhaseContext, count: number) => Math.max(1, Math.round(count * ctx.scale));
const ms = (ctx: PhaseContext, t: number) => Math.max(200, Math.round(t * ctx.scale));

async function load(ctx: PhaseContext, t: Target, spec: Omit<LoadSpec, 'base'>) {
  const r = await runLoad({ ...spec, base: t.base });
  t.sent += r.timings.length;
  await sleep(ctx.settleMs);
  return r;
}

/** Round r's order: rotated by r, reversed on odd rounds. */
function orderFor<T>(items: readonly T[], round: number): T[] {
  const k = round % items.length;
  const rotated = [...items.slice(k), ...items.slice(0, k)];
  return round % 2 === 1 ? rotated.reverse() : rotated;
}

async function inRounds<T>(
  ctx: PhaseContext,
  rounds: number,
  run: (t: Target, round: number) => Promise<T>,
): Promise<Map<string, T[]>> {
  const out = new Map<string, T[]>(ctx.targets.map((t) => [t.name, []]));
  for (let r = 0; r < rounds; r++)
    for (const t of orderFor(ctx.targets, r)) out.get(t.name)!.push(await run(t, r));
  return out;
}

const others = (ctx: PhaseContext) => ctx.targets.filter((t) => t.name !== 'direct');

/** One row per proxy: how much its percentile adds to direct's, against `limit` ms. */
function addedVsDirect<S extends { p50: number; p99: number }>(
  ctx: PhaseContext,
  stats: Map<string, S>,
  figure: string,
  p: 'p50' | 'p99',
  limit: number,
  extra: (s: S) => string,
): void {
  const d = stats.get('direct')!;
  for (const t of others(ctx)) {
    const s = stats.get(t.name)!;
    ctx.table.add({
      figure,
      target: t.name,
      value: s[p] - d[p],
      unit: 'ms',
      goal: { op: '<=', limit },
      ratio: s[p] / d[p],
      ratioOf: `direct ${p}`,
      note: `direct ${round(d[p], 3)} ms${extra(s)}`,
    });
  }
}
const failed = (ts: Timing[]) => ts.filter((x) => x.status !== 200 || x.error !== undefined).length;

export async function warmUp(ctx: PhaseContext): Promise<void> {
  for (const t of ctx.targets) {
    await load(ctx, t, { concurrency: 4, count: n(ctx, 400), maxMs: ms(ctx, 4000), body: CHAT_BODY });
    await load(ctx, t, { concurrency: 4, count: n(ctx, 100), maxMs: ms(ctx, 2000), body: STREAM_BODY });
  }
}

/**
 * Sequential requests (concurrency 1) sent to every target in turn, one request each per turn with
 * the turn's order rotating: every target sees the same moments of background load, so the
 * difference of two medians is not the difference of two quiet spells.
 */
async function interleaved(
  ctx: PhaseContext,
  count: number,
  maxMs: number,
  body: string,
): Promise<Map<string, Timing[]>> {
  const agents = new Map(
    ctx.targets.map((t) => [t.name, new http.Agent({ keepAlive: true, maxSockets: 1 })]),
  );
  const out = new Map<string, Timing[]>(ctx.targets.map((t) => [t.name, []]));
  const start = performance.now();
  for (let i = 0; i < count && performance.now() - start < maxMs; i++) {
    for (const t of orderFor(ctx.targets, i)) {
      out.get(t.name)!.push(await timedRequest(agents.get(t.name)!, { base: t.base, body }));
      t.sent++;
    }
  }
  for (const a of agents.values()) a.destroy();
  await sleep(ctx.settleMs);
  return out;
}

/** Non-streamed chat at concurrency 1: added p50 and p99 against direct. */
export async function latencyC1(ctx: PhaseContext): Promise<Raw> {
  const per = await interleaved(ctx, n(ctx, 8000), ms(ctx, 45_000), CHAT_BODY);
  const stats = new Map<string, { p50: number; p99: number; n: number; errors: number }>();
  for (const [name, all] of per) {
    const sorted = sortedNumbers(all.map((x) => x.totalMs));
    stats.set(name, {
      p50: percentile(sorted, 50),
      p99: percentile(sorted, 99),
      n: all.length,
      errors: failed(all),
    });
  }
  addedVsDirect(ctx, stats, 'non-stream added latency p50, c=1', 'p50', 0.25, (s) =>
    s.errors ? `; ${s.errors} errors` : '',
  );
  addedVsDirect(ctx, stats, 'non-stream added latency p99, c=1', 'p99', 2, (s) => `; n=${s.n}`);
  return Object.fromEntries(stats);
}

/** Non-streamed chat at concurrency 32 for a fixed window per round: requests/s, ratio to bare. */
export async function throughputC32(ctx: PhaseContext): Promise<Raw> {
  // CPU each proxy process used per request, over its windows and the settle after each (which
  // holds its deferred work: audit commits, span export), for its main thread and the whole process.
  const cpu = new Map<string, { mainMs: number; processMs: number; requests: number }>();
  const per = await inRounds(ctx, 4, async (t) => {
    // No pid for direct: its process is the upstream.
    const pid = t.pid;
    const before = pid === undefined ? undefined : { pid, main: cpuMs(pid, pid), all: cpuMs(pid) };
    const r = await load(ctx, t, {
      concurrency: 32,
      count: n(ctx, 60_000),
      maxMs: ms(ctx, 2000),
      body: CHAT_BODY,
    });
    if (before) {
      const c = cpu.get(t.name) ?? { mainMs: 0, processMs: 0, requests: 0 };
      c.mainMs += cpuMs(before.pid, before.pid) - before.main;
      c.processMs += cpuMs(before.pid) - before.all;
      c.requests += r.timings.length;
      cpu.set(t.name, c);
    }
    return r;
  });
  const rps = (runs: { timings: Timing[]; elapsedMs: number }[]) =>
    (runs.reduce((s, r) => s + r.timings.length, 0) / runs.reduce((s, r) => s + r.elapsedMs, 0)) * 1000;
  const roundRps = (name: string) => per.get(name)!.map((r) => (r.timings.length / r.elapsedMs) * 1000);
  const bare = rps(per.get('bare')!);
  const direct = rps(per.get('direct')!);
  const raw: Raw = {};
  for (const t of ctx.targets) {
    const v = rps(per.get(t.name)!);
    const byRound = roundRps(t.name).map((x, i) => x / roundRps('bare')[i]!);
    raw[t.name] = { rps: v, per_round_rps: roundRps(t.name), per_round_vs_bare: byRound };
    if (t.name === 'direct') continue;
    const errors = failed(per.get(t.name)!.flatMap((r) => r.timings));
    ctx.table.add({
      figure: 'non-stream throughput c=32, ratio to bare proxy',
      target: t.name,
      value: v / bare,
      unit: '',
      goal: t.name === 'bare' ? undefined : { op: '>=', limit: 0.8 },
      ratio: v / direct,
      ratioOf: 'direct rps',
      note: `${Math.round(v)} req/s; bare ${Math.round(bare)}; lowest round ${round(Math.min(...byRound), 3)}${errors ? `; ${errors} errors` : ''}`,
    });
  }
  cpuPerRequest(ctx, cpu, raw);
  return raw;
}

/**
 * Main-thread CPU per request at c=32, as a ratio to the bare proxy's. On a small machine the
 * proxy's main thread is what saturates first (docs/benchmarks.md, "sixth pass"), so the bare
 * proxy's figure over a target's approximates the throughput ratio the main thread allows, and it
 * moves less with the machine's background load than requests per second do.
 */
function cpuPerRequest(
  ctx: PhaseContext,
  cpu: Map<string, { mainMs: number; processMs: number; requests: number }>,
  raw: Raw,
): void {
  const us = (name: string, k: 'mainMs' | 'processMs') => {
    const c = cpu.get(name);
    return c && c.requests > 0 ? (c[k] * 1000) / c.requests : NaN;
  };
  const bareMain = us('bare', 'mainMs');
  for (const t of others(ctx)) {
    const main = us(t.name, 'mainMs');
    const all = us(t.name, 'processMs');
    (raw[t.name] as Raw).cpu_us_per_request = { main_thread: main, process: all };
    ctx.table.add({
      figure: 'main-thread CPU per request, c=32 (reported)',
      target: t.name,
      value: Number.isFinite(main) ? main : null,
      unit: 'µs',
      ratio: main / bareMain,
      ratioOf: 'bare',
      note: `whole process ${round(all, 1)} µs; bare ÷ this ${round(bareMain / main, 3)}`,
    });
  }
}

/** Streams of 8 chunks at concurrency 1: time to the first body byte, added against direct. */
export async function streamTtfb(ctx: PhaseContext): Promise<Raw> {
  const per = await interleaved(ctx, n(ctx, 3000), ms(ctx, 25_000), STREAM_BODY);
  const stats = new Map<string, { p50: number; p99: number; n: number }>();
  for (const [name, all] of per) {
    const sorted = sortedNumbers(all.filter((x) => x.ttfbMs >= 0).map((x) => x.ttfbMs));
    stats.set(name, { p50: percentile(sorted, 50), p99: percentile(sorted, 99), n: sorted.length });
  }
  const d = stats.get('direct')!;
  addedVsDirect(
    ctx,
    stats,
    'stream added time to first byte p50, c=1',
    'p50',
    0.5,
    (s) => `; p99 added ${round(s.p99 - d.p99, 3)} ms`,
  );
  return Object.fromEntries(stats);
}

const CHUNKS = 20;
/** Streams of 20 chunks 10 ms apart: every chunk must arrive as its own read, as it does direct. */
export async function chunkDelivery(ctx: PhaseContext): Promise<Raw> {
  const headers = { 'x-bench-chunks': String(CHUNKS), 'x-bench-gap-ms': '10' };
  const per = await inRounds(ctx, 1, (t) =>
    load(ctx, t, { concurrency: 8, count: n(ctx, 32), maxMs: ms(ctx, 5000), body: STREAM_BODY, headers }),
  );
  const raw: Raw = {};
  for (const [name, runs] of per) {
    const ts = runs.flatMap((r) => r.timings);
    const gaps = sortedNumbers(ts.flatMap((x) => x.arrivals.slice(1).map((a, i) => a - x.arrivals[i]!)));
    raw[name] = {
      requests: ts.length,
      events_per_request: ts.reduce((s, x) => s + x.arrivals.length, 0) / Math.max(1, ts.length),
      requests_with_fewer_events: ts.filter((x) => x.arrivals.length < CHUNKS + 1).length,
      p99_gap_ms: percentile(gaps, 99),
    };
  }
  const d = raw.direct as { events_per_request: number };
  for (const t of others(ctx)) {
    const v = raw[t.name] as {
      events_per_request: number;
      requests_with_fewer_events: number;
      p99_gap_ms: number;
    };
    ctx.table.add({
      figure: `stream chunks: data events/request (${CHUNKS} chunks 10 ms apart)`,
      target: t.name,
      value: v.events_per_request,
      unit: '',
      goal: { op: '==', limit: d.events_per_request },
      ratio: v.events_per_request / d.events_per_request,
      ratioOf: 'direct',
      note: `${v.requests_with_fewer_events} requests coalesced; p99 gap ${round(v.p99_gap_ms, 2)} ms`,
    });
  }
  return raw;
}

const RSS_STREAMS = 10_000;
const WARMUP_STREAMS = 2_000;
/** RSS of the proxy process across many streamed requests (c=16), start vs end after settling. */
export async function rssOverStreams(ctx: PhaseContext, names: string[]): Promise<Raw> {
  const raw: Raw = {};
  for (const t of ctx.targets.filter((x) => names.includes(x.name) && x.pid !== undefined)) {
    const pid = t.pid!;
    const spec = {
      concurrency: 16,
      count: n(ctx, RSS_STREAMS / 2),
      maxMs: ms(ctx, 20_000),
      body: STREAM_BODY,
    };
    // Warm up with the same workload first: V8 sizes the heap (and the audit writer thread its
    // own) to the allocation rate of what the process runs, once. Growth is measured from there,
    // so a leak still shows (it grows with every stream) while that one-time step is not counted
    // as one; the note shows the RSS before the warm-up, so the step is visible.
    await sleep(500);
    const cold = rssMb(pid);
    await load(ctx, t, { ...spec, count: n(ctx, WARMUP_STREAMS), maxMs: ms(ctx, 8_000) });
    await sleep(500);
    const start = rssMb(pid);
    const sampler = rssSampler(pid, 100);
    const a = await load(ctx, t, spec);
    const middle = rssMb(pid);
    const b = await load(ctx, t, spec);
    await sleep(1000);
    const end = rssMb(pid);
    const max = sampler.stop();
    const streams = a.timings.length + b.timings.length;
    const errors = failed([...a.timings, ...b.timings]);
    raw[t.name] = {
      streams,
      errors,
      cold_mb: cold,
      start_mb: start,
      middle_mb: middle,
      end_mb: end,
      max_mb: max,
    };
    const enough = streams >= Math.min(4000, n(ctx, RSS_STREAMS));
    ctx.table.add({
      figure: 'RSS growth over streams (c=16), end vs start',
      target: t.name,
      value: ((end - start) / start) * 100,
      unit: '%',
      goal: { op: '<=', limit: 20 },
      verdict: enough ? undefined : 'FAIL',
      ratio: end / start,
      ratioOf: 'start RSS',
      note: `${streams} streams${errors ? ` (${errors} errors)` : ''} after ${n(ctx, WARMUP_STREAMS)} warm-up; ${round(cold, 1)} → warm ${round(start, 1)} → ${round(end, 1)} MiB, max ${round(max, 1)}${enough ? '' : '; too few streams'}`,
    });
  }
  return raw;
}

const SLOW_MB = 64;
/** One long stream read slowly (256 KiB, then a 10 ms stall): the proxy must not buffer it. */
export async function slowReader(ctx: PhaseContext, names: string[]): Promise<Raw> {
  const raw: Raw = {};
  for (const t of ctx.targets.filter((x) => names.includes(x.name) && x.pid !== undefined)) {
    await sleep(500);
    const start = rssMb(t.pid!);
    const sampler = rssSampler(t.pid!, 50);
    const mb = Math.max(4, Math.round(SLOW_MB * ctx.scale));
    const step = 256 * 1024;
    const onData = (res: http.IncomingMessage, c: Buffer, received: number) => {
      if (received % step < c.length) {
        res.pause();
        setTimeout(() => res.resume(), 10);
      }
    };
    const t0 = performance.now();
    const r = await load(ctx, t, {
      concurrency: 1,
      count: 1,
      maxMs: 60_000,
      body: STREAM_BODY,
      headers: { 'x-bench-long-mb': String(mb) },
      onData,
    });
    const max = sampler.stop();
    const timing = r.timings[0]!;
    raw[t.name] = {
      mib: timing.bytes / 1048576,
      seconds: (performance.now() - t0) / 1000,
      start_mb: start,
      max_mb: max,
    };
    ctx.table.add({
      figure: `RSS growth, slow reader of a ${mb} MiB stream, max vs start`,
      target: t.name,
      value: ((max - start) / start) * 100,
      unit: '%',
      goal: { op: '<=', limit: 20 },
      verdict: timing.error === undefined ? undefined : 'FAIL',
      ratio: max / start,
      ratioOf: 'start RSS',
      note: `${round(start, 1)} → max ${round(max, 1)} MiB; ${round(timing.bytes / 1048576, 1)} MiB read${timing.error ? `; error ${timing.error}` : ''}`,
    });
  }
  return raw;
}
