/**
 * Billing snapshots (issue 13, docs/reconcile.md) into the audit log's `billing_snapshots` table
 * (migration 4). A poll every few minutes is tiny, so it goes through the connection that owns
 * the writes (the writer thread's `exec`, in order with the record batches): the single-writer
 * rule of this sink holds and no second write connection is opened on the main thread.
 *
 * `exec` takes SQL text, not parameters, so every value is rendered as a literal here: integers
 * are checked to be integers, text is quoted with '' doubled. The values come from config
 * (upstream, source), a fingerprint (hex) and parsed numbers, never from a request.
 */

/** A `billing_snapshots` row; money in integer nanos, instants in epoch ms; undefined = NULL. */
export interface BillingSnapshotRow {
  ts: number;
  upstream: string;
  key_id: string | null;
  source: string;
  currency: string;
  balance_nanos?: bigint;
  daily_used_nanos?: bigint;
  monthly_used_nanos?: bigint;
  total_used_nanos?: bigint;
  granted_nanos?: bigint;
  daily_reset_at?: number;
  monthly_reset_at?: number;
}

const COLUMNS = [
  'ts',
  'upstream',
  'key_id',
  'source',
  'currency',
  'balance_nanos',
  'daily_used_nanos',
  'monthly_used_nanos',
  'total_used_nanos',
  'granted_nanos',
  'daily_reset_at',
  'monthly_reset_at',
] as const satisfies ReadonlyArray<keyof BillingSnapshotRow>;

/** INTEGER columns hold at most a signed 64-bit value. */
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

function literal(value: string | number | bigint | null | undefined): string {
  if (value === null || value === undefined) return 'NULL';
  if (typeof value === 'string') {
    if (value.includes('\u0000')) throw new TypeError('billing snapshot text contains NUL');
    return `'${value.replace(/'/g, "''")}'`;
  }
  const n = typeof value === 'bigint' ? value : Number.isSafeInteger(value) ? BigInt(value) : undefined;
  if (n === undefined || n < INT64_MIN || n > INT64_MAX)
    throw new RangeError(`billing snapshot value is not a 64-bit integer: ${String(value)}`);
  return n.toString();
}

/** The INSERT statement for one snapshot. Throws (TypeError/RangeError) on a value it cannot store. */
export function billingSnapshotSql(row: BillingSnapshotRow): string {
  const values = COLUMNS.map((c) => literal(row[c]));
  return `INSERT INTO billing_snapshots (${COLUMNS.join(', ')}) VALUES (${values.join(', ')});`;
}
