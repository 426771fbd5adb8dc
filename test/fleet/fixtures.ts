/** Shared pieces of the fleet tests: a local audit DB with rows, and a shipper's recorded metrics. */
import { join } from 'node:path';
import type Database from 'better-sqlite3';
import type { FleetSettings } from '../../src/config/types.js';
import { startShipper } from '../../src/fleet/shipper.js';
import { SILENT_LOGGER } from '../../src/log.js';
import { openDatabase, quoteIdent, REQUEST_COLUMN_NAMES } from '../../src/sinks/audit/migrations.js';
import { recordToRow } from '../../src/sinks/audit/row.js';
import type { FleetShipMetrics } from '../../src/sinks/metrics.js';
import type { RequestRecord } from '../../src/record.js';
import { fullRecord } from '../audit/records.js';

export function openAuditDb(path: string): Database.Database {
  return openDatabase(path);
}

/** Inserts records in the given order (as the writer thread does, one transaction). */
export function insertRecords(db: Database.Database, records: RequestRecord[]): void {
  const cols = REQUEST_COLUMN_NAMES.map(quoteIdent).join(', ');
  const params = REQUEST_COLUMN_NAMES.map(() => '?').join(', ');
  const insert = db.prepare(`INSERT INTO requests (${cols}) VALUES (${params})`);
  db.transaction(() => {
    for (const r of records) insert.run(...recordToRow(r));
  })();
}

/** `n` records whose ts_start runs backwards: insertion order is not ts_start order. */
export function records(n: number, base = Date.UTC(2026, 10, 20)): RequestRecord[] {
  return Array.from({ length: n }, (_v, i) =>
    fullRecord({
      ts_start: base - i * 1000,
      ts_end: base - i * 1000 + 5,
      cost_nanos: 1_000_000_007 * (i + 1),
    }),
  );
}

/** The UTC day the two-host fleet's records lead up to (they span the 24 h before it). */
export const FLEET_DAY = Date.UTC(2026, 10, 20);
/** A report window (`--since`/`--until`, or the console's `since`/`until`) holding every one of them. */
export const FLEET_WINDOW = { since: '2026-11-18', until: '2026-11-22' };

/** Mixed currencies, unpriced and estimated rows, and costs whose sum passes 2^53 nanos. */
export function hostRecords(salt: number): RequestRecord[] {
  const out: RequestRecord[] = [];
  for (let i = 0; i < 30; i++) {
    const kind = i % 5;
    out.push(
      fullRecord({
        ts_start: FLEET_DAY - 86_400_000 + i * 3_600_000 + salt,
        ts_end: FLEET_DAY - 86_400_000 + i * 3_600_000 + salt + 5,
        app: i % 2 === 0 ? 'billing-bot' : 'search',
        request_model: i % 3 === 0 ? 'gpt-4o' : 'deepseek-chat',
        currency: kind === 4 ? null : kind === 3 ? 'USD' : 'CNY',
        cost_nanos: kind === 4 ? null : 1_234_567_890_123_457 + i * 1_000_003 + salt,
        cost_source: kind === 4 ? 'unpriced' : 'computed',
        usage_source: i % 7 === 0 ? 'estimated' : 'reported',
      }),
    );
  }
  return out;
}

/**
 * A fleet of `hosts`: each gets its own audit DB in `dir` holding `hostRecords(n * 17)` (n its
 * index), shipped to the Postgres at `url` by the real shipper, which is then stopped. Returns each
 * host's DB path and records.
 */
export async function shipHosts(
  url: string,
  dir: string,
  hosts: readonly string[],
): Promise<Record<string, { dbPath: string; records: RequestRecord[] }>> {
  const out: Record<string, { dbPath: string; records: RequestRecord[] }> = {};
  for (const [n, host] of hosts.entries()) {
    const dbPath = join(dir, `${host}.db`);
    const rows = hostRecords(n * 17);
    out[host] = { dbPath, records: rows };
    const local = openAuditDb(dbPath);
    insertRecords(local, rows);
    local.close();
    const shipper = startShipper({
      dbPath,
      fleet: { ...fleetSettings(url), host },
      metrics: recordedMetrics(),
      log: SILENT_LOGGER,
    });
    await waitFor(() => shipper.shipped() === rows.length);
    await shipper.stop();
  }
  return out;
}

export interface RecordedMetrics extends FleetShipMetrics {
  lagValue: number | undefined;
  shippedTotal: number;
  failures: number;
}

export function recordedMetrics(): RecordedMetrics {
  const m: RecordedMetrics = {
    lagValue: undefined,
    shippedTotal: 0,
    failures: 0,
    lag: (rows) => void (m.lagValue = rows),
    shipped: (rows) => void (m.shippedTotal += rows),
    failure: () => void m.failures++,
  };
  return m;
}

export function fleetSettings(url: string, over: Partial<FleetSettings['postgres']> = {}): FleetSettings {
  return {
    host: 'test-host',
    reservationTtlMs: 600_000,
    budgetTimeoutMs: 2_000,
    postgres: { url, poolSize: 2, shipIntervalMs: 20, batchSize: 7, ...over },
  };
}

export async function waitFor(cond: () => boolean | Promise<boolean>, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The JSON body of a non-streamed gpt-4o-mini chat completion reporting this usage (fake upstreams). */
export function chatCompletionBody(promptTokens: number, completionTokens: number): string {
  return JSON.stringify({
    id: 'chatcmpl-1',
    object: 'chat.completion',
    model: 'gpt-4o-mini',
    choices: [{ index: 0, message: { role: 'assistant', content: 'hi' }, finish_reason: 'stop' }],
    usage: {
      prompt_tokens: promptTokens,
      completion_tokens: completionTokens,
      total_tokens: promptTokens + completionTokens,
    },
  });
}
