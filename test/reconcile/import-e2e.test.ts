/**
 * Issue 13 end to end: the real `tokenmeter serve` child process in front of the fake gateway, the
 * openai SDK making ten chat requests (two streamed, two identical), then a new-api usage log built
 * from what the fake itself received and billed (its request list + its documented usage rules,
 * test/fake-gateway/usage.ts) — with one billed row the proxy never saw added and one real request's
 * row removed. `reconcileImport` on serve's own audit DB must find exactly those two and match the
 * other nine exactly, tokens and cost.
 */
import { openSqlite } from '../../src/sinks/audit/sqlite.js';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reconcileImport, renderImportResult } from '../../src/reconcile/import.js';
import { expectedUsage, flavorFor, type FakeGateway } from '../fake-gateway/index.js';
import {
  closeWorld,
  serveConfig,
  startWorld,
  waitForRows,
  writeFile,
  type ServeProcess,
  type TempDir,
} from '../e2e/helpers.js';

const KEY = 'sk-e2e-reconcile-import';
// $2 / 1M input (cached too) and $4 / 1M output = 1 and 2 quota per token at 500,000 quota = $1:
// one-api ratio 1 with completion ratio 2, so a faithful gateway bills exactly what we meter.
const PRICES = `currency: USD
unit: 1M
prices:
  - { model: gpt-4o-mini, input: 2, output: 4 }
  - { model: deepseek-chat, input: 2, output: 4, cache_read: 2 }
`;

let gateway: FakeGateway;
let serve: ServeProcess;
let tmp: TempDir;
let dbPath: string;

beforeAll(async () => {
  ({ gateway, tmp, dbPath } = await startWorld('tm-e2e-reconcile-', { 'prices.yaml': PRICES }));
  serve = await serveConfig(
    tmp.dir,
    `db: audit.db
presets: false
prices: [prices.yaml]
upstreams:
  - { name: fake, url: "${gateway.url}/v1" }
`,
  );
}, 60_000);

afterAll(async () => {
  if (serve !== undefined) expect(await serve.stop()).toBe(0);
  await closeWorld({ gateway, tmp });
});

interface Sent {
  model: string;
  prompt: string;
  stream: boolean;
}

/**
 * The fake bills 10 + words prompt and 1 + words completion tokens, and a gateway logs whole
 * seconds: requests of one model with equal word counts finished in the same second cannot be told
 * apart by anyone. So every prompt has its own word count per model, except the deliberate twins.
 */
const SENT: Sent[] = [
  { model: 'gpt-4o-mini', prompt: 'hello there', stream: false },
  { model: 'gpt-4o-mini', prompt: 'what is the capital of france', stream: false },
  { model: 'deepseek-chat', prompt: 'count to five please', stream: false },
  { model: 'gpt-4o-mini', prompt: 'stream me a short answer', stream: true },
  { model: 'deepseek-chat', prompt: 'one two three four five six seven', stream: false },
  { model: 'gpt-4o-mini', prompt: 'same question twice', stream: false },
  { model: 'gpt-4o-mini', prompt: 'same question twice', stream: false },
  { model: 'deepseek-chat', prompt: 'a streamed deepseek answer please', stream: true },
  { model: 'gpt-4o-mini', prompt: 'the last but one request here now ok', stream: false },
  { model: 'deepseek-chat', prompt: 'the very last request of this whole test run', stream: false },
];

