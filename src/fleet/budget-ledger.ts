/**
 * Shared block budgets (issue 14, DESIGN.md §13, docs/fleet.md "Shared budgets"): the fleet's
 * books for `action: block` budgets in Postgres, so N sidecars together overshoot a limit by at
 * most their in-flight bounds, as one does on its own.
 *
 * - Reserve: one transaction. Per budget (in name order, so two hosts never deadlock) the period
 *   row is locked by an upsert, then one statement drops expired reservations and inserts this one
 *   only if spent + active reservations + bound ≤ limit. The check runs after the lock, in a new
 *   statement snapshot, so it sees every reservation committed before it.
 * - Settle: one statement per budget, in the background after the record: record the settlement
 *   (`budget_settlements`, keyed by request id and budget, `ON CONFLICT DO NOTHING`), delete the
 *   reservation and add the real cost only when that settlement row is new. So a settle retried
 *   after a COMMIT whose reply was lost adds the cost once. Failed settles are retried, then
 *   counted; the reservation expires. Settlement rows are pruned by reserve, with the expired
 *   reservations, once older than max(fleet.reservation_ttl, SETTLEMENT_KEEP_MS).
 * - Expiry: a reservation counts until `expires_at` (fleet.reservation_ttl), so a SIGKILLed host's
 *   reservations stop counting on their own.
 * - Unreachable (connect error, query error, or no answer within fleet.budget_timeout): each budget
 *   applies its `on_unreachable`. Logged once per spell, counted per request and budget.
 *
 * Used only in fleet mode; a single tokenmeter never loads `pg` on its request path.
 */
import type pg from 'pg';
import type { SharedBudgetLedger, SharedHold, SharedVerdict } from '../budgets/types.js';
import type { FleetSettings } from '../config/types.js';
import type { Logger } from '../log.js';
import { formatNanos } from '../pricing/money.js';
import type { FleetBudgetMetrics } from '../sinks/metrics.js';
import { openFleetPool } from './connect.js';
import { migratePg } from './pg-schema.js';
import { redactSecret } from './redact.js';

const LOCK_PERIOD = `INSERT INTO budget_ledger (budget, period_start, period_key, currency)
  VALUES ($1, $2, $3, $4)
  ON CONFLICT (budget, period_start, currency) DO UPDATE SET updated_at = now()
  RETURNING spent_nanos::text AS spent`;

// $5 spent (read under the lock), $6 bound, $7 limit. A zero bound is still refused once spent +
// held reaches the limit, like the local gate's "used up".
// $10: how long settlement rows are kept (ms).
const RESERVE = `WITH expired AS (
    DELETE FROM budget_reservations
    WHERE budget = $1 AND period_start = $2 AND currency = $3 AND expires_at <= now()
  ), pruned AS (
    DELETE FROM budget_settlements
    WHERE budget = $1 AND settled_at <= now() - $10::bigint * interval '1 millisecond'
  ), held AS (
    SELECT coalesce(sum(amount_nanos), 0)::bigint AS held FROM budget_reservations
    WHERE budget = $1 AND period_start = $2 AND currency = $3 AND expires_at > now()
  ), ins AS (
    INSERT INTO budget_reservations (id, budget, period_start, currency, host, amount_nanos, expires_at)
    SELECT $4, $1, $2, $3, $8, $6::bigint, now() + $9::bigint * interval '1 millisecond'
    FROM held
    WHERE $5::bigint + held.held < $7::bigint AND $5::bigint + held.held + $6::bigint <= $7::bigint
    RETURNING 1
  )
  SELECT (SELECT held FROM held)::text AS held, EXISTS (SELECT 1 FROM ins) AS admitted`;

// Idempotent: the cost is added only when this (request, budget) settlement row is new.
const SETTLE = `WITH settled AS (
    INSERT INTO budget_settlements (reservation_id, budget) VALUES ($7, $1)
    ON CONFLICT (reservation_id, budget) DO NOTHING
    RETURNING 1
  ), released AS (
    DELETE FROM budget_reservations WHERE $6::boolean AND id = $7 AND budget = $1
  )
  INSERT INTO budget_ledger (budget, period_start, period_key, currency, spent_nanos)
  SELECT $1, $2, $3, $4, $5::bigint WHERE EXISTS (SELECT 1 FROM settled)
  ON CONFLICT (budget, period_start, currency)
  DO UPDATE SET spent_nanos = budget_ledger.spent_nanos + EXCLUDED.spent_nanos, updated_at = now()`;

const RELEASE = 'DELETE FROM budget_reservations WHERE id = $1';

