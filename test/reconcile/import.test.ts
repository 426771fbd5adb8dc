/**
 * Issue 13: importing a one-api / new-api usage log and matching it to the audit log. The audit DB
 * is written by the real audit sink from real RequestRecords (test/audit helpers); the usage logs
 * are fixtures in test/fixtures/usage-logs/ (new-api envelope, one-api bare array, CSV) whose rows
 * are described next to the audit record each should (or should not) match.
 */
import Database from 'better-sqlite3';
import { openSqlite } from '../../src/sinks/audit/sqlite.js';
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, UsageError } from '../../src/errors.js';
import { SILENT_LOGGER } from '../../src/log.js';
import type { RequestRecord } from '../../src/record.js';
import {
  importResultToJson,
  quotaToNanos,
  reconcileImport,
  renderImportResult,
  type ImportOptions,
  type ImportResult,
} from '../../src/reconcile/import.js';
import { matchLogRows, type AuditRow, type LogKey } from '../../src/reconcile/match-log.js';
import { openAuditLog } from '../../src/sinks/audit/index.js';
import { fullRecord, nullRecord, recordingHealth, tempDir, type TempDir } from '../audit/records.js';

const fixture = (name: string): string =>
  fileURLToPath(new URL(`../fixtures/usage-logs/${name}`, import.meta.url));

/** 2026-11-20T10:00:00Z: the fixtures' rows are at T + n seconds. */
const T = Date.UTC(2026, 10, 20, 10, 0, 0);
const at = (startS: number, endS: number) => ({
  ts_start: T + Math.round(startS * 1000),
  ts_end: T + Math.round(endS * 1000),
  duration_ms: Math.round((endS - startS) * 1000),
});

/** A reported request on upstream `gw`, priced in USD unless overridden. */
function req(over: Partial<RequestRecord>): RequestRecord {
  return fullRecord({
    upstream: 'gw',
    response_model: null,
    cache_read_tokens: null,
    cache_write_tokens: null,
    cache_write_1h_tokens: null,
    reasoning_tokens: null,
    images: null,
    currency: 'USD',
    upstream_request_id: null,
    ...over,
  });
}

