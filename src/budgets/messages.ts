/**
 * What a blocked client reads (the meter puts it in an endpoint-shaped error body). Each message
 * names the budget, says why, and what to do next. No keys, no bodies.
 */
import { formatNanos } from '../pricing/money.js';
import type { BudgetLedger } from './ledger.js';

function period(b: BudgetLedger): string {
  return `this ${b.config.period} (since ${b.window.startDate}, ${b.timezone})`;
}

export function usedUpMessage(b: BudgetLedger): string {
  const cur = b.currency;
  const inFlight =
    b.reserved > 0n ? ` (+${formatNanos(b.reserved, cur)} reserved by requests in flight)` : '';
  return (
    `tokenmeter budget "${b.name}" is used up: ${formatNanos(b.spent(), cur)} spent${inFlight} of ` +
    `${formatNanos(b.limit, cur)} ${period(b)}. ` +
    `Requests in its scope are blocked until ${new Date(b.window.end).toISOString()}; ` +
    `raise the limit in the budgets: config to continue.`
  );
}

export interface BoundDetail {
  amount: bigint;
  inputTokens: number;
  outputTokens: number;
  outputFrom: 'request' | 'model' | 'default';
}

const OUTPUT_FROM = {
  request: 'its max_tokens',
  model: "the model's maximum output, as it sets no lower max_tokens",
  default:
    "tokenmeter's default maximum output, as it sets no max_tokens and its price entry no max_output_tokens",
} as const;

export function tooCostlyMessage(b: BudgetLedger, bound: BoundDetail): string {
  const cur = b.currency;
  const left = b.limit - b.spent() - b.reserved;
  const inFlight = b.reserved > 0n ? `, ${formatNanos(b.reserved, cur)} reserved by requests in flight` : '';
  return (
    `tokenmeter budget "${b.name}" cannot admit this request: it could cost up to ` +
    `${formatNanos(bound.amount, cur)} (at most ${bound.inputTokens} input and ${bound.outputTokens} output ` +
    `tokens, from ${OUTPUT_FROM[bound.outputFrom]}), more than the ${formatNanos(left > 0n ? left : 0n, cur)} left ` +
    `of ${formatNanos(b.limit, cur)} ${period(b)} (${formatNanos(b.spent(), cur)} spent${inFlight}). ` +
    `Set a lower max_tokens or send a shorter prompt, retry when requests in flight finish, ` +
    `or raise the limit in the budgets: config.`
  );
}

export function noFxMessage(b: BudgetLedger, model: string, currency: string): string {
  return (
    `tokenmeter budget "${b.name}" (${b.currency}) cannot count this request: model ${model} is priced in ` +
    `${currency} and no fx: rate from ${currency} to ${b.currency} is configured. ` +
    `Add an fx: rate (or a ${b.currency} price entry for the model) to the tokenmeter config.`
  );
}

export function unmeterableMessage(b: BudgetLedger, maxRequestBodyBytes: number): string {
  return (
    `tokenmeter budget "${b.name}" (action: block) cannot admit this request: its body is larger than ` +
    `limits.max_request_body (${formatBytes(maxRequestBodyBytes)}), so its model and max_tokens cannot be read ` +
    `and its cost cannot be bounded. Send a smaller request, or raise limits.max_request_body in the ` +
    `tokenmeter config.`
  );
}

function formatBytes(n: number): string {
  const MiB = 1024 * 1024;
  if (n >= MiB && n % MiB === 0) return `${n / MiB} MiB`;
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024} KiB`;
  return `${n} bytes`;
}
