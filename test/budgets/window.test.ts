import { describe, expect, it } from 'vitest';
import { assertTimeZone, periodWindow } from '../../src/budgets/window.js';

const at = (iso: string) => Date.parse(iso);
const iso = (ms: number) => new Date(ms).toISOString();

function window(period: 'day' | 'week' | 'month', tz: string, now: string) {
  const w = periodWindow(period, tz, at(now));
  return { start: iso(w.start), end: iso(w.end), startDate: w.startDate };
}

describe('budget period windows', () => {
  it('UTC day, ISO week (Monday) and month', () => {
    expect(window('day', 'UTC', '2026-11-23T10:13:00Z')).toEqual({
      start: '2026-11-23T00:00:00.000Z',
      end: '2026-11-24T00:00:00.000Z',
      startDate: '2026-11-23',
    });
    // Sunday 2026-11-22 belongs to the week that started Monday 2026-11-16.
    expect(window('week', 'UTC', '2026-11-22T23:30:00Z')).toEqual({
      start: '2026-11-16T00:00:00.000Z',
      end: '2026-11-23T00:00:00.000Z',
      startDate: '2026-11-16',
    });
    // Monday itself starts a new week.
    expect(window('week', 'UTC', '2026-11-23T00:00:00Z').start).toBe('2026-11-23T00:00:00.000Z');
    expect(window('month', 'UTC', '2026-02-28T23:59:59Z')).toEqual({
      start: '2026-02-01T00:00:00.000Z',
      end: '2026-03-01T00:00:00.000Z',
      startDate: '2026-02-01',
    });
  });

  it('uses the budget time zone: the same instant is a different day, week and month', () => {
    // 2026-11-22T23:30Z is Monday 08:30 in Tokyo: a new ISO week there, still Sunday in UTC.
    expect(window('week', 'Asia/Tokyo', '2026-11-22T23:30:00Z')).toEqual({
      start: '2026-11-22T15:00:00.000Z',
      end: '2026-11-29T15:00:00.000Z',
      startDate: '2026-11-23',
    });
    // 2026-10-31T17:00Z is 01:00 on November 1st in Shanghai (UTC+8).
    expect(window('month', 'Asia/Shanghai', '2026-10-31T17:00:00Z')).toEqual({
      start: '2026-10-31T16:00:00.000Z',
      end: '2026-11-30T16:00:00.000Z',
      startDate: '2026-11-01',
    });
    // One minute earlier it is still October there.
    expect(window('month', 'Asia/Shanghai', '2026-10-31T15:59:00Z').startDate).toBe('2026-10-01');
  });

  it('month and week windows across the year boundary', () => {
    expect(window('month', 'America/New_York', '2026-12-31T23:00:00Z')).toEqual({
      start: '2026-12-01T05:00:00.000Z',
      end: '2027-01-01T05:00:00.000Z',
      startDate: '2026-12-01',
    });
    expect(window('month', 'America/New_York', '2027-01-01T05:00:00Z').startDate).toBe('2027-01-01');
    // Thursday 2026-12-31 → the week of Monday 2026-12-28, ending Monday 2027-01-04.
    expect(window('week', 'UTC', '2026-12-31T12:00:00Z')).toMatchObject({
      start: '2026-12-28T00:00:00.000Z',
      end: '2027-01-04T00:00:00.000Z',
    });
  });

  it('DST: spring-forward days are 23 h, fall-back days 25 h', () => {
    // New York springs forward at 02:00 on 2026-03-08 (EST −5 → EDT −4).
    const spring = window('day', 'America/New_York', '2026-03-08T12:00:00Z');
    expect(spring).toEqual({
      start: '2026-03-08T05:00:00.000Z',
      end: '2026-03-09T04:00:00.000Z',
      startDate: '2026-03-08',
    });
    // Berlin falls back at 03:00 on 2026-10-25 (CEST +2 → CET +1).
    const fall = periodWindow('day', 'Europe/Berlin', at('2026-10-25T12:00:00Z'));
    expect(iso(fall.start)).toBe('2026-10-24T22:00:00.000Z');
    expect(iso(fall.end)).toBe('2026-10-25T23:00:00.000Z');
    expect(fall.end - fall.start).toBe(25 * 3_600_000);
    // A month containing a DST change is not a whole number of 24 h days.
    const march = periodWindow('month', 'Europe/Berlin', at('2026-03-15T00:00:00Z'));
    expect(march.end - march.start).toBe(31 * 86_400_000 - 3_600_000);
  });

  it('DST at midnight: the day starts at the first instant that exists (Santiago, 00:00 → 01:00)', () => {
    expect(window('day', 'America/Santiago', '2026-09-06T12:00:00Z')).toEqual({
      start: '2026-09-06T04:00:00.000Z', // 01:00 local, −03
      end: '2026-09-07T03:00:00.000Z',
      startDate: '2026-09-06',
    });
    // The previous day ends exactly where this one starts: no gap, no overlap.
    expect(window('day', 'America/Santiago', '2026-09-05T12:00:00Z').end).toBe('2026-09-06T04:00:00.000Z');
  });

  it('rejects an unknown time zone with a message naming it', () => {
    expect(() => assertTimeZone('Mars/Olympus')).toThrow(/unknown time zone "Mars\/Olympus"/);
    expect(() => assertTimeZone('Asia/Shanghai')).not.toThrow();
  });
});
