/** `tokenmeter reconcile` as a function of its flags: usage errors, a missing DB, --import wiring. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { reconcileCommand } from '../../src/cli/reconcile.js';
import { UsageError } from '../../src/errors.js';
import { openDatabase } from '../../src/sinks/audit/migrations.js';
import { ROOT } from '../e2e/helpers.js';

let dir: string;
let db: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'tm-reconcile-cli-'));
  db = join(dir, 'a.db');
  openDatabase(db).close();
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const run = (flags: Record<string, string>) =>
  reconcileCommand({ db, ...flags }, {}, dir, Date.UTC(2026, 11, 1));

describe('tokenmeter reconcile flags', () => {
  it('refuses a bad format, window or import option with a usage error', async () => {
    await expect(run({ format: 'csv' })).rejects.toThrow(UsageError);
    await expect(run({ since: '2026-12-02' })).rejects.toThrow(/--since must be before --until/);
    await expect(run({ import: 'x.json', importFormat: 'xml' })).rejects.toThrow(/--import-format/);
    await expect(run({ import: 'x.json', quotaPerUsd: '0' })).rejects.toThrow(/--quota-per-usd/);
    await expect(run({ import: 'x.json', matchWindow: 'soon' })).rejects.toThrow(/--match-window/);
  });

  it('says when there is nothing to reconcile; a missing DB is an error', async () => {
    expect(await run({})).toContain('nothing to reconcile');
    expect(JSON.parse(await run({ format: 'json' }))).toMatchObject({ lines: [] });
    await expect(reconcileCommand({ db: join(dir, 'nope.db') }, {}, dir)).rejects.toThrow(/does not exist/);
  });

  it('--import adds the per-request match (src/reconcile/import.ts) to the output', async () => {
    const file = join(ROOT, 'test/fixtures/usage-logs/usage-log.csv');
    const text = await run({ import: file, since: '3000d' });
    expect(text).toContain(`imported usage log ${file}:`);
    const doc = JSON.parse(await run({ import: file, since: '3000d', format: 'json' })) as Record<
      string,
      unknown
    >;
    expect(doc).toHaveProperty('import');
    expect(doc.lines).toEqual([]);
  });

  it('--import without --since/--until reads the whole log, however old (the 24h default is for billed vs metered)', async () => {
    const file = join(ROOT, 'test/fixtures/usage-logs/usage-log.csv');
    const doc = JSON.parse(await run({ import: file, format: 'json' })) as {
      import: { counts: { outside_window: number; consumption: number }; settings: { from_ms: unknown } };
    };
    expect(doc.import.counts.outside_window).toBe(0);
    expect(doc.import.counts.consumption).toBeGreaterThan(0);
    expect(doc.import.settings.from_ms).toBeNull();
    // An explicit --since still bounds it.
    const bounded = JSON.parse(await run({ import: file, format: 'json', since: '24h' })) as {
      import: { counts: { outside_window: number } };
    };
    expect(bounded.import.counts.outside_window).toBeGreaterThan(0);
  });
});
