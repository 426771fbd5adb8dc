/**
 * RequestRecord ⇄ SQLite row. The one place that decides what a record field becomes in its
 * column, including the last line of defence for the INTEGER token and money columns: decoders
 * reject implausible usage (issue 11), but a value that reaches the writer anyway (1e30, 2^53+1,
 * a negative or fractional count) must never be stored — SQLite would keep 1e30 as a REAL in an
 * INTEGER column, and every later SUM in `report` and budgets would be wrong or lose precision.
 */
import type { RequestRecord } from '../../record.js';
import { REQUEST_COLUMNS, REQUEST_COLUMN_NAMES, type RequestColumn } from './migrations.js';

/**
 * One record's column values in `REQUEST_COLUMN_NAMES` order. Positional, not keyed: a row is
 * built per request, crosses to the writer thread as JSON and is bound to the INSERT's `?`
 * parameters, and keys made up about half of that text and of the garbage it left (issue 11,
 * docs/audit.md).
 */
export type Row = Array<string | number | bigint | null>;

/** Where each column's value sits in a Row. */
export const ROW_INDEX = Object.fromEntries(REQUEST_COLUMN_NAMES.map((name, i) => [name, i])) as Record<
  RequestColumn,
  number
>;

/** Counts of tokens and images: non-negative safe integers or NULL (unknown). */
const COUNT_COLUMNS = [
  'input_tokens',
  'cache_read_tokens',
  'cache_write_tokens',
  'cache_write_1h_tokens',
  'output_tokens',
  'reasoning_tokens',
  'images',
] as const satisfies readonly RequestColumn[];

/** Money in nanos: a non-negative safe integer (≈ 9 million currency units per request) or NULL. */
const MONEY_COLUMNS = [
  'cost_nanos',
  'upstream_reported_cost_nanos',
  'computed_cost_nanos',
] as const satisfies readonly RequestColumn[];

const plausible = (v: unknown): boolean => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/** Nulls the columns whose value is not plausible; returns their names (empty when all are fine). */
function rejectImplausible(row: Row, columns: readonly RequestColumn[]): string[] {
  const rejected: string[] = [];
  for (const c of columns) {
    const i = ROW_INDEX[c];
    const v = row[i];
    if (v === null || plausible(v)) continue;
    row[i] = null;
    rejected.push(c);
  }
  return rejected;
}

/**
 * The record's values in column order, booleans as 0/1 and undefined as null: one array literal
 * with a fixed property read per column, made once from `REQUEST_COLUMN_NAMES`. Written as a loop
 * over the names, each read was a keyed lookup on a changing key (≈ 1 µs a row on the request
 * path, issue 11); this is ≈ 0.05 µs. The column names are our own constants, never input.
 */
const projectRow = new Function(
  'r',
  `return [${REQUEST_COLUMN_NAMES.map((name) => {
    const v = `r[${JSON.stringify(name)}]`;
    return REQUEST_COLUMNS[name].kind === 'bool' ? `(${v} == null ? null : ${v} ? 1 : 0)` : `(${v} ?? null)`;
  }).join(', ')}];`,
) as (record: RequestRecord) => Row;

/** Where the other INTEGER columns sit in a Row: counts and money are `rejectImplausible`'s. */
const checked: readonly RequestColumn[] = [...COUNT_COLUMNS, ...MONEY_COLUMNS];
const OTHER_INTEGER_INDEXES = REQUEST_COLUMN_NAMES.flatMap((name, i) =>
  REQUEST_COLUMNS[name].kind === 'integer' && !checked.includes(name) ? [i] : [],
);

/**
 * RequestRecord → bound parameters: booleans as 0/1, everything else as is (null stays null).
 * NaN or ±Infinity in any other INTEGER column becomes NULL (SQLite would store Infinity as a REAL);
 * the row reaches the writer thread by structured clone, which keeps them, unlike JSON.
 * An implausible count or cost becomes NULL — unknown, never a number — and the row's `note` says
 * which (`token_count_rejected:<columns>`, `cost_rejected:<columns>`); `onRejected` is called once
 * per such row so the caller can count it.
 */
export function recordToRow(record: RequestRecord, onRejected?: (columns: string[]) => void): Row {
  const row = projectRow(record);
  const tokens = rejectImplausible(row, COUNT_COLUMNS);
  const money = rejectImplausible(row, MONEY_COLUMNS);
  for (const i of OTHER_INTEGER_INDEXES) {
    const v = row[i];
    if (typeof v === 'number' && !Number.isFinite(v)) row[i] = null;
  }
  if (tokens.length > 0 || money.length > 0) {
    const note = row[ROW_INDEX.note];
    const notes = typeof note === 'string' && note !== '' ? [note] : [];
    if (tokens.length > 0) notes.push(`token_count_rejected:${tokens.join(',')}`);
    if (money.length > 0) notes.push(`cost_rejected:${money.join(',')}`);
    row[ROW_INDEX.note] = notes.join('; ');
    onRejected?.([...tokens, ...money]);
  }
  return row;
}

/** A row's value for one column (tests, logs). */
export function rowValue(row: Row, column: RequestColumn): string | number | bigint | null {
  return row[ROW_INDEX[column]] ?? null;
}

/** A stored row → RequestRecord (the inverse of `recordToRow`). */
export function rowToRecord(row: Record<string, unknown>): RequestRecord {
  const out: Record<string, unknown> = {};
  for (const name of REQUEST_COLUMN_NAMES) {
    const value = row[name] ?? null;
    out[name] = REQUEST_COLUMNS[name].kind === 'bool' && value !== null ? value === 1 || value === 1n : value;
  }
  return out as unknown as RequestRecord;
}
