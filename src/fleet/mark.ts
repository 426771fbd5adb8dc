/**
 * The shipper's high-water mark: the SQLite `rowid` of the last row committed to Postgres, kept in
 * a small JSON file beside the audit DB (`<db>.fleet-ship.json`).
 *
 * A file, not a table in the audit DB: the writer thread owns every write to that DB, and a second
 * writing connection would contend for its lock on the event loop. Atomicity comes from
 * write-to-temp + rename. Losing or rewinding the mark is harmless: rows are upserted by id, so
 * re-shipping them never duplicates anything; only a mark ahead of the truth could skip rows, and
 * `validateMark` resets a mark that does not belong to this DB file.
 */
import { readFileSync } from 'node:fs';
import { rename, writeFile } from 'node:fs/promises';
import type Database from 'better-sqlite3';

export interface ShipMark {
  /** SQLite rowid of the last shipped row; 0 = nothing shipped. */
  rowid: bigint;
  /** That row's record id, to recognise a replaced DB file. */
  id: string | null;
}

export const ZERO_MARK: ShipMark = { rowid: 0n, id: null };

export const markPathFor = (dbPath: string): string => `${dbPath}.fleet-ship.json`;

/** Reads the mark; a missing or unreadable file means start from the beginning. */
export function readMark(path: string): ShipMark {
  try {
    const raw = JSON.parse(readFileSync(path, 'utf8')) as { rowid?: unknown; id?: unknown };
    if (typeof raw.rowid !== 'string' || !/^\d+$/.test(raw.rowid)) return ZERO_MARK;
    return { rowid: BigInt(raw.rowid), id: typeof raw.id === 'string' ? raw.id : null };
  } catch {
    return ZERO_MARK;
  }
}

export async function writeMark(path: string, mark: ShipMark): Promise<void> {
  const tmp = `${path}.tmp`;
  await writeFile(tmp, JSON.stringify({ rowid: mark.rowid.toString(), id: mark.id }) + '\n');
  await rename(tmp, path);
}

/**
 * Keeps a mark that fits this DB, else starts over: the row at the mark holding another id, or a
 * mark beyond the DB's last rowid, means the file was replaced (re-shipping is harmless).
 * A missing row at the mark is fine: retention deleted it after it was shipped.
 */
export function validateMark(db: Database.Database, mark: ShipMark): ShipMark {
  if (mark.rowid === 0n) return mark;
  const at = db.prepare('SELECT id FROM requests WHERE rowid = ?').get(mark.rowid) as
    { id: string } | undefined;
  if (at !== undefined) return at.id === mark.id ? mark : ZERO_MARK;
  const max = db.prepare('SELECT max(rowid) AS m FROM requests').safeIntegers(true).get() as {
    m: bigint | null;
  };
  return max.m !== null && max.m > mark.rowid ? mark : ZERO_MARK;
}