/** Each audit record and (in a comment) the fixture row it is about. */
const A = {
  // new-api id 101 / one-api id 1 / CSV line 2: quota 1234567 = $2.469134, same as our cost.
  exact: req({
    ...at(0.2, 1.5),
    request_model: 'gpt-4o',
    input_tokens: 100,
    output_tokens: 50,
    cost_nanos: 2_469_134_000,
  }),
  // ids 103/104: two identical requests a second apart; the gateway logs prompt 30 incl. 20 cached.
  twinA: req({
    ...at(60.1, 60.5),
    request_model: 'deepseek-chat',
    input_tokens: 10,
    cache_read_tokens: 20,
    output_tokens: 20,
    cost_nanos: 60_000,
  }),
  twinB: req({
    ...at(61.1, 61.5),
    request_model: 'deepseek-chat',
    input_tokens: 10,
    cache_read_tokens: 20,
    output_tokens: 20,
    cost_nanos: 60_000,
  }),
  // id 105: the gateway's clock is 45 s ahead; quota 500 = 1,000,000 nanos vs our 1,000,500 (< 1 quota).
  skew: req({
    ...at(120, 120.8),
    request_model: 'gpt-4o-mini',
    input_tokens: 40,
    output_tokens: 10,
    cost_nanos: 1_000_500,
  }),
  // id 106: logged as `qwen-max`; we saw `Qwen-Max` and price it in CNY.
  caseAlias: req({
    ...at(180, 181),
    request_model: 'Qwen-Max',
    response_model: 'Qwen-Max-2025-01-25',
    input_tokens: 25,
    output_tokens: 5,
    cost_nanos: 12_000,
    currency: 'CNY',
  }),
  // id 107: the gateway billed 210 prompt tokens, we saw 200; quota 600 = $0.0012 vs our $0.001.
  tokenDiff: req({
    ...at(240, 242),
    request_model: 'gpt-4o',
    input_tokens: 200,
    output_tokens: 80,
    cost_nanos: 1_000_000,
  }),
  // No log row: metered, not billed.
  unbilled: req({
    ...at(300, 301),
    request_model: 'gpt-4o',
    input_tokens: 10,
    output_tokens: 10,
    cost_nanos: 50_000,
    upstream_request_id: 'req-unbilled',
  }),
  // id 108: we only estimated usage (90 + 40); the gateway billed 100 + 45.
  estimated: req({
    ...at(360, 365),
    request_model: 'glm-4',
    input_tokens: 90,
    output_tokens: 40,
    usage_source: 'estimated',
    cost_nanos: 130_000,
  }),
  // id 109: Claude via new-api: prompt_tokens 50 excludes cache (other.cache_tokens 1000, cache_creation_tokens 300).
  claude: req({
    ...at(420, 424),
    request_model: 'claude-sonnet-4',
    input_tokens: 50,
    cache_read_tokens: 1000,
    cache_write_tokens: 300,
    output_tokens: 120,
    cost_nanos: 10_000_000,
  }),
  // No log row, and a 500: the gateway is not expected to bill it.
  error500: nullRecord({
    ...at(480, 480.3),
    upstream: 'gw',
    request_model: 'gpt-4o',
    http_status: 500,
    error_type: 'upstream_error',
  }),
  // id 111 is this request, but through another gateway: with --upstream gw it must not match.
  otherUpstream: req({
    ...at(540, 541),
    upstream: 'elsewhere',
    request_model: 'gpt-4o',
    input_tokens: 70,
    output_tokens: 7,
    cost_nanos: 154_000,
  }),
  // id 112: a 60 s stream the client aborted before any usage; the gateway billed 500 + 300.
  missing: nullRecord({
    ...at(600, 660),
    upstream: 'gw',
    request_model: 'minimax-m1',
    http_status: 200,
    error_type: 'client_abort',
    stream: true,
  }),
  // A models list: never billed, never listed.
  models: nullRecord({
    ...at(30, 30.1),
    upstream: 'gw',
    method: 'GET',
    path: '/v1/models',
    operation: 'other',
    http_status: 200,
    error_type: null,
    usage_source: 'none',
  }),
};
const NAME_OF = new Map(Object.entries(A).map(([name, r]) => [r.id, name]));
const names = (rows: Array<{ id: string }>): string[] => rows.map((r) => NAME_OF.get(r.id) ?? r.id);

let tmp: TempDir;
let db: Database.Database;

beforeAll(async () => {
  tmp = tempDir();
  const path = tmp.file('audit.db');
  const audit = openAuditLog({
    path,
    queueSize: 100,
    batchSize: 100,
    flushIntervalMs: 60_000,
    retentionDays: 0,
    captureBodies: false,
    captureMaxBytes: 0,
    redactPatterns: [],
    health: recordingHealth(),
    log: SILENT_LOGGER,
  });
  for (const r of Object.values(A)) audit.write(r);
  await audit.close();
  db = openSqlite(path, { readonly: true, fileMustExist: true });
});

afterAll(() => {
  db?.close();
  tmp?.cleanup();
});

const run = (opts: Partial<ImportOptions> & { file: string }): ImportResult =>
  reconcileImport(db, { upstream: 'gw', ...opts });

/** The matched pairs as `logId → audit name` for readable assertions. */
function pairsOf(r: ImportResult): Record<string, string> {
  return Object.fromEntries(
    r.matched.map((m) => [m.log.source.where.replace(/^.*\s/, ''), NAME_OF.get(m.audit.id)!]),
  );
}

function write(name: string, text: string): string {
  const file = tmp.file(name);
  writeFileSync(file, text);
  return file;
}

