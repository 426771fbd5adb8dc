import { decodeTime, isValid } from 'ulid';
import { describe, expect, it } from 'vitest';
import { newRecordId } from '../src/ids.js';

describe('record ids', () => {
  it('are valid ULIDs carrying the timestamp', () => {
    const now = 1_795_000_000_123;
    const id = newRecordId(now);
    expect(id).toHaveLength(26);
    expect(isValid(id)).toBe(true);
    expect(decodeTime(id)).toBe(now);
  });

  it('are unique across many draws (pool refills included)', () => {
    const ids = new Set<string>();
    for (let i = 0; i < 5000; i++) ids.add(newRecordId());
    expect(ids.size).toBe(5000);
  });

  it('sort by time', () => {
    expect(newRecordId(1000) < newRecordId(2000)).toBe(true);
  });
});
