/**
 * How a request's model name finds a price entry when it is not spelled like the entry (issue 13):
 * the name rules (case, one provider prefix, a trailing date), and the `prices check` warnings for
 * rules that would make a match ambiguous. Pure; the order the rules run in is in book.ts `lookup`
 * and docs/pricing.md.
 *
 * "Never guess across families": a rule only ever removes a provider prefix or a date; it never
 * shortens a name otherwise, so `gpt-4o-mini-2024-07-18` can become `gpt-4o-mini` but never `gpt-4o`.
 */
import type { PriceEntry, PriceTable } from './table.js';

export { PRICE_MATCH_KINDS, type PriceMatchKind } from '../record.js';

/** One leading `vendor/` segment (`openai/`, `deepseek/`, `anthropic/` …): gateways' routing prefixes. */
const PROVIDER_PREFIX = /^[a-z0-9][a-z0-9._-]*\/(?=.)/;

/**
 * Names a model is also tried under for the `normalized` rule: lower-cased, then with one leading
 * `<word>/` removed. Only names that differ from `model` itself (the exact rule covers that).
 */
export function normalizedNames(model: string): string[] {
  const lower = model.toLowerCase();
  const stripped = lower.replace(PROVIDER_PREFIX, '');
  const names = [lower, stripped].filter((n, i, all) => all.indexOf(n) === i);
  return names;
}

/**
 * A dated snapshot's base name, or undefined when the name ends in no date. Recognised suffixes
 * (one, at the end only): `-YYYY-MM-DD` (OpenAI `gpt-4o-2024-08-06`), `-YYYYMMDD` (Anthropic
 * `claude-3-5-sonnet-20241022`), `@YYYYMMDD` (Vertex `claude-3-5-sonnet@20241022`) and `-MMDD`
 * (OpenAI `gpt-3.5-turbo-0125`, `gpt-4-0613`). The date must be a plausible calendar date.
 */
export function snapshotBase(name: string): string | undefined {
  const m =
    /^(.+?)[-@](20\d{2})-(\d{2})-(\d{2})$/.exec(name) ??
    /^(.+?)[-@](20\d{2})(\d{2})(\d{2})$/.exec(name) ??
    /^(.+?)-()(\d{2})(\d{2})$/.exec(name);
  if (!m) return undefined;
  const month = Number(m[3]);
  const day = Number(m[4]);
  if (month < 1 || month > 12 || day < 1 || day > 31) return undefined;
  return m[1];
}

/** A `prices check` warning: the files are valid, but a name would match in a way that surprises. */
export interface MatchWarning {
  file: string;
  line: number;
  field: string;
  message: string;
}

interface NamedEntry {
  table: PriceTable;
  entry: PriceEntry;
  index: number;
}

const scopeOf = (e: PriceEntry): string => e.upstream ?? '';
const where = (n: NamedEntry): string => `${n.table.name}:${n.entry.line}`;
const samePrices = (a: PriceEntry, b: PriceEntry): boolean =>
  a.currency === b.currency &&
  JSON.stringify(a.written) === JSON.stringify(b.written) &&
  JSON.stringify(a.tiers.map((t) => [t.aboveInputTokens, t.written])) ===
    JSON.stringify(b.tiers.map((t) => [t.aboveInputTokens, t.written]));

/**
 * Rules that make matching ambiguous, over the files checked together (in the scope of one
 * `upstream:`): an alias that is another entry's model (the exact entry always wins, the alias is
 * dead), one alias on two models (the first wins), two names equal but for case (the
 * case-insensitive rule picks the first), and a glob that a snapshot or normalized name takes
 * first at another price (`gpt-4o-*` never sees `gpt-4o-2024-08-06` when `gpt-4o` exists).
 */
export function matchWarnings(tables: PriceTable[]): MatchWarning[] {
  const warnings: MatchWarning[] = [];
  const all: NamedEntry[] = tables.flatMap((table) =>
    table.entries.map((entry, index) => ({ table, entry, index })),
  );
  const warn = (n: NamedEntry, field: string, message: string) =>
    warnings.push({ file: n.table.file, line: n.entry.line, field: `prices[${n.index}].${field}`, message });

  const models = new Map<string, NamedEntry>();
  for (const n of all) {
    const key = `${scopeOf(n.entry)}\u0000${n.entry.model}`;
    if (!n.entry.isGlob && !models.has(key)) models.set(key, n);
  }
  const aliases = new Map<string, NamedEntry>();
  const folded = new Map<string, { n: NamedEntry; name: string }>();
  for (const n of all) {
    if (n.entry.isGlob) continue;
    n.entry.aliases.forEach((alias, i) => {
      const key = `${scopeOf(n.entry)}\u0000${alias}`;
      const model = models.get(key);
      if (model)
        warn(
          n,
          `aliases[${i}]`,
          `alias ${alias} is the model of the entry at ${where(model)}, which always wins`,
        );
      const other = aliases.get(key);
      if (other && other.entry.model !== n.entry.model)
        warn(
          n,
          `aliases[${i}]`,
          `alias ${alias} is also an alias of ${other.entry.model} at ${where(other)}; the first wins`,
        );
      else if (!other) aliases.set(key, n);
    });
    for (const [field, name] of [
      ['model', n.entry.model] as const,
      ...n.entry.aliases.map((a, i) => [`aliases[${i}]`, a] as const),
    ]) {
      const key = `${scopeOf(n.entry)}\u0000${name.toLowerCase()}`;
      const other = folded.get(key);
      if (other && other.name !== name && other.n.entry.model !== n.entry.model)
        warn(
          n,
          field,
          `${name} and ${other.name} (${where(other.n)}) differ only in case: a request for either spelling in another case matches the first`,
        );
      else if (!other) folded.set(key, { n, name });
    }
  }
  for (const g of all) {
    if (!g.entry.isGlob) continue;
    for (const n of all) {
      if (n.entry.isGlob || scopeOf(n.entry) !== scopeOf(g.entry) || samePrices(n.entry, g.entry)) continue;
      const names = [n.entry.model, ...n.entry.aliases];
      const shadowed = names.find((name) =>
        [`${name}-2025-01-31`, `${name}-20250131`].some((d) => g.entry.matches(d)),
      );
      if (shadowed !== undefined)
        warn(
          g,
          'model',
          `glob ${g.entry.model} does not see dated names of ${shadowed} (e.g. ${shadowed}-2025-01-31): the snapshot rule prices them as ${n.entry.model} (${where(n)}) at other prices`,
        );
    }
  }
  return warnings;
}
