/** Shared pieces of the fleet tests: a local audit DB with rows, and a shipper's recorded metrics. */
import type Database from 'better-sqlite3';
import type { FleetSettings } from '../../src/config/types.js';
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
