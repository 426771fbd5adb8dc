/**
 * recordToRow (src/sinks/audit/row.ts): the generated projection gives every column in
 * REQUEST_COLUMN_NAMES order, booleans as 0/1, null and undefined as null, values as they are.
 */
import { describe, expect, it } from 'vitest';
import { recordToRow } from '../../src/sinks/audit/row.js';
import { REQUEST_COLUMN_NAMES, REQUEST_COLUMNS } from '../../src/sinks/audit/migrations.js';
import type { RequestRecord } from '../../src/record.js';
import { fullRecord } from './records.js';

/** The plain loop the projection replaces, as the reference. */
function reference(r: RequestRecord): unknown[] {
  return REQUEST_COLUMN_NAMES.map((name) => {
    const v = (r as unknown as Record<string, unknown>)[name];
    if (REQUEST_COLUMNS[name].kind === 'bool') return v === null || v === undefined ? null : v ? 1 : 0;
    return v ?? null;
  });
}

describe('recordToRow', () => {
  it('projects every column in order, booleans as 0/1, missing values as null', () => {
    const full = fullRecord({ stream: true });
    const off = fullRecord({ stream: false, note: null, user: null });
    const partial = { ...fullRecord(), stream: undefined, app: undefined } as unknown as RequestRecord;
    for (const r of [full, off, partial]) expect(recordToRow(r)).toEqual(reference(r));
    const row = recordToRow(off);
    expect(row).toHaveLength(REQUEST_COLUMN_NAMES.length);
    expect(row[REQUEST_COLUMN_NAMES.indexOf('stream')]).toBe(0);
    expect(recordToRow(full)[REQUEST_COLUMN_NAMES.indexOf('stream')]).toBe(1);
    expect(recordToRow(partial)[REQUEST_COLUMN_NAMES.indexOf('stream')]).toBeNull();
    expect(recordToRow(partial)[REQUEST_COLUMN_NAMES.indexOf('app')]).toBeNull();
  });
});
