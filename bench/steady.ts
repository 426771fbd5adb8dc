/**
 * Steady-state throughput A/B (docs/benchmarks.md, "Steady state"): two servers up at once, each
 * warmed with `--warm` seconds of c=32 load, then `--rounds` alternating rounds of `--secs` seconds
 * each (the order flips every round, so both see the same drifts of a shared machine). Prints each
 * round's req/s and the median of the per-round ratios B/A, the figure to quote. Not part of
 * `npm run bench`: its rounds are longer than the bench's and its targets are two trees or a tree
 * and the bare proxy, to judge one change.
 *
 *   node --import tsx bench/steady.ts --a bare --b . [--rounds 8] [--secs 3] [--warm 10]
 *        [--a-args=--no-db] [--b-args=...] [--a-env=K=V,K=V] [--b-env=...] [--c1 N]
 *
 * `--c1 N` measures latency instead: after the warm-up, N sequential requests to each side, one to
 * A and one to B in turn (the order flipping every turn), and prints each side's p50 and p99 of
 * the whole request's time, the way the bench's concurrency-1 phase interleaves its targets.
 *
 * A target is `bare` (bench/bare-proxy.ts) or the root of a built tokenmeter tree (its
 * bin/tokenmeter.js serve, with its defaults: SQLite audit log and metrics, OpenTelemetry off).
 * `--a-args`/`--b-args` add serve options (space-separated) to one side, e.g. `--no-db`, to
 * price one part of the metering against the rest in the same sitting. `--a-env`/`--b-env` add
 * environment variables; `RECEIVER` in a value starts bench/otlp-receiver.ts and stands for its
 * base URL (e.g. `--b-env=OTEL_EXPORTER_OTLP_ENDPOINT=RECEIVER,OTEL_EXPORTER_OTLP_PROTOCOL=http/json`).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import http from 'node:http';
import { CHAT_BODY, percentile, runLoad, sortedNumbers, timedRequest } from './load.js';
import { cleanEnv, spawnChild, type Child } from './processes.js';

const { values: opt } = parseArgs({
  options: {
    a: { type: 'string', default: 'bare' },
    b: { type: 'string', default: '.' },
    rounds: { type: 'string', default: '8' },
    secs: { type: 'string', default: '3' },
    warm: { type: 'string', default: '10' },
    'a-args': { type: 'string', default: '' },
    'b-args': { type: 'string', default: '' },
    'a-env': { type: 'string', default: '' },
    'b-env': { type: 'string', default: '' },
    c1: { type: 'string', default: '0' },
  },
});
const here = (name: string) => new URL(`./${name}`, import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'tm-steady-'));
const children: Child[] = [];

/** `K=V,K=V` → env entries; `RECEIVER` in a value becomes the OTLP receiver's base URL. */
function envOf(spec: string, receiver: string | undefined): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const kv of spec.split(',').filter(Boolean)) {
    const at = kv.indexOf('=');
    env[kv.slice(0, at)] = kv.slice(at + 1).replace('RECEIVER', receiver ?? 'RECEIVER');
  }
  return env;
}

async function start(
  target: string,
  name: string,
  upstream: string,
  extra: string,
  env: NodeJS.ProcessEnv,
): Promise<Child> {
  const child =
    target === 'bare'
      ? await spawnChild({
          name,
          args: ['--import', 'tsx', here('bare-proxy.ts'), '--upstream', upstream],
          portFrom: 'stdout',
        })
      : await spawnChild({
          name,
          args: [
            resolve(target, 'bin/tokenmeter.js'),
            'serve',
            '--upstream',
            `${upstream}/v1`,
            '--port',
            '0',
            '--db',
            join(dir, `${name}.db`),
            ...extra.split(' ').filter(Boolean),
          ],
          env: cleanEnv(env),
          cwd: dir,
          portFrom: 'stderr-listening',
        });
  children.push(child);
  return child;
}