describe('new-api envelope ({data: {items}}): every row that should match does, the rest is listed', () => {
  let r: ImportResult;
  beforeAll(() => {
    r = run({ file: fixture('new-api-envelope.json') });
  });

  it('recognises the shape and counts every kind of row', () => {
    expect(r.shape).toBe('json-data-items');
    expect(r.counts).toEqual({
      log_rows: 13,
      consumption: 11,
      matched: 9,
      matched_exact: 6,
      matched_with_differences: 3,
      token_differences: 1,
      cost_differences: 2,
      usage_unreported: 2,
      unmatched_log: 2,
      audit_rows: 12,
      unmatched_audit: 1,
      unmatched_audit_not_billable: 2,
      parse_problems: 0,
      warnings: 0,
      skipped: 2,
      skipped_by_type: { '1': 1, '4': 1 },
      outside_window: 0,
    });
  });

  it('pairs each billed row with its own request (items are newest first, as new-api lists them)', () => {
    expect(pairsOf(r)).toEqual({
      'data.items[1]': 'missing',
      'data.items[4]': 'claude',
      'data.items[5]': 'estimated',
      'data.items[6]': 'tokenDiff',
      'data.items[7]': 'caseAlias',
      'data.items[8]': 'skew',
      'data.items[9]': 'twinB',
      'data.items[10]': 'twinA',
      'data.items[12]': 'exact',
    });
  });

  it('two identical requests a second apart: each matched once, to the one nearest in time', () => {
    const twins = r.matched.filter((m) => m.log.model === 'deepseek-chat');
    expect(twins.map((m) => [m.log.time_ms - T, NAME_OF.get(m.audit.id)])).toEqual([
      [61_000, 'twinB'],
      [60_000, 'twinA'],
    ]);
    // prompt_tokens 30 already includes the 20 cached (OpenAI style): the reading that agrees is kept.
    expect(twins.every((m) => m.differences.length === 0 && m.billed.prompt_basis === 'as_logged')).toBe(
      true,
    );
  });

  it('clock skew inside the window matches; one quota unit of rounding is not a cost difference', () => {
    const m = r.matched.find((p) => NAME_OF.get(p.audit.id) === 'skew')!;
    expect(m.time_gap_ms).toBe(44_200);
    expect(m.differences).toEqual([]);
    expect(m.diff.cost_nanos).toBe(500n);
  });

  it('a model name that differs only in case matches (case-insensitively), its CNY cost not compared', () => {
    const m = r.matched.find((p) => NAME_OF.get(p.audit.id) === 'caseAlias')!;
    expect(m.model_match).toBe('case_insensitive');
    expect(m.differences).toEqual([]);
    expect(m.metered.currency).toBe('CNY');
    expect(m.diff.cost_nanos).toBeNull();
  });

  it('token and cost differences are listed per request, metered − billed', () => {
    const m = r.matched.find((p) => NAME_OF.get(p.audit.id) === 'tokenDiff')!;
    expect(m.differences).toEqual(['tokens', 'cost']);
    expect(m.diff).toEqual({ prompt_tokens: -10, completion_tokens: 0, cost_nanos: -200_000n });
    expect(m.billed.cost_nanos).toBe(1_200_000n);
    expect(m.notes).toEqual([
      'tokens: billed 210 prompt + 80 completion, metered 200 + 80 (prompt -10, completion 0)',
      'cost: billed 0.0012 USD, metered 0.001 USD (-200000 nanos)',
    ]);
  });

  it('estimated and missing usage matched by time + model: "gateway billed N tokens we did not see reported"', () => {
    const est = r.matched.find((p) => NAME_OF.get(p.audit.id) === 'estimated')!;
    expect(est.differences).toEqual(['usage_unreported', 'cost']);
    expect(est.notes[0]).toBe(
      'gateway billed 145 tokens (100 prompt + 45 completion) we did not see reported ' +
        '(ours: estimated, 90 prompt + 40 completion)',
    );
    const miss = r.matched.find((p) => NAME_OF.get(p.audit.id) === 'missing')!;
    // A 60 s stream: the log time (its end) is 60 s after ts_start, still inside [start, end].
    expect(miss.time_gap_ms).toBe(0);
    expect(miss.differences).toEqual(['usage_unreported']);
    expect(miss.notes).toEqual([
      'gateway billed 800 tokens (500 prompt + 300 completion) we did not see reported ' +
        '(ours: missing, unknown prompt + unknown completion)',
    ]);
    expect(miss.diff).toEqual({ prompt_tokens: null, completion_tokens: null, cost_nanos: null });
  });

  it('Claude rows whose prompt_tokens exclude the cache (new-api other.cache_tokens) match exactly', () => {
    const m = r.matched.find((p) => NAME_OF.get(p.audit.id) === 'claude')!;
    expect(m.billed.prompt_basis).toBe('plus_cache');
    expect(m.billed.prompt_tokens).toBe(1350);
    expect(m.differences).toEqual([]);
  });

  it('lists unmatched rows on both sides; errors and non-billable requests apart', () => {
    expect(r.unmatched_log.map((u) => [u.log.source.where.replace(/^.*\s/, ''), u.reason])).toEqual([
      ['data.items[0]', 'nearest audit row with model gpt-4o is 7 min away (window ±2 min)'],
      ['data.items[2]', 'nearest audit row with model gpt-4o is 4 min away (window ±2 min)'],
    ]);
    expect(names(r.unmatched_audit)).toEqual(['unbilled']);
    expect(names(r.not_billable_audit)).toEqual(['models', 'error500']);
    expect(r.skipped.map((s) => [s.type, s.label, s.quota])).toEqual([
      [4, 'system (one-api) / error (new-api)', 0],
      [1, 'top-up', 5_000_000],
    ]);
  });

  it('totals per currency: billed USD from quota, metered USD and CNY never summed together', () => {
    const t = r.totals;
    // 44 + 900 + 77 + 5000 + 145 + 600 + 100 + 500 + 30 + 30 + 1234567 quota.
    expect(t.billed).toEqual({
      currency: 'USD',
      requests: 11,
      quota: 1_241_993n,
      cost_nanos: 2_483_986_000n,
    });
    expect(t.billed_unmatched).toEqual({ currency: 'USD', requests: 2, quota: 121n, cost_nanos: 242_000n });
    expect(t.billed_matched.cost_nanos + t.billed_unmatched.cost_nanos).toBe(t.billed.cost_nanos);
    expect(t.metered_matched).toEqual([
      { currency: 'CNY', cost_nanos: 12_000n, requests: 1 },
      {
        currency: 'USD',
        cost_nanos: 2_469_134_000n + 120_000n + 1_000_500n + 1_000_000n + 130_000n + 10_000_000n,
        requests: 7,
      },
    ]);
    expect(t.metered_matched_unknown).toBe(1);
    expect(t.metered_unmatched).toEqual([{ currency: 'USD', cost_nanos: 50_000n, requests: 1 }]);
    // Same-currency comparison excludes the CNY row (quota 100) and the unknown-cost row (quota 900).
    expect(t.same_currency.requests).toBe(7);
    expect(t.same_currency.billed_nanos).toBe((1_234_567n + 30n + 30n + 500n + 600n + 145n + 5000n) * 2000n);
    expect(t.same_currency.difference_nanos).toBe(
      t.same_currency.metered_nanos - t.same_currency.billed_nanos,
    );
  });

  it('renders a table with counts, totals and every difference, and complete JSON', () => {
    const table = renderImportResult(r, 'table');
    expect(table).toContain('unmatched log rows (billed, not metered)');
    expect(table).toContain('billed by the gateway          2.483986 USD (11, 1241993 quota)');
    expect(table).toContain(
      'metered, matched rows          0.000012 CNY (1); 2.4813845 USD (7); 1 with unknown cost',
    );
    expect(table).toMatch(/differences \(3\):/);
    expect(table).toContain('we did not see reported');
    expect(table).toContain('skipped rows (not billed requests) (2):');
    const json = JSON.parse(renderImportResult(r, 'json')) as Record<string, unknown>;
    expect(json).toEqual(JSON.parse(JSON.stringify(importResultToJson(r))));
    expect((json.matched as unknown[]).length).toBe(9);
    expect((json.totals as { billed: unknown }).billed).toEqual({
      requests: 11,
      quota: '1241993',
      cost: '2.483986',
      cost_nanos: '2483986000',
      currency: 'USD',
    });
  });
});

