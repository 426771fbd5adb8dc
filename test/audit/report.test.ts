import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { openSqlite } from '../../src/sinks/audit/sqlite.js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { keyFingerprint } from '../../src/attribution.js';
import { reportCommand, type ReportCliOptions } from '../../src/cli/report.js';
import { SILENT_LOGGER } from '../../src/log.js';
import type { RequestRecord } from '../../src/record.js';
import { openAuditLog } from '../../src/sinks/audit/index.js';
import { DAY_MS, SCHEMA_VERSION } from '../../src/sinks/audit/migrations.js';
import { countUnpriced, querySpend } from '../../src/sinks/audit/queries.js';
import { fullRecord, nullRecord, recordingHealth, tempDir, type TempDir } from './records.js';

const NOW = Date.UTC(2026, 10, 22, 12, 0, 0);
const DAY1 = Date.UTC(2026, 10, 20, 9, 0, 0);
const DAY2 = Date.UTC(2026, 10, 21, 9, 0, 0);
const at = (ts: number): Partial<RequestRecord> => ({ ts_start: ts, ts_end: ts + 1000 });

/**
 * Hand-summed fixture, window --since 7d:
 *   CNY  (app A, cailag):     1182600 + 946080 + 500000 = 2628680 nanos = ¥0.00262868, 3 requests
 *   USD  (app B, cnaitoken): 11850000 + 2500000       = 14350000 nanos = $0.01435,    2 requests
 *   no cost: app B mystery-model (unpriced, 100 in / 50 out), app A aborted (usage missing)
 *   outside the window: app A CNY 999 on 2026-10-01
 *   caveats: 1 estimated, 1 missing, 1 unpriced
 */
const RECORDS: RequestRecord[] = [
  fullRecord({ ...at(DAY1), app: 'A', cost_nanos: 1_182_600, currency: 'CNY' }),
  fullRecord({
    ...at(DAY1 + 60_000),
    app: 'A',
    cost_nanos: 946_080,
    currency: 'CNY',
    usage_source: 'estimated',
  }),
  fullRecord({ ...at(DAY2), app: 'A', cost_nanos: 500_000, currency: 'CNY' }),
  fullRecord({
    ...at(DAY1),
    app: 'B',
    upstream: 'cnaitoken',
    request_model: 'claude-sonnet-4',
    cost_nanos: 11_850_000,
    currency: 'USD',
  }),
  fullRecord({
    ...at(DAY2),
    app: 'B',
    upstream: 'cnaitoken',
    request_model: 'claude-sonnet-4',
    cost_nanos: 2_500_000,
    currency: 'USD',
  }),
  nullRecord({
    ...at(DAY2),
    app: 'B',
    request_model: 'mystery-model',
    usage_source: 'reported',
    input_tokens: 100,
    output_tokens: 50,
    cost_source: 'unpriced',
    error_type: null,
  }),
  nullRecord({ ...at(DAY2), app: 'A', request_model: 'deepseek-chat', error_type: 'client_abort' }),
  fullRecord({ ...at(Date.UTC(2026, 9, 1)), app: 'A', cost_nanos: 999, currency: 'CNY' }),
];

let tmp: TempDir;
let dbPath: string;

