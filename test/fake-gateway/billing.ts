/**
 * What the fake gateway bills (issue 13, docs/reconcile.md), and the endpoints that tell it:
 * seed 004's `GET /v1/balance` (tenant `balance`, the key's `daily_used`/`monthly_used`), one-api's
 * `GET /dashboard/billing/subscription` + `/dashboard/billing/usage` (`total_usage` in cents, as
 * one-api controller/billing.go computes it: `quota / QuotaPerUnit * 100`), and new-api's
 * `GET /api/usage/token` (quota units; QuantumNous/new-api PR #1161).
 *
 * Billing rule: every request to a token endpoint that passed auth and was not answered with an
 * error scenario is charged when its connection ends — also when the usage was never sent
 * (`no-usage`) and when the client went away mid-answer or it hung (`hang`): the gateway bills the
 * whole generation. Charge = (prompt × input + completion × output) / 1M × multiplier, exact, with
 * prompt/completion the tokens the fake reports (or `x-fake-usage`'s). The multiplier is the
 * option's, or per request `x-fake-bill-multiplier: 1.25`.
 */
import { Dec, nanosToDecimalText, parseDecimal, unitsToNanos } from '../../src/pricing/money.js';

export interface FakeBillingOptions {
  /** Price per 1M tokens in `currency`; default input 2, output 8. */
  prices?: { input: string; output: string };
  /** What the gateway bills on top of its prices; default "1". */
  multiplier?: string;
  /** Currency of prices and every billing endpoint; default CNY (seed 004). */
  currency?: string;
  /** The tenant's starting balance; default "138.5" (seed 004's example). */
  balance?: string;
  /** Each key's `daily_used` before any charge; default "3.25" (seed 004's example). */
  initialDailyUsed?: string;
  /** Report `monthly_used` (a key with a monthly budget); default false, as in the seed's example. */
  monthly?: boolean;
  /** one-api/new-api quota units per currency unit; default 500000. */
  quotaPerUnit?: number;
  /** new-api `total_granted` of each key, in quota units; default 500000000 (1000 units). */
  grantedQuota?: number;
  now?: () => number;
}

export interface Charge {
  key: string;
  requestId: string;
  nanos: bigint;
  prompt: number;
  completion: number;
  aborted: boolean;
}

interface KeyLedger {
  dailyNanos: bigint;
  monthlyNanos: bigint;
  totalNanos: bigint;
  /** Integer quota, as one-api/new-api keep it (each charge rounded once). */
  quota: number;
}

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);

/** JSON number of an exact nanos amount (the shortest float that prints back to the same decimal). */
const units = (nanos: bigint): number => Number(nanosToDecimalText(nanos));

/** Prompt and completion tokens of a wire usage object of any flavor. */
export function billableTokens(wire: Json): { prompt: number; completion: number } {
  const prompt =
    num(wire.prompt_tokens) ??
    (num(wire.input_tokens) ?? 0) +
      (num(wire.cache_creation_input_tokens) ?? 0) +
      (num(wire.cache_read_input_tokens) ?? 0);
  const completion = num(wire.completion_tokens) ?? num(wire.output_tokens) ?? 0;
  return { prompt, completion };
}

export class FakeBilling {
  readonly charges: Charge[] = [];
  readonly currency: string;
  private readonly input: Dec;
  private readonly output: Dec;
  private multiplier: Dec;
  private balanceNanos: bigint;
  private readonly initialDaily: bigint;
  private readonly quotaPerUnit: number;
  private readonly granted: number;
  private readonly ledgers = new Map<string, KeyLedger>();
  private readonly now: () => number;

  constructor(private readonly opts: FakeBillingOptions = {}) {
    this.currency = opts.currency ?? 'CNY';
    this.input = parseDecimal(opts.prices?.input ?? '2');
    this.output = parseDecimal(opts.prices?.output ?? '8');
    this.multiplier = parseDecimal(opts.multiplier ?? '1');
    this.balanceNanos = unitsToNanos(parseDecimal(opts.balance ?? '138.5'));
    this.initialDaily = unitsToNanos(parseDecimal(opts.initialDailyUsed ?? '3.25'));
    this.quotaPerUnit = opts.quotaPerUnit ?? 500_000;
    this.granted = opts.grantedQuota ?? 500_000_000;
    this.now = opts.now ?? Date.now;
  }

  setMultiplier(m: string): void {
    this.multiplier = parseDecimal(m);
  }

  private ledger(key: string): KeyLedger {
    let l = this.ledgers.get(key);
    if (!l) {
      l = { dailyNanos: this.initialDaily, monthlyNanos: 0n, totalNanos: 0n, quota: 0 };
      this.ledgers.set(key, l);
    }
    return l;
  }