/** Settle attempts before giving up (the reservation then expires; the cost stays in the host's view). */
const SETTLE_ATTEMPTS = 3;
const SETTLE_BACKOFF_MS = 1_000;
/**
 * Settlement rows outlive every retry of their settle (3 attempts, seconds apart) by far; kept at
 * least this long, or fleet.reservation_ttl when longer.
 */
export const SETTLEMENT_KEEP_MS = 10 * 60_000;

export interface PgBudgetLedgerOptions {
  fleet: FleetSettings;
  metrics: FleetBudgetMetrics;
  log: Logger;
  /** Test hook: backoff between settle attempts (default 1 s, doubling). */
  settleBackoffMs?: number;
}

export interface PgBudgetLedger extends SharedBudgetLedger {
  /** Waits (bounded) for settles in flight, then closes the pool. */
  close(): Promise<void>;
}

type Attempt = SharedVerdict | { unreachable: string };

export function openPgBudgetLedger(opts: PgBudgetLedgerOptions): PgBudgetLedger {
  const { fleet, metrics, log } = opts;
  const url = fleet.postgres.url;
  const timeoutMs = fleet.budgetTimeoutMs;
  // Postgres restarting (an idle client, or one between the statements of a reserve or settle)
  // must not crash the sidecar: openFleetPool listens for both; the statement fails instead.
  const pool = openFleetPool(url, {
    max: fleet.postgres.poolSize,
    connectionTimeoutMillis: timeoutMs,
    // A statement stuck on a lock must not hold a pooled connection for ever.
    statement_timeout: Math.max(timeoutMs * 5, 10_000),
  });
  let schemaReady = false;
  let down = false;
  let closed = false;
  const settling = new Set<Promise<void>>();

  async function withClient<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const client = await pool.connect();
    let broken = false;
    try {
      if (!schemaReady) {
        await migratePg(client);
        schemaReady = true;
      }
      return await fn(client);
    } catch (err) {
      broken = true;
      throw err;
    } finally {
      client.release(broken);
    }
  }

  async function tryReserve(id: string, holds: readonly SharedHold[]): Promise<Attempt> {
    try {
      return await withClient(async (c) => {
        await c.query('BEGIN');
        try {
          for (const h of [...holds].sort((a, b) => (a.budget < b.budget ? -1 : 1))) {
            const key = [h.budget, String(h.periodStart), h.periodKey, h.currency];
            const lock = await c.query<{ spent: string }>(LOCK_PERIOD, key);
            const spent = lock.rows[0]!.spent;
            const r = await c.query<{ held: string; admitted: boolean }>(RESERVE, [
              h.budget,
              String(h.periodStart),
              h.currency,
              id,
              spent,
              String(h.amount),
              String(h.limit),
              fleet.host,
              String(fleet.reservationTtlMs),
              String(Math.max(fleet.reservationTtlMs, SETTLEMENT_KEEP_MS)),
            ]);
            const row = r.rows[0]!;
            if (!row.admitted) {
              await c.query('ROLLBACK');
              return {
                admitted: false,
                budget: h.budget,
                message: fleetBlockedMessage(h, BigInt(spent), BigInt(row.held)),
              };
            }
          }
          await c.query('COMMIT');
          return { admitted: true, reserved: true } as const;
        } catch (err) {
          await c.query('ROLLBACK').catch(() => undefined);
          throw err;
        }
      });
    } catch (err) {
      return { unreachable: redactSecret(err instanceof Error ? err.message : String(err), url) };
    }
  }

  function reachable(): void {
    if (!down) return;
    down = false;
    log.info('fleet budget ledger reachable again; shared budgets are checked fleet-wide', {});
  }

  function unreachable(holds: readonly SharedHold[], error: string): SharedVerdict {
    if (!down) {
      down = true;
      // Once per spell: every request of an outage would otherwise log.
      log.warn('fleet budget ledger unreachable; shared budgets apply on_unreachable until it answers', {
        error: error.slice(0, 300),
        budgets: holds.map((h) => `${h.budget}:${h.onUnreachable}`).join(','),
      });
    }
    const refusing = holds.find((h) => h.onUnreachable === 'block');
    if (refusing) return { admitted: false, budget: refusing.budget, message: unreachableMessage(refusing) };
    for (const h of holds) metrics.fallback(h.budget);
    return { admitted: true, reserved: false };
  }

  async function settleOnce(
    id: string,
    reserved: boolean,
    costs: ReadonlyArray<{ hold: SharedHold; cost: bigint }>,
  ) {
    await withClient(async (c) => {
      await c.query('BEGIN');
      try {
        for (const { hold: h, cost } of [...costs].sort((a, b) => (a.hold.budget < b.hold.budget ? -1 : 1))) {
          await c.query(SETTLE, [
            h.budget,
            String(h.periodStart),
            h.periodKey,
            h.currency,
            String(cost),
            reserved,
            id,
          ]);
        }
        await c.query('COMMIT');
      } catch (err) {
        await c.query('ROLLBACK').catch(() => undefined);
        throw err;
      }
    });
  }

  async function settleWithRetry(
    id: string,
    reserved: boolean,
    costs: ReadonlyArray<{ hold: SharedHold; cost: bigint }>,
  ) {
    let backoff = opts.settleBackoffMs ?? SETTLE_BACKOFF_MS;
    for (let attempt = 1; ; attempt++) {
      try {
        await settleOnce(id, reserved, costs);
        return;
      } catch (err) {
        if (attempt >= SETTLE_ATTEMPTS || closed) {
          for (const { hold } of costs) metrics.settleFailure(hold.budget);
          log.once(
            'fleet-budget-settle',
            'warn',
            'fleet budget settlement failed; its reservation will expire',
            {
              error: redactSecret(err instanceof Error ? err.message : String(err), url).slice(0, 300),
            },
          );
          return;
        }
        await new Promise((r) => setTimeout(r, backoff).unref());
        backoff *= 2;
      }
    }
  }

  return {
    async reserve(id, holds) {
      if (holds.length === 0) return { admitted: true, reserved: false };
      const attempt = tryReserve(id, holds);
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<'timeout'>((r) => {
        timer = setTimeout(() => r('timeout'), timeoutMs);
      });
      const result = await Promise.race([attempt, timeout]);
      clearTimeout(timer);
      if (result === 'timeout') {
        // The reservation may still commit after we gave up on it: release it then, so it does
        // not hold the budget until it expires.
        void attempt.then((late) => {
          if ('admitted' in late && late.admitted && late.reserved)
            void pool.query(RELEASE, [id]).catch(() => undefined);
        });
        return unreachable(holds, `no answer within ${timeoutMs} ms`);
      }
      if ('unreachable' in result) return unreachable(holds, result.unreachable);
      reachable();
      return result;
    },

    settle(id, reserved, costs) {
      const work = costs.filter((c) => c.cost !== 0n);
      if (!reserved && work.length === 0) return;
      const p = settleWithRetry(id, reserved, reserved ? costs : work).finally(() => settling.delete(p));
      settling.add(p);
    },

    async close() {
      closed = true;
      const wait = new Promise((r) => setTimeout(r, Math.max(timeoutMs, 1_000)).unref());
      await Promise.race([Promise.allSettled([...settling]), wait]);
      await pool.end().catch(() => undefined);
    },
  };
}