beforeEach(async () => {
  tmp = tempDir();
  dbPath = tmp.file('audit.db');
  const audit = openAuditLog({
    path: dbPath,
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
  for (const r of RECORDS) audit.write(r);
  await audit.close();
});
afterEach(() => tmp.cleanup());

describe('querySpend (budgets)', () => {
  it('sums priced spend per currency exactly as BigInt, excluding unpriced rows but counting them', () => {
    const db = openSqlite(dbPath, { readonly: true });
    const win = { fromMs: NOW - 7 * DAY_MS, toMs: NOW };
    expect(querySpend(db, win)).toEqual([
      { currency: 'CNY', cost_nanos: 2_628_680n },
      { currency: 'USD', cost_nanos: 14_350_000n },
    ]);
    expect(querySpend(db, { ...win, app: 'A' })).toEqual([{ currency: 'CNY', cost_nanos: 2_628_680n }]);
    expect(querySpend(db, { ...win, model: 'claude-*' })).toEqual([
      { currency: 'USD', cost_nanos: 14_350_000n },
    ]);
    expect(querySpend(db, { ...win, model: 'Claude-*' })).toEqual([]); // GLOB is case-sensitive, like price globs
    expect(querySpend(db, { ...win, upstream: 'cailag', app: 'B' })).toEqual([]);
    // The window is [from, to): the 2026-10-01 row only appears when the window covers it.
    expect(querySpend(db, { fromMs: 0, toMs: NOW, app: 'A' })).toEqual([
      { currency: 'CNY', cost_nanos: 2_629_679n },
    ]);
    expect(querySpend(db, { fromMs: DAY2, toMs: DAY2 + 1000, app: 'A' })).toEqual([
      { currency: 'CNY', cost_nanos: 500_000n },
    ]);
    expect(querySpend(db, { fromMs: DAY2 + 1, toMs: NOW, app: 'A' })).toEqual([]);
    expect(countUnpriced(db, win)).toBe(1);
    expect(countUnpriced(db, { ...win, app: 'A' })).toBe(0);
    db.close();
  });
});

/** Runs the command with an empty environment in the temp dir (no stray ./tokenmeter.yaml or TOKENMETER_*). */
function report(flags: ReportCliOptions, configYaml?: string): string {
  let config: string | undefined;
  if (configYaml !== undefined) {
    config = tmp.file('tokenmeter.yaml');
    writeFileSync(config, configYaml);
  }
  return reportCommand({ db: dbPath, config, ...flags }, {}, tmp.dir, NOW);
}

describe('tokenmeter report', () => {
  it('json: totals per currency match the hand sums, with tokens and caveat counts', () => {
    const out = JSON.parse(report({ since: '7d', format: 'json' })) as {
      totals: Array<Record<string, unknown>>;
      caveats: Record<string, number>;
      converted: unknown;
    };
    expect(out.totals).toEqual([
      {
        currency: 'CNY',
        requests: 3,
        cost: '0.00262868',
        cost_nanos: '2628680',
        tokens: { input: 1200, cache_read: 1800, cache_write: 90, output: 1500, reasoning: 360 },
        estimated: 1,
        missing: 0,
        unpriced: 0,
        errors: 0,
      },
      {
        currency: 'USD',
        requests: 2,
        cost: '0.01435',
        cost_nanos: '14350000',
        tokens: { input: 800, cache_read: 1200, cache_write: 60, output: 1000, reasoning: 240 },
        estimated: 0,
        missing: 0,
        unpriced: 0,
        errors: 0,
      },
      {
        currency: null,
        requests: 2,
        cost: null,
        cost_nanos: null,
        // Unknown stays unknown: no request in this group reported cache or reasoning tokens.
        tokens: { input: 100, cache_read: null, cache_write: null, output: 50, reasoning: null },
        estimated: 0,
        missing: 1,
        unpriced: 1,
        errors: 1,
      },
    ]);
    expect(out.caveats).toEqual({ estimated: 1, missing: 1, unpriced: 1, requests: 7 });
    expect(out.converted).toBeNull();
  });

  it('json --by app,day groups inside each currency', () => {
    const out = JSON.parse(report({ since: '7d', by: 'app,day', format: 'json' })) as {
      groups: Array<Record<string, unknown>>;
    };
    expect(
      out.groups.map((g) => [g['app'], g['day'], g['currency'], g['requests'], g['cost_nanos']]),
    ).toEqual([
      ['A', '2026-11-20', 'CNY', 2, '2128680'],
      ['A', '2026-11-21', 'CNY', 1, '500000'],
      ['A', '2026-11-21', null, 1, null],
      ['B', '2026-11-20', 'USD', 1, '11850000'],
      ['B', '2026-11-21', 'USD', 1, '2500000'],
      ['B', '2026-11-21', null, 1, null],
    ]);
  });

  it('csv: one line per group and per currency total, exact decimal costs', () => {
    const csv = report({ since: '2026-11-15', until: '2026-11-22', by: 'model', format: 'csv' });
    expect(csv.trimEnd().split('\n')).toEqual([
      'row,model,currency,requests,cost,cost_nanos,input_tokens,cache_read_tokens,cache_write_tokens,output_tokens,reasoning_tokens,estimated,missing,unpriced,errors',
      'group,claude-sonnet-4,USD,2,0.01435,14350000,800,1200,60,1000,240,0,0,0,0',
      'group,deepseek-chat,CNY,3,0.00262868,2628680,1200,1800,90,1500,360,1,0,0,0',
      'group,deepseek-chat,,1,,,,,,,,0,1,0,1',
      'group,mystery-model,,1,,,100,,,50,,0,0,1,0',
      'total,,CNY,3,0.00262868,2628680,1200,1800,90,1500,360,1,0,0,0',
      'total,,USD,2,0.01435,14350000,800,1200,60,1000,240,0,0,0,0',
      'total,,,2,,,100,,,50,,0,1,1,1',
    ]);
  });

  it('table: per-currency totals, unknown shown as "-", caveats always printed', () => {
    const table = report({ since: '7d' });
    const lines = table.split('\n');
    const cny = lines.find((l) => /\bCNY\b/.test(l))!;
    expect(cny.split(/\s+/).filter(Boolean)).toEqual([
      'CNY',
      '3',
      '0.00262868',
      '1200',
      '1800',
      '90',
      '1500',
      '360',
      '1',
      '0',
      '0',
      '0',
    ]);
    const usd = lines.find((l) => /\bUSD\b/.test(l))!;
    expect(usd.split(/\s+/).filter(Boolean)).toEqual([
      'USD',
      '2',
      '0.01435',
      '800',
      '1200',
      '60',
      '1000',
      '240',
      '0',
      '0',
      '0',
      '0',
    ]);
    expect(table).toContain('of 7 requests: 1 with estimated usage, 1 with missing usage, 1 unpriced');
    expect(table).not.toContain('converted total');
  });

  it('converts a grand total only with FX rates, and names the currencies it could not convert', () => {
    // From the config file, as an operator writes it; report_currency is the default target.
    const fxConfig = 'fx:\n  - { from: USD, to: CNY, rate: 7.1 }\nreport_currency: CNY\n';
    const json = JSON.parse(report({ since: '7d', format: 'json' }, fxConfig)) as {
      converted: Record<string, unknown>;
      totals: Array<Record<string, unknown>>;
    };
    // 14350000 × 7.1 = 101885000; + 2628680 = 104513680
    expect(json.converted).toEqual({
      currency: 'CNY',
      cost: '0.10451368',
      cost_nanos: '104513680',
      unconverted: [],
    });
    // Record currencies are never rewritten.
    expect(json.totals.map((t) => t['currency'])).toEqual(['CNY', 'USD', null]);

    const table = report({ since: '7d', currency: 'EUR' }, fxConfig);
    expect(table).toContain('converted total: 0.00 EUR (excludes CNY, USD: no FX rate to EUR)');
  });
});

describe('audit CLI commands (real child process)', () => {
  const entry = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));
  // By URL: the child runs in the temp dir, where a bare `tsx` would not resolve.
  const tsxLoader = new URL('../../node_modules/tsx/dist/loader.mjs', import.meta.url).href;
  const run = (args: string[], input?: string) =>
    spawnSync(process.execPath, ['--import', tsxLoader, entry, ...args], {
      encoding: 'utf8',
      input,
      env: { ...process.env, TOKENMETER_DB: '', TOKENMETER_CONFIG: '' },
      cwd: tmp.dir,
      timeout: 30_000,
    });

  it('report prints json; bad --since and a missing DB exit non-zero with one line', () => {
    const ok = run([
      'report',
      '--db',
      dbPath,
      '--since',
      '2026-11-01',
      '--until',
      '2026-11-22',
      '--format',
      'json',
    ]);
    expect(ok.status).toBe(0);
    expect((JSON.parse(ok.stdout) as { caveats: unknown }).caveats).toEqual({
      estimated: 1,
      missing: 1,
      unpriced: 1,
      requests: 7,
    });

    const badSince = run(['report', '--db', dbPath, '--since', 'yesterday']);
    expect(badSince.status).toBe(2);
    expect(badSince.stderr.trim().split('\n')).toHaveLength(1);
    expect(badSince.stderr).toContain('--since');

    // The DB path also comes from the config file's db:, relative to the file (as for serve).
    writeFileSync(tmp.file('tokenmeter.yaml'), 'db: audit.db\n');
    const viaConfig = run(['report', '--since', '2026-11-01', '--until', '2026-11-22', '--format', 'csv']);
    expect(viaConfig.status).toBe(0);
    expect(viaConfig.stdout).toContain('total,CNY,3,0.00262868,2628680');

    const badConfig = run(['report', '--config', tmp.file('nope.yaml')]);
    expect(badConfig.status).not.toBe(0);
    expect(badConfig.stderr.trim().split('\n')).toHaveLength(1);

    const missing = run(['report', '--db', tmp.file('nope.db')]);
    expect(missing.status).toBe(1);
    expect(missing.stderr.trim().split('\n')).toEqual([
      `tokenmeter: audit DB ${tmp.file('nope.db')} does not exist; pass --db or set TOKENMETER_DB`,
    ]);
  });

  it('db prune deletes old rows and prints the count; db migrate prints the version', () => {
    const before = openSqlite(dbPath, { readonly: true });
    const count = (sql: string): number =>
      (before.prepare(sql).get(Date.now() - 30 * DAY_MS) as { n: number }).n;
    const expectedPruned = count('SELECT COUNT(*) AS n FROM requests WHERE ts_start < ?');
    const expectedLeft = count('SELECT COUNT(*) AS n FROM requests WHERE ts_start >= ?');
    before.close();
    expect(expectedPruned).toBeGreaterThan(0); // the 2026-10-01 row at least

    const prune = run(['db', 'prune', '--older-than', '30d', '--db', dbPath]);
    expect(prune.status).toBe(0);
    expect(prune.stdout).toMatch(new RegExp(`^pruned ${expectedPruned} rows older than 30d`));
    const check = openSqlite(dbPath, { readonly: true });
    expect(check.prepare('SELECT COUNT(*) AS n FROM requests').get()).toEqual({ n: expectedLeft });
    const left = (check.prepare('SELECT MIN(ts_start) AS t FROM requests').get() as { t: number | null }).t;
    check.close();
    expect(left === null || left >= Date.now() - 30 * DAY_MS).toBe(true);

    const migrate = run(['db', 'migrate', '--db', tmp.file('fresh.db')]);
    expect(migrate.stdout).toBe(`schema version ${SCHEMA_VERSION} (migrated from 0)\n`);
    expect(run(['db', 'migrate', '--db', tmp.file('fresh.db')]).stdout).toBe(
      `schema version ${SCHEMA_VERSION} (up to date)\n`,
    );

    const bad = run(['db', 'prune', '--older-than', 'ninety', '--db', dbPath]);
    expect(bad.status).toBe(2);
  });

  it('key-id prints the fingerprint with the DB secret (created once) and never echoes the key', () => {
    const key = 'sk-test-key-0123456789';
    const fresh = tmp.file('keys.db');
    const first = run(['key-id', key, '--db', fresh]);
    expect(first.status).toBe(0);
    expect(first.stdout).toMatch(/^[0-9a-f]{12}\n$/);
    expect(first.stdout + first.stderr).not.toContain(key);
    const db = openSqlite(fresh, { readonly: true });
    const secret = (db.prepare(`SELECT value FROM meta WHERE key = 'key_secret'`).get() as { value: string })
      .value;
    db.close();
    expect(first.stdout.trim()).toBe(keyFingerprint(secret, key));
    // Same DB → same fingerprint (the secret was kept), also when the key comes from stdin.
    expect(run(['key-id', '-', '--db', fresh], `${key}\n`).stdout).toBe(first.stdout);
    // A configured salt (config file key_salt, or --key-salt) wins over the DB secret.
    const salted = run(['key-id', key, '--key-salt', 'flag-salt-0123456789', '--db', fresh]);
    expect(salted.stdout.trim()).toBe(keyFingerprint('flag-salt-0123456789', key));
    writeFileSync(tmp.file('salted.yaml'), 'key_salt: configured-salt-0123456789\n');
    const fromConfig = run(['key-id', key, '--config', tmp.file('salted.yaml'), '--db', fresh]);
    expect(fromConfig.stdout.trim()).toBe(keyFingerprint('configured-salt-0123456789', key));
  });
});