describe('restrictions and options', () => {
  it('without --upstream the request through the other gateway matches too', () => {
    const r = reconcileImport(db, { file: fixture('new-api-envelope.json') });
    expect(Object.values(pairsOf(r))).toContain('otherUpstream');
    expect(r.counts.unmatched_log).toBe(1);
  });

  it('--since/--until: log rows outside are counted apart; audit rows listed only inside', () => {
    const r = run({ file: fixture('new-api-envelope.json'), fromMs: T, toMs: T + 200_000 });
    expect(r.counts.outside_window).toBe(6);
    expect(r.counts.consumption).toBe(5);
    expect(r.counts.matched).toBe(5);
    expect(names(r.unmatched_audit)).toEqual([]);
    expect(names(r.not_billable_audit)).toEqual(['models']);
  });

  it('a narrower match window leaves the skewed row unmatched, naming the distance', () => {
    const r = run({ file: fixture('new-api-envelope.json'), windowMs: 10_000 });
    expect(r.unmatched_log.map((u) => u.reason)).toContain(
      'nearest audit row with model gpt-4o-mini is 44.2 s away (window ±10 s)',
    );
    expect(names(r.unmatched_audit)).toContain('skew');
  });

  it('quota conversion is exact: 1234567 quota at 500,000 / USD = $2.469134; a custom rate', () => {
    expect(quotaToNanos(1_234_567)).toBe(2_469_134_000n);
    expect(quotaToNanos(1, 500_000)).toBe(2000n);
    expect(quotaToNanos(1_234_567, 7_000_000)).toBe(176_366_714n); // 0.17636671428… rounded half-up
    const r = run({ file: fixture('one-api-array.json'), quotaPerUsd: 1_000_000 });
    expect(r.settings.quota_per_usd).toBe(1_000_000);
    expect(r.totals.billed).toEqual({
      currency: 'USD',
      requests: 3,
      quota: 1_234_627n,
      cost_nanos: 1_234_627_000n,
    });
    // At 1,000,000 / USD the exact row is now billed half of what we metered.
    const exact = r.matched.find((m) => NAME_OF.get(m.audit.id) === 'exact')!;
    expect(exact.billed.cost_nanos).toBe(1_234_567_000n);
    expect(exact.differences).toEqual(['cost']);
  });

  it('the gateway request id matches decisively, whatever the time and model name', () => {
    const file = write(
      'by-id.json',
      JSON.stringify({
        data: [
          {
            created_at: 1795168800 + 3600,
            type: 2,
            model_name: 'gpt-4o-2024-08-06',
            prompt_tokens: 10,
            completion_tokens: 10,
            quota: 25,
            request_id: 'req-unbilled',
          },
        ],
      }),
    );
    const r = run({ file, fromMs: T, toMs: T + 7200_000 });
    expect(r.shape).toBe('json-data');
    expect(r.matched).toHaveLength(1);
    expect(r.matched[0]!).toMatchObject({ by: 'request_id', model_match: 'differs' });
    expect(NAME_OF.get(r.matched[0]!.audit.id)).toBe('unbilled');
  });

  it('bad options are usage errors (exit 2)', () => {
    const file = fixture('one-api-array.json');
    expect(() => run({ file, quotaPerUsd: 0 })).toThrow(UsageError);
    expect(() => run({ file, quotaPerUsd: Number.NaN })).toThrow(/--quota-per-usd/);
    expect(() => run({ file, windowMs: -1 })).toThrow(/--match-window/);
    expect(() => run({ file, fromMs: T, toMs: T })).toThrow(/--since must be before --until/);
    expect(() => run({ file, format: 'xml' as 'csv' })).toThrow(/--import-format/);
  });
});

