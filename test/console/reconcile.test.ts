/**
 * The console's reconcile page API, `GET /-/api/reconcile` (issue 13, docs/reconcile.md), against a
 * real `tokenmeter serve` polling the fake gateway's balance endpoint: it answers what
 * `tokenmeter reconcile --format json` computes for the same window.
 */
import Database from 'better-sqlite3';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reconciliationToJson } from '../../src/reconcile/format.js';
import { buildReconciliation } from '../../src/reconcile/reconcile.js';
import { waitFor } from '../e2e/helpers.js';
import { getJson, startConsoleWorld, type ConsoleWorld } from './world.js';

const KEY = 'sk-console-test-key';
type Answer = { audit: boolean; from: string; to: string; lines: Array<Record<string, unknown>> };

let world: ConsoleWorld;
beforeAll(async () => {
  world = await startConsoleWorld(
    [
      'upstreams:',
      '  - name: default',
      '    url: http://replaced-by-the-upstream-flag.invalid/v1',
      `    billing: { source: balance, api_key: ${KEY}, interval: 1s }`,
      '',
    ].join('\n'),
  );
  world.gateway.billing.setMultiplier('2');
});
afterAll(async () => {
  await world?.stop();
});

describe('GET /-/api/reconcile', () => {
  it('billed vs metered per key, equal to `tokenmeter reconcile` for the same window', async () => {
    // The first poll (at start) is the baseline: traffic after it is in the window.
    await waitFor('the first poll', async () => {
      const r = await getJson<Answer>(world, '/-/api/reconcile?since=1h');
      return r.body.lines.some((l) => l.source === 'balance') ? true : undefined;
    });
    const openai = new OpenAI({ apiKey: KEY, baseURL: `${world.base}/v1`, maxRetries: 0 });
    await openai.chat.completions.create(
      { model: 'deepseek-chat', messages: [{ role: 'user', content: 'bill me twice' }] },
      { headers: { 'x-fake-usage': JSON.stringify({ prompt_tokens: 1_000_000, completion_tokens: 0 }) } },
    );
    const charged = world.gateway.billing.chargedNanos(KEY);
    expect(charged).toBe(4_000_000_000n); // 1M × 2 CNY × 2
    // The audit row is written off the request path (a writer thread), and the balance poll runs on
    // its own 1 s clock: either side can land first, so wait for both, the charge billed and the
    // request metered.
    const answer = await waitFor(
      'a reconcile line with the charge billed and the request metered',
      async () => {
        const r = await getJson<Answer>(world, '/-/api/reconcile?since=1h');
        expect(r.status).toBe(200);
        const line = r.body.lines.find((l) => l.source === 'balance');
        return line?.billed_nanos === charged.toString() && line.requests === 1 ? r.body : undefined;
      },
      15_000,
    );
    const line = answer.lines.find((l) => l.source === 'balance')!;
    expect(line).toMatchObject({ upstream: 'default', currency: 'CNY', ratio: '2', fitted_multiplier: '2' });

    const db = new Database(world.dbPath, { readonly: true, fileMustExist: true });
    try {
      // A poll stamps its snapshot when it starts and commits it after the gateway answers: one
      // begun before `to` may land after the API answered. Once a later poll's snapshot is in,
      // the window's snapshots are final and both sides read the same ones.
      const toMs = Date.parse(answer.to);
      await waitFor('a balance snapshot after the window', () =>
        db.prepare('SELECT 1 FROM billing_snapshots WHERE ts > ? LIMIT 1').get(toMs) ? true : undefined,
      );
      const cli = reconciliationToJson(
        buildReconciliation(db, { fromMs: Date.parse(answer.from), toMs: Date.parse(answer.to) }),
      );
      expect(answer).toEqual({ audit: true, ...cli });
    } finally {
      db.close();
    }
  });

  it('a since before any date is a 400 naming it, not a 500', async () => {
    for (const path of ['/-/api/reconcile?since=999999999d', '/-/api/prices?since=99999999999d']) {
      const r = await getJson<{ error: string }>(world, path);
      expect(r.status, path).toBe(400);
      expect(r.body.error).toMatch(/since: .* before the earliest date/);
    }
  });

  it('rejects an unknown parameter', async () => {
    const r = await getJson<{ error: string }>(world, '/-/api/reconcile?upstreem=x');
    expect(r.status).toBe(400);
    expect(r.body.error).toMatch(/unknown parameter "upstreem"/);
  });
});
