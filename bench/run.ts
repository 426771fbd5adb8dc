/**
 * `npm run bench` (DESIGN.md §11, issue 11; docs/benchmarks.md). Every server runs in its own
 * process, as a user has them, and this process only generates load:
 *   direct     client → fake upstream (bench/upstream.ts)                 baseline for latency
 *   bare       client → bare node:http pass-through (bench/bare-proxy.ts)  baseline for throughput
 *   tm-serve   client → `tokenmeter serve` with its defaults (SQLite audit, metrics, presets)
 *   tm-traces  the same, with traces exported over OTLP/HTTP JSON to bench/otlp-receiver.ts
 *   tm-noop    tokenmeter's proxy with a no-op meter (bench/tm-noop.ts): proxy cost vs metering cost
 * Verdicts are on the two `tokenmeter serve` rows; every row also carries its ratio to the baseline
 * measured in the same run, which is what to compare between runs on a shared machine.
 *
 * Environment: TOKENMETER_BENCH_CLI (default: this repository's bin/tokenmeter.js),
 * TOKENMETER_BENCH_SCALE (default 1; e.g. 0.1 for a quick smoke run), TOKENMETER_BENCH_COMPONENTS=0
 * to skip the component benches. Writes bench/results/latest.json and prints its path.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { auditRows, componentBenches, selfReportedOverhead, spansReceived } from './checks.js';
import { keepAliveChurn } from './churn.js';
import * as phase from './phases.js';
import type { PhaseContext, Target } from './phases.js';
import { cleanEnv, rssMb, spawnChild, type Child } from './processes.js';
import { Table } from './report.js';

const here = (rel: string) => fileURLToPath(new URL(rel, import.meta.url));
const CLI = resolve(process.env.TOKENMETER_BENCH_CLI ?? here('../bin/tokenmeter.js'));
const ROOT = dirname(dirname(CLI));
const SCALE = Number(process.env.TOKENMETER_BENCH_SCALE ?? '1');
const COMPONENTS = process.env.TOKENMETER_BENCH_COMPONENTS !== '0';

const script = (name: string, ...args: string[]) => ['--import', 'tsx', here(`./${name}`), ...args];

interface Processes {
  upstream: Child;
  receiver: Child;
  children: Child[];
  targets: Target[];
  skipped: Record<string, string>;
}

/** Starts every server; each one started is pushed to `children` at once, so a failure leaks none. */
async function startProcesses(dir: string, children: Child[]): Promise<Processes> {
  const keep = (c: Child) => (children.push(c), c);
  const upstream = keep(
    await spawnChild({ name: 'upstream', args: script('upstream.ts'), portFrom: 'stdout' }),
  );
  const receiver = keep(
    await spawnChild({ name: 'otlp-receiver', args: script('otlp-receiver.ts'), portFrom: 'stdout' }),
  );
  const serve = (name: string, env: Record<string, string>) =>
    spawnChild({
      name,
      args: [CLI, 'serve', '--upstream', upstream.base, '--port', '0', '--db', join(dir, `${name}.db`)],
      env: cleanEnv(env),
      cwd: dir, // no stray ./tokenmeter.yaml
      portFrom: 'stderr-listening',
    });
  const targets: Target[] = [{ name: 'direct', base: upstream.base, sent: 0 }];
  const skipped: Record<string, string> = {};
  const optional: Array<[string, () => Promise<Child>]> = [
    [
      'bare',
      () =>
        spawnChild({
          name: 'bare',
          args: script('bare-proxy.ts', '--upstream', upstream.base),
          portFrom: 'stdout',
        }),
    ],
    ['tm-serve', () => serve('tm-serve', {})],
    [
      'tm-traces',
      () =>
        // Only the endpoint, as a user sets it: the protocol is OTLP's default, http/protobuf.
        serve('tm-traces', { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.base }),
    ],
    [
      'tm-noop',
      () =>
        spawnChild({
          name: 'tm-noop',
          args: script('tm-noop.ts', '--upstream', upstream.base),
          env: cleanEnv({ TOKENMETER_BENCH_ROOT: ROOT }),
          portFrom: 'stdout',
        }),
    ],
  ];
  for (const [name, start] of optional) {
    try {
      const c = keep(await start());
      targets.push({ name, base: c.base, pid: c.pid, sent: 0 });
    } catch (err) {
      skipped[name] = (err as Error).message;
    }
  }
  return { upstream, receiver, children, targets, skipped };
}