  /** Charges one request; returns the charge in nanos. */
  charge(
    key: string,
    requestId: string,
    tokens: { prompt: number; completion: number },
    opts: { multiplier?: string; aborted?: boolean } = {},
  ): bigint {
    const m = opts.multiplier !== undefined ? parseDecimal(opts.multiplier) : this.multiplier;
    const nanos = unitsToNanos(
      new Dec(tokens.prompt)
        .times(this.input)
        .plus(new Dec(tokens.completion).times(this.output))
        .div(1_000_000)
        .times(m),
    );
    const l = this.ledger(key);
    l.dailyNanos += nanos;
    l.monthlyNanos += nanos;
    l.totalNanos += nanos;
    l.quota += Math.round(Number(nanos) * (this.quotaPerUnit / 1e9));
    this.balanceNanos -= nanos;
    this.charges.push({ key, requestId, nanos, ...tokens, aborted: opts.aborted ?? false });
    return nanos;
  }

  /** A top-up: the tenant balance rises (tokenmeter must exclude it from billed). */
  topUp(amount: string): void {
    this.balanceNanos += unitsToNanos(parseDecimal(amount));
  }

  /** The gateway's day boundary: every key's `daily_used` starts again from 0. */
  newDay(): void {
    for (const l of this.ledgers.values()) l.dailyNanos = 0n;
  }

  /** Everything charged to `key` (exact nanos). */
  chargedNanos(key?: string): bigint {
    return this.charges.filter((c) => key === undefined || c.key === key).reduce((s, c) => s + c.nanos, 0n);
  }

  /** The next midnight at UTC+8 (dieyu is a CNY gateway), as seed 004 states `daily_reset_at`. */
  private nextResetIso(): string {
    const shifted = new Date(this.now() + 8 * 3_600_000);
    const next = Date.UTC(shifted.getUTCFullYear(), shifted.getUTCMonth(), shifted.getUTCDate() + 1);
    return new Date(next).toISOString().replace('T00:00:00.000Z', 'T00:00:00+08:00');
  }

  /** Seed 004 `GET /v1/balance` for the calling key. */
  balanceBody(key: string): Json {
    const l = this.ledger(key);
    const budget = unitsToNanos(new Dec(20));
    return {
      object: 'balance',
      currency: this.currency,
      balance: units(this.balanceNanos),
      api_key: {
        id: '1923456789012345678',
        name: 'claude-code',
        daily_budget: 20.0,
        daily_used: units(l.dailyNanos),
        daily_remaining: units(budget - l.dailyNanos),
        daily_reset_at: this.nextResetIso(),
        monthly_budget: this.opts.monthly ? 500.0 : null,
        monthly_used: this.opts.monthly ? units(l.monthlyNanos) : null,
        monthly_remaining: this.opts.monthly ? units(unitsToNanos(new Dec(500)) - l.monthlyNanos) : null,
        monthly_reset_at: null,
      },
    };
  }

  /** one-api/new-api `GET /dashboard/billing/subscription` (display in currency, token stats on). */
  subscriptionBody(): Json {
    const limit = this.granted / this.quotaPerUnit;
    return {
      object: 'billing_subscription',
      has_payment_method: true,
      soft_limit_usd: limit,
      hard_limit_usd: limit,
      system_hard_limit_usd: limit,
      access_until: 0,
    };
  }

  /** one-api/new-api `GET /dashboard/billing/usage`: `total_usage` = quota / QuotaPerUnit × 100 (cents). */
  usageBody(key: string): Json {
    return { object: 'list', total_usage: (this.ledger(key).quota / this.quotaPerUnit) * 100 };
  }

  /** new-api `GET /api/usage/token`. */
  tokenUsageBody(key: string): Json {
    const used = this.ledger(key).quota;
    return {
      code: true,
      message: 'ok',
      data: {
        object: 'token_usage',
        name: 'Default Token',
        total_granted: this.granted,
        total_used: used,
        total_available: this.granted - used,
        unlimited_quota: false,
        model_limits: {},
        model_limits_enabled: false,
        expires_at: 0,
      },
    };
  }

  /** The nanos one-api/new-api report for `key` (its integer quota, converted back). */
  quotaNanos(key: string): bigint {
    return unitsToNanos(new Dec(this.ledger(key).quota).div(this.quotaPerUnit));
  }

  /** Parses a usage object (`x-fake-usage` or the computed wire usage). */
  static tokensOf(wire: unknown): { prompt: number; completion: number } {
    return isObject(wire) ? billableTokens(wire) : { prompt: 0, completion: 0 };
  }
}