describe('one-api bare array and CSV', () => {
  it('a bare one-api array matches like the envelope', () => {
    const r = run({ file: fixture('one-api-array.json') });
    expect(r.shape).toBe('json-array');
    expect(pairsOf(r)).toEqual({ '[0]': 'twinB', '[1]': 'twinA', '[2]': 'exact' });
    expect(r.counts.matched_exact).toBe(3);
  });

  it('CSV with unix and ISO times (Z and +08:00): rows match; bad lines are listed by line and field', () => {
    const r = run({ file: fixture('usage-log.csv') });
    expect(r.shape).toBe('csv');
    expect(r.counts.log_rows).toBe(6);
    expect(r.matched.map((m) => [m.log.source.line, NAME_OF.get(m.audit.id)])).toEqual([
      [2, 'exact'],
      [3, 'twinA'],
      [4, 'twinB'],
    ]);
    expect(r.matched[0]!.log.token_name).toBe('prod, main');
    const file = fixture('usage-log.csv');
    expect(r.problems).toEqual([
      { file, line: 5, field: 'prompt_tokens', message: 'expected a whole number ≥ 0, got "abc"' },
      { file, line: 6, message: 'expected 8 fields as in the header, got 6' },
      {
        file,
        line: 7,
        field: 'created_at',
        message: 'ISO time "2026-11-20T10:03:01" has no time zone; add Z or an offset like +08:00',
      },
    ]);
    expect(r.ignored_columns).toEqual(['channel']);
    const table = renderImportResult(r, 'table');
    expect(table).toContain(`${file}:5: prompt_tokens: expected a whole number ≥ 0, got "abc"`);
    expect(table).toContain('ignored CSV columns: channel');
  });

  it('--import-format overrides the extension; the format is sniffed without one', () => {
    const csv = write(
      'log.txt',
      'created_at,model_name,prompt_tokens,completion_tokens,quota\n1795168801,gpt-4o,100,50,1234567\n',
    );
    expect(run({ file: csv }).format).toBe('csv');
    const json = write(
      'log.data',
      '  [{"created_at":1795168801,"type":2,"model_name":"gpt-4o","prompt_tokens":100,"completion_tokens":50,"quota":1234567}]',
    );
    expect(run({ file: json }).format).toBe('json');
    expect(run({ file: json, format: 'json' }).matched).toHaveLength(1);
  });
});

