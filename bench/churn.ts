/**
 * Keep-alive churn (issue 11, "never a double generation"; docs/benchmarks.md): POSTs spaced
 * around the upstream's silent idle-close time, with every 20th request that arrives on a reused
 * upstream connection answered by a TCP reset after its body was read (see bench/upstream.ts).
 * The client counts what it sent and what failed; the upstream counts what it received. A proxy
 * that re-sends a POST after the reset makes the upstream receive more than was sent: FAIL.
 */
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { CHAT_BODY } from './load.js';
import type { PhaseContext, Target } from './phases.js';
import { runLoad, sleep } from './load.js';

const IDLE_CLOSE_MS = 100;
const SPACING_MS: [number, number] = [50, 150];
const RESET_EVERY = 20;
const POSTS = 200;

interface UpstreamRunStats {
  received: number;
  resets: number;
}

function getJson<T>(url: string): Promise<T> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent: false }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.on('end', () => {
          try {
            resolve(JSON.parse(Buffer.concat(parts).toString('utf8')) as T);
          } catch (err) {
            reject(err as Error);
          }
        });
      })
      .on('error', reject);
  });
}

async function churnOne(ctx: PhaseContext, t: Target, upstreamBase: string) {
  const run = randomUUID();
  const headers = {
    'x-bench-run': run,
    'x-bench-idle-close-ms': String(IDLE_CLOSE_MS),
    'x-bench-reset-every': String(RESET_EVERY),
  };
  const count = Math.max(RESET_EVERY * 2, Math.round(POSTS * ctx.scale));
  const r = await runLoad({
    base: t.base,
    body: CHAT_BODY,
    headers,
    concurrency: 8,
    count,
    maxMs: 15_000,
    spacingMs: SPACING_MS,
  });
  t.sent += r.timings.length;
  await sleep(300); // a re-sent POST may still be on its way
  const up = await getJson<UpstreamRunStats>(`${upstreamBase}/-/bench/stats?run=${run}`);
  const errors = r.timings.filter((x) => x.status !== 200 || x.error !== undefined);
  const kinds: Record<string, number> = {};
  for (const e of errors)
    kinds[e.error ?? `HTTP ${e.status}`] = (kinds[e.error ?? `HTTP ${e.status}`] ?? 0) + 1;
  return { sent: r.timings.length, errors: errors.length, error_kinds: kinds, ...up };
}

export async function keepAliveChurn(
  ctx: PhaseContext,
  upstreamBase: string,
): Promise<Record<string, unknown>> {
  const raw: Record<string, Awaited<ReturnType<typeof churnOne>>> = {};
  for (const t of ctx.targets) raw[t.name] = await churnOne(ctx, t, upstreamBase);
  const bareRate = raw.bare ? raw.bare.errors / raw.bare.sent : NaN;
  for (const t of ctx.targets) {
    const v = raw[t.name]!;
    ctx.table.add({
      figure: 'churn: POSTs received by upstream − sent (re-sent POSTs)',
      target: t.name,
      value: v.received - v.sent,
      unit: '',
      goal: { op: '<=', limit: 0 },
      // Judged on every proxy row: a re-sent POST is a double generation whoever sends it.
      verdict:
        v.received > v.sent ? 'FAIL' : t.name === 'tm-serve' || t.name === 'tm-traces' ? 'PASS' : 'info',
      note: `sent ${v.sent}, received ${v.received}, upstream resets ${v.resets}`,
    });
  }
  for (const t of ctx.targets) {
    const v = raw[t.name]!;
    const rate = v.errors / v.sent;
    ctx.table.add({
      figure: 'churn: client error rate',
      target: t.name,
      value: rate * 100,
      unit: '%',
      verdict: 'info',
      ratio: t.name === 'direct' || t.name === 'bare' || bareRate === 0 ? undefined : rate / bareRate,
      ratioOf: 'bare error rate',
      note: `${v.errors}/${v.sent} failed, ${v.resets} deliberate resets; idle close ${IDLE_CLOSE_MS} ms: ${
        Object.entries(v.error_kinds)
          .map(([k, c]) => `${k} ×${c}`)
          .join(', ') || 'none'
      }`,
    });
  }
  return raw;
}