describe('reconcile --import against a real serve audit DB', () => {
  it('finds exactly the billed row we never saw and the request the gateway did not bill', async () => {
    const openai = new OpenAI({ baseURL: `${serve.base}/v1`, apiKey: KEY, maxRetries: 0 });
    const doneAt: number[] = [];
    for (const s of SENT) {
      const messages = [{ role: 'user' as const, content: s.prompt }];
      if (s.stream) {
        const stream = await openai.chat.completions.create({ model: s.model, messages, stream: true });
        for await (const _chunk of stream) {
          // Read to the end, as an app would.
        }
      } else {
        await openai.chat.completions.create({ model: s.model, messages });
      }
      doneAt.push(Date.now());
    }
    expect(gateway.requests).toHaveLength(SENT.length);
    const rows = await waitForRows(dbPath, SENT.length);
    expect(rows).toHaveLength(SENT.length);

    // The gateway's log, newest first like new-api: one row per request it served, from what it
    // received and the usage it reported; the time it wrote the row is when the answer was done.
    const items = gateway.requests.map((req, i) => {
      const json = req.json as { model: string };
      const wire = expectedUsage(flavorFor('/chat/completions', json.model), json).wire as {
        prompt_tokens: number;
        completion_tokens: number;
      };
      return {
        id: i + 1,
        created_at: Math.floor(doneAt[i]! / 1000),
        type: 2,
        model_name: json.model,
        prompt_tokens: wire.prompt_tokens,
        completion_tokens: wire.completion_tokens,
        quota: wire.prompt_tokens + 2 * wire.completion_tokens,
        token_name: 'e2e',
        is_stream: SENT[i]!.stream,
        other: JSON.stringify({ model_ratio: 1, group_ratio: 1, completion_ratio: 2 }),
      };
    });
    // The gateway "forgot" request 5 (req-5), and billed one that never passed through tokenmeter.
    const removed = items.splice(4, 1)[0]!;
    const extraTime = Math.floor(doneAt[SENT.length - 1]! / 1000);
    items.push({
      id: 99,
      created_at: extraTime,
      type: 2,
      model_name: 'gpt-4o-mini',
      prompt_tokens: 123,
      completion_tokens: 45,
      quota: 213,
      token_name: 'someone-else',
      is_stream: false,
      other: '{}',
    });
    items.push({ ...items[0]!, id: 100, type: 1, model_name: '', quota: 5_000_000 }); // a top-up
    const file = writeFile(
      tmp.dir,
      'usage-log.json',
      JSON.stringify({ success: true, message: '', data: { items: items.reverse(), total: items.length } }),
    );

    const db = openSqlite(dbPath, { readonly: true, fileMustExist: true });
    try {
      const r = reconcileImport(db, { file, upstream: 'fake' });
      expect(r.counts).toMatchObject({
        log_rows: 11,
        consumption: 10,
        skipped: 1,
        matched: 9,
        matched_exact: 9,
        matched_with_differences: 0,
        unmatched_log: 1,
        unmatched_audit: 1,
        parse_problems: 0,
      });
      expect(r.unmatched_log.map((u) => u.log.prompt_tokens)).toEqual([123]);
      expect(r.unmatched_audit.map((a) => a.upstream_request_id)).toEqual(['req-5']);
      expect(r.unmatched_audit[0]!.request_model).toBe(removed.model_name);
      // Every other request matched a row of its own: the fake's x-request-id is req-<n> for item n
      // (the two identical requests may pair either way round: nothing tells them apart but time).
      expect(r.matched.map((m) => m.audit.upstream_request_id).sort()).toEqual(
        [1, 2, 3, 4, 6, 7, 8, 9, 10].map((n) => `req-${n}`).sort(),
      );
      const byRequestId = new Map(items.map((it) => [`req-${it.id}`, it]));
      for (const m of r.matched) {
        const billed = byRequestId.get(m.audit.upstream_request_id!)!;
        expect([m.log.model, m.log.prompt_tokens, m.log.completion_tokens]).toEqual([
          billed.model_name,
          billed.prompt_tokens,
          billed.completion_tokens,
        ]);
      }
      // Same prices on both sides: billed = metered to the nano.
      expect(r.totals.same_currency.requests).toBe(9);
      expect(r.totals.same_currency.difference_nanos).toBe(0n);
      expect(r.totals.billed_unmatched.cost_nanos).toBe(213n * 2000n);
      const table = renderImportResult(r, 'table');
      expect(table).toContain('unmatched audit rows: metered by us, not billed (1):');
      expect(table).toContain('tokens 123+45 quota 213 = 0.000426 USD');
    } finally {
      db.close();
    }
  });
});