describe('errors name the file, line or index, and field', () => {
  const thrown = (fn: () => unknown): ConfigError => {
    try {
      fn();
    } catch (err) {
      if (err instanceof ConfigError) return err;
      throw err;
    }
    throw new Error('did not throw');
  };

  it('an unreadable file', () => {
    const file = tmp.file('nope.json');
    const err = thrown(() => run({ file }));
    expect(err.exitCode).toBe(2);
    expect(err.message).toMatch(new RegExp(`^${file}: cannot read the usage log: ENOENT`));
  });

  it('invalid JSON names the line', () => {
    const file = write('broken.json', '[\n  {"created_at": 1795168801,\n  }\n]');
    const err = thrown(() => run({ file }));
    expect(err.exitCode).toBe(2);
    expect(err.problems[0]).toMatchObject({ file, line: 3 });
    expect(err.message).toMatch(/not valid JSON/);
  });

  it('JSON of the wrong shape, and a gateway error answer', () => {
    const wrong = write('wrong.json', '{"data": {"quota": 5}}');
    expect(thrown(() => run({ file: wrong })).message).toMatch(/not a one-api\/new-api usage log/);
    const failed = write('failed.json', '{"success": false, "message": "无权进行此操作"}');
    expect(thrown(() => run({ file: failed })).message).toBe(
      `${failed}: success: the gateway answered success: false (无权进行此操作); export the log again`,
    );
  });

  it('a CSV header without a required column; an empty file', () => {
    const file = write('nohdr.csv', 'created_at,model,prompt_tokens,completion_tokens,quota\n');
    const err = thrown(() => run({ file }));
    expect(err.problems).toEqual([
      {
        file,
        line: 1,
        field: 'header',
        message:
          'missing column model_name; expected a header created_at,model_name,prompt_tokens,completion_tokens,quota ' +
          '(optional: type,token_name,request_id,use_time,is_stream,cache_tokens,cache_creation_tokens)',
      },
    ]);
    expect(thrown(() => run({ file: write('empty.csv', '') })).message).toMatch(/empty file/);
  });

  it('bad JSON rows are parse problems naming the array index and field; the others still match', () => {
    const file = write(
      'rows.json',
      JSON.stringify({
        data: {
          items: [
            {
              created_at: 1795168801,
              type: 2,
              model_name: 'gpt-4o',
              prompt_tokens: 100,
              completion_tokens: 50,
              quota: 1234567,
            },
            {
              created_at: 1795168801000,
              type: 2,
              model_name: 'gpt-4o',
              prompt_tokens: 1,
              completion_tokens: 1,
              quota: 1,
            },
            {
              created_at: 1795168860,
              type: 2,
              model_name: 'deepseek-chat',
              prompt_tokens: 30,
              completion_tokens: -2,
              quota: '3.5',
            },
            'not a row',
            {
              created_at: 1795168861,
              type: 2,
              model_name: 'deepseek-chat',
              prompt_tokens: 30,
              completion_tokens: 20,
              quota: 30,
              other: '{oops',
            },
            {
              created_at: 1795168861,
              type: 'consume',
              model_name: 'x',
              prompt_tokens: 1,
              completion_tokens: 1,
              quota: 1,
            },
          ],
        },
      }),
    );
    const r = run({ file });
    expect(r.problems).toEqual([
      {
        file,
        field: 'data.items[1].created_at',
        message: '1795168801000 is too large for unix seconds (milliseconds?); give seconds or ISO 8601',
      },
      { file, field: 'data.items[2].completion_tokens', message: 'expected a whole number ≥ 0, got -2' },
      { file, field: 'data.items[2].quota', message: 'expected a whole number ≥ 0, got "3.5"' },
      { file, field: 'data.items[3]', message: 'expected a log row object, got "not a row"' },
      {
        file,
        field: 'data.items[5].type',
        message: 'expected a log type number (2 = consumption), got "consume"',
      },
    ]);
    expect(r.warnings).toEqual([
      { file, field: 'data.items[4].other', message: 'not a JSON object; cache figures ignored' },
    ]);
    expect(r.counts).toMatchObject({
      log_rows: 6,
      consumption: 2,
      matched: 2,
      parse_problems: 5,
      warnings: 1,
    });
    expect(renderImportResult(r, 'table')).toContain(
      `${file}: data.items[2].completion_tokens: expected a whole number ≥ 0, got -2`,
    );
  });

  it('an unclosed CSV quote is a problem naming the line it opened on', () => {
    const file = write(
      'quote.csv',
      'created_at,model_name,prompt_tokens,completion_tokens,quota,token_name\n' +
        '1795168801,gpt-4o,100,50,1234567,prod\n1795168860,deepseek-chat,30,20,30,"prod\n1795168861,x,1,1,1,y\n',
    );
    const r = run({ file });
    expect(r.matched).toHaveLength(1);
    expect(r.problems).toEqual([
      {
        file,
        line: 3,
        message: 'a quoted field is never closed: this line and everything after it could not be read',
      },
    ]);
  });
});

