/**
 * Issue 13 "Done when", through the real `tokenmeter serve` child process and real OpenAI SDK
 * traffic: the fake gateway bills ×1.25 of the user's price table, answers some requests without
 * usage and bills an aborted one; serve polls its seed-004 `/v1/balance` (billing: balance) into
 * billing_snapshots and the billed/drift metrics; `tokenmeter reconcile` then names the drift, its
 * size and its causes. Also: a trusted upstream-reported cost keeps our computed cost beside it.
 */
import OpenAI from 'openai';
import { openSqlite } from '../../src/sinks/audit/sqlite.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FakeGateway } from '../fake-gateway/index.js';
import {
  closeWorld,
  runCli,
  samples,
  serveConfig,
  startWorld,
  waitFor,
  waitForRows,
  type ServeProcess,
  type TempDir,
} from './helpers.js';

const KEY = 'sk-e2e-reconcile-billing';
const PRICES = `currency: CNY
unit: 1M
prices:
  - { model: gpt-e2e, input: 2, output: 8 }
`;
// 100,000 × 2 + 20,000 × 8 = 360,000 per 1M → 0.36 CNY metered; billed ×1.25 = 0.45 CNY.
const BIG_USAGE = { prompt_tokens: 100_000, completion_tokens: 20_000, total_tokens: 120_000 };
const messages = [{ role: 'user' as const, content: 'reconcile me please' }];

let gateway: FakeGateway;
let serve: ServeProcess;
let tmp: TempDir;
let dbPath: string;

beforeAll(async () => {
  ({ gateway, tmp, dbPath } = await startWorld('tm-e2e-reconcile-billing-', { 'prices.yaml': PRICES }));
  gateway.billing.setMultiplier('1.25');
  serve = await serveConfig(
    tmp.dir,
    `db: audit.db
presets: false
prices: [prices.yaml]
upstreams:
  - name: fake
    url: "${gateway.url}/v1"
    billing: { source: balance, api_key: "${KEY}", interval: 1s, window: 1h }
  - { name: trusted, url: "${gateway.url}/v1", prefix: /trust, trust_reported_cost: true }
`,
  );
}, 60_000);

afterAll(async () => {
  if (serve !== undefined) expect(await serve.stop()).toBe(0);
  await closeWorld({ gateway, tmp });
});

function snapshotsDailyUsed(): bigint[] {
  const db = openSqlite(dbPath, { readonly: true, fileMustExist: true });
  try {
    return (
      db
        .prepare(`SELECT daily_used_nanos FROM billing_snapshots WHERE upstream = 'fake' ORDER BY ts, id`)
        .safeIntegers()
        .all() as Array<{ daily_used_nanos: bigint }>
    ).map((r) => r.daily_used_nanos);
  } finally {
    db.close();
  }
}

async function metricsText(): Promise<string> {
  return (await fetch(`${serve.base}/metrics`)).text();
}

