/**
 * Budget periods (DESIGN.md §9): calendar day, ISO week (starting Monday) or calendar month in the
 * budget's IANA time zone, as [start, end) epoch-ms windows. Pure: no clock is read here.
 *
 * Local midnight is found with Intl.DateTimeFormat (the platform's tz database), so DST days are
 * 23 or 25 hours long, and in zones whose clocks jump at midnight (America/Santiago, Asia/Beirut…)
 * the day starts at the first instant that exists, 01:00.
 */

export type Period = 'day' | 'week' | 'month';

export interface PeriodWindow {
  /** Inclusive start, epoch ms. */
  start: number;
  /** Exclusive end (the next period's start), epoch ms. */
  end: number;
  /** The local calendar date the period starts on, YYYY-MM-DD. */
  startDate: string;
}

interface LocalDate {
  y: number;
  m: number; // 1-12
  d: number;
}

const formatters = new Map<string, Intl.DateTimeFormat>();

function formatter(timeZone: string): Intl.DateTimeFormat {
  let f = formatters.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone,
      hourCycle: 'h23',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
      second: 'numeric',
    });
    formatters.set(timeZone, f);
  }
  return f;
}

/** Throws a RangeError naming the zone when it is not a valid IANA time zone. */
export function assertTimeZone(timeZone: string): void {
  try {
    formatter(timeZone);
  } catch {
    throw new RangeError(
      `unknown time zone "${timeZone}" (expected an IANA name such as Asia/Shanghai or UTC)`,
    );
  }
}

function localParts(t: number, timeZone: string): LocalDate & { h: number; mi: number; s: number } {
  const out = { y: 0, m: 0, d: 0, h: 0, mi: 0, s: 0 };
  for (const p of formatter(timeZone).formatToParts(new Date(t))) {
    const v = Number(p.value);
    if (p.type === 'year') out.y = v;
    else if (p.type === 'month') out.m = v;
    else if (p.type === 'day') out.d = v;
    else if (p.type === 'hour') out.h = v;
    else if (p.type === 'minute') out.mi = v;
    else if (p.type === 'second') out.s = v;
  }
  return out;
}

/** The zone's UTC offset at instant t, in ms (local wall clock − UTC). */
function offsetAt(t: number, timeZone: string): number {
  const p = localParts(t, timeZone);
  const wall = Date.UTC(p.y, p.m - 1, p.d, p.h, p.mi, p.s);
  return wall - Math.floor(t / 1000) * 1000;
}

function sameDate(a: LocalDate, b: LocalDate): boolean {
  return a.y === b.y && a.m === b.m && a.d === b.d;
}

/** Calendar arithmetic on a local date (no zone involved). */
function addDays(date: LocalDate, days: number): LocalDate {
  const t = new Date(Date.UTC(date.y, date.m - 1, date.d + days));
  return { y: t.getUTCFullYear(), m: t.getUTCMonth() + 1, d: t.getUTCDate() };
}

/** The first instant of a local calendar date in the zone. */
export function startOfLocalDate(date: LocalDate, timeZone: string): number {
  const guess = Date.UTC(date.y, date.m - 1, date.d);
  // The offset at local midnight is one of the offsets in force around it; try each and keep the
  // earliest instant that falls on the wanted date (handles both DST gaps and overlaps).
  const candidates = [-86_400_000, 0, 86_400_000]
    .map((delta) => guess - offsetAt(guess + delta, timeZone))
    .filter((t) => sameDate(localParts(t, timeZone), date));
  if (candidates.length === 0) return guess - offsetAt(guess, timeZone);
  return Math.min(...candidates);
}

function isoDate(d: LocalDate): string {
  return `${String(d.y).padStart(4, '0')}-${String(d.m).padStart(2, '0')}-${String(d.d).padStart(2, '0')}`;
}

/** The period containing `nowMs`, in `timeZone`. */
export function periodWindow(period: Period, timeZone: string, nowMs: number): PeriodWindow {
  const p = localParts(nowMs, timeZone);
  const today: LocalDate = { y: p.y, m: p.m, d: p.d };
  let first: LocalDate;
  let next: LocalDate;
  if (period === 'day') {
    first = today;
    next = addDays(today, 1);
  } else if (period === 'week') {
    const dow = new Date(Date.UTC(today.y, today.m - 1, today.d)).getUTCDay(); // 0 = Sunday
    first = addDays(today, -((dow + 6) % 7)); // ISO 8601: weeks start on Monday
    next = addDays(first, 7);
  } else {
    first = { y: today.y, m: today.m, d: 1 };
    next = today.m === 12 ? { y: today.y + 1, m: 1, d: 1 } : { y: today.y, m: today.m + 1, d: 1 };
  }
  return {
    start: startOfLocalDate(first, timeZone),
    end: startOfLocalDate(next, timeZone),
    startDate: isoDate(first),
  };
}