function periodText(h: SharedHold): string {
  return `this ${h.period} (since ${h.periodKey}, ${h.timezone})`;
}

/** What a client refused by the fleet ledger reads: names the budget, the fleet's numbers, what to do. */
export function fleetBlockedMessage(h: SharedHold, spent: bigint, held: bigint): string {
  const cur = h.currency;
  const used = `${formatNanos(spent, cur)} spent and ${formatNanos(held, cur)} reserved by requests in flight across the fleet`;
  if (spent + held >= h.limit) {
    return (
      `tokenmeter budget "${h.budget}" (shared by the fleet) is used up: ${used}, of ` +
      `${formatNanos(h.limit, cur)} ${periodText(h)}. Requests in its scope are blocked until ` +
      `${new Date(h.periodEnd).toISOString()}; raise the limit in the budgets: config to continue.`
    );
  }
  const left = h.limit - spent - held;
  return (
    `tokenmeter budget "${h.budget}" (shared by the fleet) cannot admit this request: it could cost up to ` +
    `${formatNanos(h.amount, cur)}, more than the ${formatNanos(left, cur)} left of ${formatNanos(h.limit, cur)} ` +
    `${periodText(h)} (${used}). Set a lower max_tokens or send a shorter prompt, retry when requests in ` +
    `flight finish, or raise the limit in the budgets: config.`
  );
}

export function unreachableMessage(h: SharedHold): string {
  return (
    `tokenmeter budget "${h.budget}" (action: block, on_unreachable: block) cannot admit this request: ` +
    `the fleet budget ledger (fleet.postgres) is unreachable, so the fleet's spend cannot be checked. ` +
    `Retry shortly; fix the fleet Postgres connection, or set on_unreachable: local on this budget ` +
    `to fall back to this host's own view.`
  );
}