describe('billed vs metered through tokenmeter serve', () => {
  it('a ×1.25 gateway with unreported usage and a billed abort: reconcile names drift, size, causes', async () => {
    // The first poll (the baseline) happens at start: seed 004's example, 3.25 CNY used today.
    await waitFor('the first billing snapshot', () => (snapshotsDailyUsed().length > 0 ? true : undefined));
    expect(snapshotsDailyUsed()[0]).toBe(3_250_000_000n);

    const openai = new OpenAI({ baseURL: `${serve.base}/v1`, apiKey: KEY, maxRetries: 0 });
    const big = { headers: { 'x-fake-usage': JSON.stringify(BIG_USAGE) } };
    for (let i = 0; i < 3; i++) await openai.chat.completions.create({ model: 'gpt-e2e', messages }, big);
    for (let i = 0; i < 3; i++) {
      const stream = await openai.chat.completions.create({ model: 'gpt-e2e', messages, stream: true }, big);
      for await (const chunk of stream) void chunk;
    }
    // Two answered without usage (body and stream): billed by the gateway, metered from estimates.
    const noUsage = { headers: { 'x-fake-scenario': 'no-usage' } };
    const plain = await openai.chat.completions.create({ model: 'gpt-e2e', messages }, noUsage);
    expect(plain.usage).toBeUndefined();
    const s = await openai.chat.completions.create({ model: 'gpt-e2e', messages, stream: true }, noUsage);
    for await (const chunk of s) void chunk;
    // One aborted by the client after its first chunk: never answered in full, billed anyway.
    const slow = await openai.chat.completions.create(
      { model: 'gpt-e2e', messages, stream: true },
      { headers: { 'x-fake-scenario': 'slow-stream', 'x-fake-delay-ms': '300', 'x-fake-chunks': '20' } },
    );
    for await (const chunk of slow) {
      void chunk;
      break; // ends the SDK stream: the connection is aborted
    }

    await waitFor('the fake gateway to bill all 9 requests', () =>
      gateway.billing.charges.length === 9 ? true : undefined,
    );
    expect(gateway.billing.charges.filter((c) => c.aborted)).toHaveLength(1);
    const charged = gateway.billing.chargedNanos(KEY);
    const rows = await waitForRows(dbPath, 9);
    expect(rows.filter((r) => r.usage_source === 'estimated' && r.error_type === null)).toHaveLength(2);
    expect(rows.filter((r) => r.error_type === 'client_abort')).toHaveLength(1);

    // A poll after the traffic: daily_used grew by exactly what the fake charged.
    await waitFor(
      'a billing snapshot with the traffic billed',
      () => (snapshotsDailyUsed().at(-1) === 3_250_000_000n + charged ? true : undefined),
      15_000,
    );

    // Metrics: the billed counter and the drift gauge, per upstream and currency (no key label).
    const text = await waitFor(
      'billed and drift metrics',
      async () => {
        const t = await metricsText();
        const billed = samples(t, 'tokenmeter_billed_total', { upstream: 'fake', currency: 'CNY' })[0];
        const drift = samples(t, 'tokenmeter_reconcile_drift_ratio', {
          upstream: 'fake',
          currency: 'CNY',
        })[0];
        // The poller sets the billed counter before it recomputes the drift: wait for both.
        return billed &&
          drift &&
          Math.abs(billed.value - Number(charged) / 1e9) < 1e-9 &&
          drift.value > 1.23 &&
          drift.value < 1.27
          ? t
          : undefined;
      },
      15_000,
    );
    const drift = samples(text, 'tokenmeter_reconcile_drift_ratio', { upstream: 'fake', currency: 'CNY' });
    expect(drift).toHaveLength(1);
    expect(drift[0]!.value).toBeGreaterThan(1.23);
    expect(drift[0]!.value).toBeLessThan(1.27);
    expect(Object.keys(drift[0]!.labels).sort()).toEqual(['currency', 'upstream']);

    const out = await runCli(['reconcile', '--config', 'tokenmeter.yaml', '--since', '1h'], { cwd: tmp.dir });
    expect(out.stderr).toBe('');
    expect(out.code).toBe(0);
    // The table names upstream, key fingerprint, source and drift…
    expect(out.stdout).toMatch(
      /fake\s+[0-9a-f]{12}\s+balance\s+CNY\s+2\.7\d*\s+2\.16\d*\s+\+2[45]\.\d%\s+9\s+2\s+0\s+0\s+1/,
    );
    // … and the explanation: its size, the causes, then the fitted multiplier.
    expect(out.stdout).toMatch(/billed 2\.7\d* CNY vs metered 2\.16\d* CNY: \+0\.5\d* CNY \(\+2[45]\.\d %/);
    expect(out.stdout).toContain('2 requests answered without usage: metered');
    expect(out.stdout).toContain(
      '1 request billed but never answered (timeouts, client aborts, network errors)',
    );
    expect(out.stdout).toContain(
      'the gateway bills ×1.25 of your table: set `multiplier: 1.25` on upstream fake',
    );

    const json = await runCli(
      ['reconcile', '--config', 'tokenmeter.yaml', '--since', '1h', '--format', 'json'],
      {
        cwd: tmp.dir,
      },
    );
    const doc = JSON.parse(json.stdout) as { lines: Array<Record<string, unknown>> };
    const line = doc.lines.find((l) => l.upstream === 'fake' && l.source === 'balance')!;
    expect(line).toMatchObject({
      billed_nanos: charged.toString(),
      fitted_multiplier: '1.25',
      suggested_multiplier: '1.25',
      drifting: true,
      unanswered: { requests: 1 },
      estimated: { requests: 2 },
    });
  }, 60_000);

  it('a trusted upstream-reported cost keeps our computed cost on the same record', async () => {
    const openai = new OpenAI({ baseURL: `${serve.base}/trust/v1`, apiKey: KEY, maxRetries: 0 });
    const before = (await waitForRows(dbPath, 9)).length;
    await openai.chat.completions.create(
      { model: 'gpt-e2e', messages },
      { headers: { 'x-fake-scenario': 'cost', 'x-fake-usage': JSON.stringify(BIG_USAGE) } },
    );
    const row = (await waitForRows(dbPath, before + 1)).find((r) => r.upstream === 'trusted')!;
    // The gateway's figure is the cost (trusted); ours (0.36 CNY from the table) stays beside it.
    expect(row).toMatchObject({
      cost_source: 'upstream',
      computed_cost_nanos: 360_000_000,
      computed_currency: 'CNY',
    });
    expect(row.cost_nanos).toBe(row.upstream_reported_cost_nanos);
    expect(row.cost_nanos).not.toBe(360_000_000);
  });
});
