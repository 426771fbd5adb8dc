/**
 * One budget's books for its current period: spend (audit log at start + settled records since),
 * what requests in flight have reserved, and the warn thresholds already logged. Exact BigInt nanos
 * in the budget's currency. No I/O: the spend at start is handed in.
 */
import type { BudgetConfig, FxRate } from '../config/schema.js';
import { globToRegExp } from '../glob.js';
import type { Logger } from '../log.js';
import { convertNanos, formatNanos } from '../pricing/money.js';
import type { RequestRecord } from '../record.js';
import { periodWindow, type PeriodWindow } from './window.js';

/** What a request is matched on (a RequestStart or a RequestRecord). */
export interface ScopeSubject {
  app: string;
  request_model: string | null;
  upstream: string;
}

/** A reservation held on one ledger, valid only in the period (epoch) it was taken in. */
export interface Hold {
  ledger: BudgetLedger;
  amount: bigint;
  epoch: number;
}

export class BudgetLedger {
  readonly name: string;
  readonly currency: string;
  readonly blocks: boolean;
  private readonly modelRe: RegExp | undefined;
  window: PeriodWindow;
  /** Spend from the audit log for [window.start, baseTo). */
  private base = 0n;
  /** Settled records with ts_start >= baseTo in this window. */
  private live = 0n;
  private baseTo: number;
  reserved = 0n;
  /** Bumped at every period change, so a reservation from the old period never touches the new one. */
  epoch = 0;
  private readonly warned = new Set<number>();
  private exceededLogged = false;

  constructor(
    readonly config: BudgetConfig,
    readonly timezone: string,
    readonly limit: bigint,
    startMs: number,
    private readonly fx: readonly FxRate[],
    private readonly log: Logger,
  ) {
    this.name = config.name;
    this.currency = config.currency;
    this.blocks = config.action === 'block';
    this.modelRe = config.scope.model === undefined ? undefined : globToRegExp(config.scope.model);
    this.window = periodWindow(config.period, timezone, startMs);
    this.baseTo = startMs;
  }

  /** Period-to-date spend read from the audit log at start, per currency. */
  setBase(rows: Array<{ currency: string; cost_nanos: bigint }>): void {
    let total = 0n;
    for (const r of rows) {
      const v = this.inOwnCurrency(BigInt(r.cost_nanos), r.currency, this.window.startDate);
      if (v !== null) total += v;
    }
    this.base = total;
  }

  /**
   * Whether spend of this request counts here. A model-scoped budget needs a known model, like the
   * audit log's `request_model GLOB ?`, which never matches NULL (so restarts agree with live).
   */
  counts(s: ScopeSubject): boolean {
    return this.matches(s, false);
  }

  /**
   * Whether this block budget gates the request. Conservative: a request whose model is unknown
   * (body unreadable, or no `model` in it) may be for a model in scope, so it is gated.
   */
  gates(s: ScopeSubject): boolean {
    return this.blocks && this.matches(s, true);
  }

  private matches(s: ScopeSubject, unknownModelMatches: boolean): boolean {
    const scope = this.config.scope;
    if (scope.app !== undefined && scope.app !== s.app) return false;
    if (scope.upstream !== undefined && scope.upstream !== s.upstream) return false;
    if (!this.modelRe) return true;
    if (s.request_model === null) return unknownModelMatches;
    return this.modelRe.test(s.request_model);
  }

  spent(): bigint {
    return this.base + this.live;
  }

  /** Moves the books to the period containing t (a new period starts from zero). */
  roll(t: number): void {
    if (t < this.window.end) return;
    this.window = periodWindow(this.config.period, this.timezone, t);
    this.base = 0n;
    this.live = 0n;
    this.baseTo = this.window.start;
    // In-flight requests started in the old period; their reservations and costs belong there.
    this.reserved = 0n;
    this.epoch += 1;
    this.warned.clear();
    this.exceededLogged = false;
  }

  hold(amount: bigint): Hold {
    this.reserved += amount;
    return { ledger: this, amount, epoch: this.epoch };
  }

  release(h: Hold): void {
    if (h.epoch === this.epoch) this.reserved -= h.amount;
  }

  /** Adds a settled record's real cost (priced records of this period only), then logs thresholds. */
  add(record: RequestRecord, t: number): void {
    this.roll(t);
    if (record.cost_nanos === null || record.currency === null) return; // unpriced: unknown, not 0
    const ts = record.ts_start;
    if (ts < this.window.start || ts >= this.window.end || ts < this.baseTo) return;
    const cost = this.inOwnCurrency(BigInt(record.cost_nanos), record.currency, utcDay(ts));
    if (cost === null) return;
    this.live += cost;
    this.evaluate();
  }

  /** An amount in this budget's currency: converted with `fx:` when needed; null (logged once) without a rate. */
  inOwnCurrency(nanos: bigint, currency: string, day: string): bigint | null {
    if (currency === this.currency) return nanos;
    const converted = convertNanos(nanos, currency, this.currency, this.fx, day);
    if (converted === null) {
      this.log.once(
        `budget:${this.name}:currency:${currency}`,
        'warn',
        'budget ignores spend in another currency: no fx: rate converts it',
        { budget: this.name, budget_currency: this.currency, currency },
      );
    }
    return converted;
  }

  /** Logs each warn_at threshold once per period, and the first time the limit is reached. */
  evaluate(): void {
    const spent = this.spent();
    const ratio = ratioOf(spent, this.limit);
    const fields = {
      budget: this.name,
      spent: formatNanos(spent, this.currency),
      limit: formatNanos(this.limit, this.currency),
      period_start: this.window.startDate,
    };
    for (const threshold of [...this.config.warn_at].sort((x, y) => x - y)) {
      if (ratio >= threshold && !this.warned.has(threshold)) {
        this.warned.add(threshold);
        this.log.warn('budget warning threshold reached', { ...fields, threshold });
      }
    }
    if (ratio >= 1 && !this.exceededLogged) {
      this.exceededLogged = true;
      this.log.warn(this.blocks ? 'budget exhausted; blocking requests in scope' : 'budget exceeded', fields);
    }
  }
}

export function ratioOf(spent: bigint, limit: bigint): number {
  if (limit === 0n) return spent > 0n ? Number.POSITIVE_INFINITY : 0;
  return Number(spent) / Number(limit);
}

/** YYYY-MM-DD of an instant in UTC (the day an `fx:` rate is looked up for). */
export function utcDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}
