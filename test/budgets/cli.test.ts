import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { budgetsCommand } from '../../src/cli/budgets.js';
import { SILENT_LOGGER } from '../../src/log.js';
import { openAuditLog } from '../../src/sinks/audit/index.js';
import { NOOP_HEALTH } from '../../src/sinks/types.js';
import { makeRecord } from '../metrics/records.js';

const NOW = Date.parse('2026-11-23T06:00:00Z'); // Monday; 14:00 in Shanghai

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'tokenmeter-budgets-cli-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

async function seedDb(path: string): Promise<void> {
  const audit = openAuditLog({
    path,
    queueSize: 100,
    batchSize: 10,
    flushIntervalMs: 10,
    retentionDays: 3650,
    captureBodies: false,
    captureMaxBytes: 0,
    redactPatterns: [],
    health: NOOP_HEALTH,
    log: SILENT_LOGGER,
    now: () => NOW,
  });
  const rec = (ts: string, cost: number | null, over: Parameters<typeof makeRecord>[0] = {}) =>
    audit.write(
      makeRecord({
        ts_start: Date.parse(ts),
        cost_nanos: cost,
        currency: cost === null ? null : 'CNY',
        ...over,
      }),
    );
  rec('2026-11-22T17:00:00Z', 1_500_000_000, { app: 'chatbot' }); // Nov 23 01:00 Shanghai: today
  rec('2026-11-23T05:00:00Z', 2_000_000_000, { app: 'chatbot' });
  rec('2026-11-22T15:00:00Z', 4_000_000_000, { app: 'chatbot' }); // Nov 22 23:00 Shanghai: yesterday
  rec('2026-11-23T05:30:00Z', 9_000_000_000, { app: 'batch' }); // other app
  rec('2026-11-23T05:40:00Z', null, { app: 'chatbot', cost_source: 'unpriced' });
  await audit.close();
}

describe('tokenmeter budgets', () => {
  it('prints period-to-date spend, limit, ratio and projection from the audit log', async () => {
    const db = join(dir, 'audit.db');
    await seedDb(db);
    writeFileSync(
      join(dir, 'tokenmeter.yaml'),
      [
        'db: audit.db',
        'budgets:',
        '  - name: chatbot-daily',
        '    scope: { app: chatbot }',
        '    period: day',
        '    timezone: Asia/Shanghai',
        '    limit: 10',
        '    currency: CNY',
        '    warn_at: [0.3, 0.8]',
        '    action: block',
        '  - name: all-month',
        '    period: month',
        '    limit: 1000',
        '    currency: CNY',
        '',
      ].join('\n'),
    );

    const json = JSON.parse(budgetsCommand({ format: 'json' }, {}, dir, NOW)) as Array<
      Record<string, unknown>
    >;
    expect(json[0]).toEqual({
      name: 'chatbot-daily',
      scope: { app: 'chatbot' },
      period: 'day',
      timezone: 'Asia/Shanghai',
      period_start: '2026-11-22T16:00:00.000Z',
      period_end: '2026-11-23T16:00:00.000Z',
      period_start_date: '2026-11-23',
      currency: 'CNY',
      limit: '10',
      spent: '3.5',
      // 3.5 spent in 14 h of a 24 h day → 6.0 projected
      projected: '6',
      limit_nanos: '10000000000',
      spent_nanos: '3500000000',
      projected_nanos: '6000000000',
      ratio: 0.35,
      warn_at: [0.3, 0.8],
      warnings_crossed: [0.3],
      exceeded: false,
      action: 'block',
    });
    // Month in UTC: everything since Nov 1 (all four priced rows).
    expect(json[1]).toMatchObject({
      name: 'all-month',
      spent: '16.5',
      timezone: 'UTC',
      period_start_date: '2026-11-01',
    });

    const table = budgetsCommand({}, {}, dir, NOW);
    const lines = table.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^budget\s+scope\s+period\s+since\s+spent\s+limit\s+used\s+projected\s+state$/);
    expect(lines[1]).toMatch(
      /^chatbot-daily\s+app=chatbot\s+day \(Asia\/Shanghai\)\s+2026-11-23\s+3\.50 CNY\s+10\.00 CNY\s+35\.0%\s+6\.00 CNY\s+warn ≥30%$/,
    );
    expect(lines[2]).toMatch(
      /^all-month\s+all\s+month \(UTC\)\s+2026-11-01\s+16\.50 CNY\s+1000\.00 CNY\s+1\.7%/,
    );
  });

  it('--db overrides the config, and a missing DB or bad format is a one-line error', async () => {
    writeFileSync(
      join(dir, 'tokenmeter.yaml'),
      'budgets:\n  - { name: b, period: week, limit: 5, currency: CNY }\n',
    );
    expect(() => budgetsCommand({ db: 'nope.db' }, {}, dir, NOW)).toThrow(
      /audit DB .*nope\.db does not exist/,
    );
    expect(() => budgetsCommand({ format: 'csv' }, {}, dir, NOW)).toThrow(/--format: expected table or json/);
    const other = join(dir, 'other.db');
    await seedDb(other);
    const json = JSON.parse(budgetsCommand({ db: other, format: 'json' }, {}, dir, NOW)) as Array<{
      spent: string;
    }>;
    // ISO week from Monday Nov 23 00:00 UTC: the two Sunday rows fall in the previous week.
    expect(json[0]!.spent).toBe('11');
  });

  it('says so when no budgets are configured', () => {
    writeFileSync(join(dir, 'tokenmeter.yaml'), 'port: 4000\n');
    expect(budgetsCommand({}, {}, dir, NOW)).toMatch(/^no budgets configured in .*tokenmeter\.yaml\n$/);
    expect(budgetsCommand({ format: 'json' }, {}, dir, NOW)).toBe('[]\n');
  });
});
