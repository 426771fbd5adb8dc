/**
 * Issue 13 "Done when", end to end through a real `tokenmeter serve` child process and the fake
 * gateway: model aliases (normalized, alias, snapshot) and an input-length tier land on the audit
 * row with the entry, the match kind and the exact cost; then `tokenmeter reprice` as a child
 * process against the DB serve is writing: --dry-run changes nothing, a real run updates rows and
 * keeps the originals in repricing_history, a second run changes nothing.
 */
import Anthropic from '@anthropic-ai/sdk';
import { openSqlite } from '../../src/sinks/audit/sqlite.js';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FakeGateway } from '../fake-gateway/index.js';
import {
  closeWorld,
  rowByRequestId,
  runCli,
  serveConfig,
  startWorld,
  waitForRows,
  type Row,
  type ServeProcess,
  type TempDir,
} from './helpers.js';

const KEY = 'sk-e2e-reprice-secret';

const A = `currency: USD
unit: 1M
prices:
  - { model: gpt-4o-mini, input: 0.15, output: 0.6 }
  - { model: gpt-4o, input: 2.5, output: 10, aliases: [chatgpt-4o-latest] }
  - model: claude-sonnet-4-5
    input: 3
    output: 15
    cache_read: 0.3
    tiers:
      - { above_input_tokens: 200000, input: 6, output: 22.5, cache_read: 0.6 }
`;
// Today's table: gpt-4o-mini input doubled; the rest unchanged.
const B = A.replace('{ model: gpt-4o-mini, input: 0.15', '{ model: gpt-4o-mini, input: 0.3');

const OPENAI_USAGE = { prompt_tokens: 1000, completion_tokens: 500, total_tokens: 1500 };
const LONG_USAGE = { input_tokens: 150_000, cache_read_input_tokens: 60_000, output_tokens: 1_000 };

let gateway: FakeGateway;
let serve: ServeProcess;
let tmp: TempDir;
let dbPath: string;

beforeAll(async () => {
  ({ gateway, tmp, dbPath } = await startWorld('tm-e2e-reprice-', { 'a.yaml': A, 'b.yaml': B }));
  serve = await serveConfig(
    tmp.dir,
    `db: audit.db
presets: false
prices: [a.yaml]
upstreams:
  - { name: fake, url: "${gateway.url}/v1" }
`,
  );
}, 60_000);

afterAll(async () => {
  if (serve !== undefined) expect(await serve.stop()).toBe(0);
  await closeWorld({ gateway, tmp });
});

async function one(send: () => Promise<unknown>): Promise<Row> {
  const before = gateway.requests.length;
  await send();
  return rowByRequestId(await waitForRows(dbPath, before + 1), `req-${before + 1}`);
}

const priced = (row: Row) => ({
  request_model: row.request_model,
  cost_nanos: row.cost_nanos,
  currency: row.currency,
  price_id: row.price_id,
  price_match: row.price_match,
});

const rows: Row[] = [];

describe('aliases and tiers through tokenmeter serve', () => {
  it('openai/gpt-4o-mini, GPT-4O-MINI, a dated snapshot and an alias: entry, match kind, exact cost', async () => {
    const openai = new OpenAI({ baseURL: `${serve.base}/v1`, apiKey: KEY, maxRetries: 0 });
    const send = (model: string) =>
      one(() =>
        openai.chat.completions.create(
          { model, messages: [{ role: 'user', content: 'hi' }] },
          { headers: { 'x-fake-usage': JSON.stringify(OPENAI_USAGE) } },
        ),
      );
    // gpt-4o-mini: 1,000 × 0.15 + 500 × 0.6 = 450 per 1M → $0.00045; gpt-4o: 2,500 + 5,000 = 7,500 per 1M.
    const mini = { cost_nanos: 450_000, currency: 'USD', price_id: 'a.yaml#gpt-4o-mini@always' };
    const prefixed = await send('openai/gpt-4o-mini');
    expect(priced(prefixed)).toEqual({
      request_model: 'openai/gpt-4o-mini',
      ...mini,
      price_match: 'normalized',
    });
    const upper = await send('GPT-4O-MINI');
    expect(priced(upper)).toEqual({ request_model: 'GPT-4O-MINI', ...mini, price_match: 'normalized' });
    const dated = await send('gpt-4o-mini-2024-07-18');
    expect(priced(dated)).toEqual({
      request_model: 'gpt-4o-mini-2024-07-18',
      ...mini,
      price_match: 'snapshot',
    });
    const alias = await send('chatgpt-4o-latest');
    expect(priced(alias)).toEqual({
      request_model: 'chatgpt-4o-latest',
      cost_nanos: 7_500_000,
      currency: 'USD',
      price_id: 'a.yaml#gpt-4o@always',
      price_match: 'alias',
    });
    rows.push(prefixed, upper, dated, alias);
  });

  it('a 210K-token prompt is priced whole at the > 200K tier', async () => {
    const anthropic = new Anthropic({ baseURL: serve.base, apiKey: KEY, maxRetries: 0 });
    const row = await one(() =>
      anthropic.messages.create(
        {
          model: 'claude-sonnet-4-5-20250929',
          max_tokens: 1000,
          messages: [{ role: 'user', content: 'long' }],
        },
        { headers: { 'x-fake-usage': JSON.stringify(LONG_USAGE) } },
      ),
    );
    // 150,000 × 6 + 60,000 × 0.6 + 1,000 × 22.5 = 958,500 per 1M → $0.9585
    expect(priced(row)).toEqual({
      request_model: 'claude-sonnet-4-5-20250929',
      cost_nanos: 958_500_000,
      currency: 'USD',
      price_id: 'a.yaml#claude-sonnet-4-5@always>200000',
      price_match: 'snapshot',
    });
    expect([row.input_tokens, row.cache_read_tokens, row.output_tokens]).toEqual([150_000, 60_000, 1_000]);
    rows.push(row);
  });
});