async function measure(ctx: PhaseContext, procs: Processes, dir: string): Promise<Record<string, unknown>> {
  const raw: Record<string, unknown> = {};
  const log = (s: string) =>
    process.stderr.write(`bench: ${s} (${Math.round(performance.now() / 1000)} s)\n`);
  log('warm-up');
  await phase.warmUp(ctx);
  log('latency c=1');
  raw.latency_c1_ms = await phase.latencyC1(ctx);
  log('throughput c=32');
  raw.throughput_c32 = await phase.throughputC32(ctx);
  log('stream time to first byte');
  raw.stream_ttfb_ms = await phase.streamTtfb(ctx);
  log('chunk delivery');
  raw.chunk_delivery = await phase.chunkDelivery(ctx);
  log('RSS over streams');
  raw.rss_streams = await phase.rssOverStreams(ctx, ['tm-serve', 'tm-traces']);
  log('slow reader');
  raw.rss_slow_reader = await phase.slowReader(ctx, ['tm-serve', 'tm-traces', 'bare']);
  log('keep-alive churn');
  raw.keepalive_churn = await keepAliveChurn(ctx, procs.upstream.base);
  raw.self_reported_overhead = {};
  for (const t of ctx.targets.filter((x) => x.name === 'tm-serve' || x.name === 'tm-traces'))
    (raw.self_reported_overhead as Record<string, unknown>)[t.name] = await selfReportedOverhead(
      ctx.table,
      t,
    );
  log('stopping tokenmeter (SIGTERM drains and flushes)');
  raw.after_stop = await afterStop(ctx, procs, dir);
  return raw;
}

async function afterStop(ctx: PhaseContext, procs: Processes, dir: string): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  for (const t of ctx.targets.filter((x) => x.name.startsWith('tm-'))) {
    const child = procs.children.find((c) => c.name === t.name)!;
    out[`${t.name}_exit`] = await child.stop(15_000);
    if (t.name !== 'tm-noop') out[`${t.name}_audit`] = auditRows(ctx.table, t, join(dir, `${t.name}.db`));
    if (t.name === 'tm-traces') out.spans = await spansReceived(ctx.table, t, procs.receiver.base);
  }
  return out;
}

function environment(): Record<string, unknown> {
  return {
    node: process.version,
    cpus: os.cpus().length,
    loadavg_at_start: os.loadavg().map((x) => Math.round(x * 100) / 100),
    cli: CLI,
    scale: SCALE,
  };
}

async function main(): Promise<void> {
  const results: Record<string, unknown> = { started: new Date().toISOString(), ...environment() };
  const dir = mkdtempSync(join(os.tmpdir(), 'tm-bench-'));
  const table = new Table();
  const children: Child[] = [];
  let procs: Processes | undefined;
  try {
    procs = await startProcesses(dir, children);
    for (const required of ['bare', 'tm-serve'])
      if (!procs.targets.some((t) => t.name === required))
        throw new Error(`${required} did not start: ${procs.skipped[required]}`);
    results.skipped_rows = procs.skipped;
    results.processes = Object.fromEntries(
      procs.children.map((c) => [c.name, { pid: c.pid, rss_mb_at_start: rssMb(c.pid) }]),
    );
    const ctx: PhaseContext = { targets: procs.targets, table, scale: SCALE, settleMs: 150 };
    Object.assign(results, await measure(ctx, procs, dir));
    results.requests_sent = Object.fromEntries(procs.targets.map((t) => [t.name, t.sent]));
  } finally {
    for (const c of children) await c.stop(5000);
    rmSync(dir, { recursive: true, force: true });
  }
  if (COMPONENTS) results.components = await componentBenches(table);
  results.loadavg_at_end = os.loadavg().map((x) => Math.round(x * 100) / 100);
  results.finished = new Date().toISOString();
  results.rows = table.rows;
  const failures = table.failures();
  results.verdict = failures.length === 0 ? 'PASS' : 'FAIL';

  const out = here('./results/latest.json');
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, JSON.stringify(results, null, 2) + '\n');
  process.stdout.write('\n' + table.format());
  for (const [name, why] of Object.entries(procs.skipped)) process.stdout.write(`skipped ${name}: ${why}\n`);
  process.stdout.write(
    `\nverdict: ${failures.length === 0 ? 'every target met' : `${failures.length} FAIL (${failures.map((f) => `${f.figure} / ${f.target}`).join('; ')})`}\n`,
  );
  process.stdout.write(
    `load average ${String(results.loadavg_at_start)} → ${String(results.loadavg_at_end)} on ${os.cpus().length} CPUs\n`,
  );
  process.stdout.write(`written: ${out}\n`);
}

await main();
