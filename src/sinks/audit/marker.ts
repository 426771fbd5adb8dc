/**
 * The unclean-shutdown marker (issue 11): `serve` keeps a `serve_running` row in `meta` while it
 * owns the audit log and deletes it on a clean `close()`. Records wait up to a flush interval in
 * memory, so a SIGKILL, an OOM kill or a power cut loses the last ones silently; the marker still
 * being there at the next open is how that loss becomes visible. Only the serve writer sets or
 * clears it: `report`, `db` and `budgets` open the file through `openDatabase` and never touch it.
 */
import { hostname } from 'node:os';
import type Database from 'better-sqlite3';

export const MARKER_KEY = 'serve_running';

/** What the previous serve left behind when it did not shut down cleanly. */
export interface UncleanShutdown {
  /** When that run opened the DB (epoch ms); null if the marker could not be read. */
  since: number | null;
  pid: number | null;
  host: string | null;
  /** That run's flush interval: roughly how long before it stopped records may be missing. */
  flushIntervalMs: number | null;
  /** ts_start of the newest row in the file (epoch ms); null for an empty table. */
  newestRecordTsStart: number | null;
}

interface MarkerValue {
  since: number;
  pid: number;
  host: string;
  flush_interval_ms: number;
}

const numberOrNull = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);

/** The marker left by a previous run, if any (a malformed value still counts: something was running). */
export function readUncleanShutdown(db: Database.Database): UncleanShutdown | undefined {
  const row = db.prepare('SELECT value FROM meta WHERE key = ?').get(MARKER_KEY) as
    { value: string } | undefined;
  if (!row) return undefined;
  let parsed: Partial<Record<keyof MarkerValue, unknown>> = {};
  try {
    const value: unknown = JSON.parse(row.value);
    if (value && typeof value === 'object') parsed = value as typeof parsed;
  } catch {
    // Unreadable marker: report the unclean shutdown with unknown details rather than hide it.
  }
  const newest = db.prepare('SELECT MAX(ts_start) AS ts FROM requests').get() as { ts: number | null };
  return {
    since: numberOrNull(parsed.since),
    pid: numberOrNull(parsed.pid),
    host: typeof parsed.host === 'string' ? parsed.host : null,
    flushIntervalMs: numberOrNull(parsed.flush_interval_ms),
    newestRecordTsStart: numberOrNull(newest.ts),
  };
}

/** Sets this process's marker (replacing a previous one); returns the stored value to clear it later. */
export function setServeMarker(db: Database.Database, sinceMs: number, flushIntervalMs: number): string {
  const value: MarkerValue = {
    since: sinceMs,
    pid: process.pid,
    host: hostname(),
    flush_interval_ms: flushIntervalMs,
  };
  const text = JSON.stringify(value);
  writeServeMarker(db, text);
  return text;
}

/** Writes a marker value made by `setServeMarker` (into a DB reopened after a loss, by the writer). */
export function writeServeMarker(db: Database.Database, text: string): void {
  db.prepare(
    'INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
  ).run(MARKER_KEY, text);
}

/**
 * Clears the marker only if it is still ours: if another serve took the file over meanwhile, its
 * marker is its own business.
 */
export function clearServeMarker(db: Database.Database, value: string): void {
  db.prepare('DELETE FROM meta WHERE key = ? AND value = ?').run(MARKER_KEY, value);
}