const rps = async (c: Child, secs: number): Promise<number> => {
  const r = await runLoad({
    base: c.base,
    body: CHAT_BODY,
    concurrency: 32,
    count: Infinity,
    maxMs: secs * 1000,
  });
  return (r.timings.filter((t) => t.status === 200).length / r.elapsedMs) * 1000;
};

/** `--rounds` alternating rounds of c=32 load; each round's req/s and the median B/A. */
async function throughputAB(a: Child, b: Child, secs: number): Promise<void> {
  const ra: number[] = [];
  const rb: number[] = [];
  for (let i = 0; i < Number(opt.rounds); i++) {
    if (i % 2 === 0) {
      ra.push(await rps(a, secs));
      rb.push(await rps(b, secs));
    } else {
      rb.push(await rps(b, secs));
      ra.push(await rps(a, secs));
    }
  }
  const ratios = ra.map((x, i) => rb[i]! / x);
  const fmt = (xs: number[]) => xs.map((x) => Math.round(x)).join(' ');
  console.log(`A ${opt.a} ${opt['a-args']}: ${fmt(ra)} req/s (median ${Math.round(median(ra))})`);
  console.log(`B ${opt.b} ${opt['b-args']}: ${fmt(rb)} req/s (median ${Math.round(median(rb))})`);
  console.log(
    `B/A per round: ${ratios.map((r) => r.toFixed(3)).join(' ')}; median ${median(ratios).toFixed(3)}`,
  );
}

/** N sequential requests to each of a and b in turn; p50/p99 of each side's request time. */
async function latencyAB(a: Child, b: Child, n: number): Promise<void> {
  const agents = [a, b].map(() => new http.Agent({ keepAlive: true, maxSockets: 1 }));
  const ms: number[][] = [[], []];
  for (let i = 0; i < n; i++) {
    for (const side of i % 2 === 0 ? [0, 1] : [1, 0]) {
      const t = await timedRequest(agents[side]!, { base: [a, b][side]!.base, body: CHAT_BODY });
      if (t.status === 200) ms[side]!.push(t.totalMs);
    }
  }
  for (const agent of agents) agent.destroy();
  ms.forEach((xs, side) => {
    const sorted = sortedNumbers(xs);
    const f = (p: number) => percentile(sorted, p).toFixed(3);
    console.log(
      `${side === 0 ? 'A' : 'B'} ${side === 0 ? opt.a : opt.b}: n=${xs.length} p50 ${f(50)} ms, p99 ${f(99)} ms`,
    );
  });
}

const median = (xs: number[]): number => [...xs].sort((x, y) => x - y)[Math.floor((xs.length - 1) / 2)]!;

try {
  const upstream = await spawnChild({
    name: 'upstream',
    args: ['--import', 'tsx', here('upstream.ts')],
    portFrom: 'stdout',
  });
  children.push(upstream);
  let receiver: Child | undefined;
  if (`${opt['a-env']}${opt['b-env']}`.includes('RECEIVER')) {
    receiver = await spawnChild({
      name: 'receiver',
      args: ['--import', 'tsx', here('otlp-receiver.ts')],
      portFrom: 'stdout',
    });
    children.push(receiver);
  }
  const a = await start(opt.a, 'a', upstream.base, opt['a-args'], envOf(opt['a-env'], receiver?.base));
  const b = await start(opt.b, 'b', upstream.base, opt['b-args'], envOf(opt['b-env'], receiver?.base));
  const secs = Number(opt.secs);
  await rps(a, Number(opt.warm));
  await rps(b, Number(opt.warm));
  if (Number(opt.c1) > 0) await latencyAB(a, b, Number(opt.c1));
  else await throughputAB(a, b, secs);
  if (receiver) console.log(`OTLP receiver: ${await (await fetch(`${receiver.base}/stats`)).text()}`);
} finally {
  await Promise.all(children.map((c) => c.stop(2000)));
  rmSync(dir, { recursive: true, force: true });
}