describe('tokenmeter reprice against the DB serve is writing', () => {
  const costs = () => {
    const db = openSqlite(dbPath, { readonly: true });
    try {
      return db.prepare('SELECT id, cost_nanos, price_id FROM requests ORDER BY id').all();
    } finally {
      db.close();
    }
  };
  const reprice = (...extra: string[]) =>
    runCli(['reprice', '--since', '1d', '--prices', 'b.yaml', '--config', 'tokenmeter.yaml', ...extra], {
      cwd: tmp.dir,
    });

  it('--dry-run prints the difference per currency and changes nothing', async () => {
    expect(rows).toHaveLength(5);
    const before = costs();
    const dry = await reprice('--dry-run');
    expect(dry.stderr).toBe('');
    expect(dry.code).toBe(0);
    // Old: 3 × 0.00045 + 0.0075 + 0.9585 = 0.96735. The three gpt-4o-mini rows go 450 → 600 per 1M
    // (1,000 × 0.3 + 500 × 0.6): +0.00045 in all. Every row changes its price entry (a.yaml → b.yaml).
    expect(dry.stdout).toMatch(/5 rows examined, 5 would change\n/);
    expect(dry.stdout).toMatch(/^USD +5 +0\.96735 +0\.9678 +\+0\.00045 +5 +0 +0$/m);
    expect(dry.stdout).toMatch(/dry run: nothing written\n$/);
    expect(costs()).toEqual(before);
  }, 60_000);

  it('without --dry-run: rows updated, history keeps the originals; twice is idempotent', async () => {
    const done = await reprice();
    expect(done.code).toBe(0);
    expect(done.stdout).toMatch(/repricing 1: 5 rows updated/);
    const miniIds = rows.slice(0, 3).map((r) => r.id);
    const db = openSqlite(dbPath, { readonly: true });
    try {
      for (const id of miniIds) {
        expect(
          db.prepare('SELECT cost_nanos, price_id, price_match FROM requests WHERE id = ?').get(id),
        ).toEqual({
          cost_nanos: 600_000,
          price_id: 'b.yaml#gpt-4o-mini@always',
          price_match: expect.stringMatching(/^(normalized|snapshot)$/),
        });
        expect(
          db
            .prepare(
              'SELECT old_cost_nanos, old_price_id, new_cost_nanos FROM repricing_history WHERE request_id = ?',
            )
            .get(id),
        ).toEqual({
          old_cost_nanos: 450_000,
          old_price_id: 'a.yaml#gpt-4o-mini@always',
          new_cost_nanos: 600_000,
        });
      }
      // The tiered row: same cost, new entry; its history names both.
      expect(
        db
          .prepare(
            'SELECT old_price_id, new_price_id, old_cost_nanos, new_cost_nanos FROM repricing_history WHERE request_id = ?',
          )
          .get(rows[4]!.id),
      ).toEqual({
        old_price_id: 'a.yaml#claude-sonnet-4-5@always>200000',
        new_price_id: 'b.yaml#claude-sonnet-4-5@always>200000',
        old_cost_nanos: 958_500_000,
        new_cost_nanos: 958_500_000,
      });
    } finally {
      db.close();
    }
    const again = await reprice();
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/0 would change[\s\S]*nothing to change\n$/);

    const bad = await runCli(['reprice', '--since', 'yesterday-ish', '--config', 'tokenmeter.yaml'], {
      cwd: tmp.dir,
    });
    expect(bad.code).toBe(2);
    const noSince = await runCli(['reprice', '--config', 'tokenmeter.yaml'], { cwd: tmp.dir });
    expect(noSince.code).toBe(2);
    const help = await runCli(['reprice', '--help'], { cwd: tmp.dir });
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/--dry-run/);
  }, 60_000);
});