describe('table caps long lists; JSON lists everything', () => {
  it('25 billed rows nobody metered: 20 lines and "… 5 more"', () => {
    const rows = Array.from({ length: 25 }, (_, i) => ({
      created_at: 1795168800 + 86_400 + i,
      type: 2,
      model_name: 'gpt-4o',
      prompt_tokens: 1,
      completion_tokens: 1,
      quota: 1,
    }));
    const r = run({ file: write('many.json', JSON.stringify(rows)) });
    expect(r.counts.unmatched_log).toBe(25);
    const table = renderImportResult(r, 'table');
    expect(table).toContain('… 5 more (--format json lists all)');
    expect(table.match(/many\.json \[\d+\]/g)).toHaveLength(20);
    expect(
      (JSON.parse(renderImportResult(r, 'json')) as { unmatched_log: unknown[] }).unmatched_log,
    ).toHaveLength(25);
  });
});

describe('matchLogRows: deterministic one-to-one assignment', () => {
  const audit = (
    id: string,
    startMs: number,
    endMs: number,
    input: number | null,
    output: number | null,
  ): AuditRow => ({
    id,
    ts_start: T + startMs,
    ts_end: T + endMs,
    upstream: 'gw',
    operation: 'chat',
    request_model: 'm',
    response_model: null,
    app: 'a',
    http_status: 200,
    error_type: null,
    usage_source: input === null ? 'missing' : 'reported',
    input_tokens: input,
    cache_read_tokens: null,
    cache_write_tokens: null,
    output_tokens: output,
    cost_nanos: null,
    currency: null,
    upstream_request_id: null,
  });
  const log = (sec: number, prompt: number, completion: number): LogKey => ({
    time_ms: T + sec * 1000,
    precision_ms: 1000,
    model: 'm',
    prompt_tokens: prompt,
    completion_tokens: completion,
    cache_tokens: null,
    cache_creation_tokens: null,
    request_id: null,
  });

  it('equal tokens beat nearer time; unreported usage comes last; the same answer for any input order', () => {
    const rows = [
      audit('A', 0, 500, 10, 5), // nearest to log 0, but tokens differ
      audit('B', 30_000, 30_500, 100, 50), // 30 s away, tokens equal to log 0
      audit('C', 1_000, 1_400, null, null), // usage missing
    ];
    const logs = [log(0, 100, 50), log(1, 11, 5), log(2, 7, 7)];
    const expected = [
      ['B', 'time_model'],
      ['A', 'time_model'],
      ['C', 'time_model'],
    ];
    const named = (order: AuditRow[]) =>
      matchLogRows(logs, order, 120_000).pairs.map((p) => [order[p.audit]!.id, p.by]);
    expect(named(rows)).toEqual(expected);
    expect(named([...rows].reverse())).toEqual(expected);
    expect(named([rows[2]!, rows[0]!, rows[1]!])).toEqual(expected);
  });

  it('five identical requests a second apart: five pairs, each in time order', () => {
    const rows = [0, 1, 2, 3, 4].map((i) => audit(`R${i}`, i * 1000 + 100, i * 1000 + 600, 10, 10));
    const logs = [4, 3, 2, 1, 0].map((i) => log(i, 10, 10));
    const out = matchLogRows(logs, rows, 120_000);
    expect(out.pairs.map((p) => [logs[p.log]!.time_ms - T, rows[p.audit]!.id])).toEqual([
      [4000, 'R4'],
      [3000, 'R3'],
      [2000, 'R2'],
      [1000, 'R1'],
      [0, 'R0'],
    ]);
    expect(out.unmatchedLogs).toEqual([]);
    expect(out.unmatchedAudit).toEqual([]);
  });
});
