/**
 * Pricing (DESIGN.md §5): load the bundled presets and the user's price files, and answer
 * `price(query)` for every metered request. `loadPriceBook` does all the I/O; the book is pure.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Settings } from '../config/types.js';
import { ConfigError, type SourceProblem } from '../errors.js';
import type { Logger } from '../log.js';
import { TablePriceBook, type PricedUpstream } from './book.js';
import { loadPriceTable, type PriceTable } from './table.js';

export {
  TablePriceBook,
  costInUnits,
  priceIdOf,
  pricesFor,
  tierFor,
  DEFAULT_MAX_OUTPUT_TOKENS,
  type PricedUpstream,
  type PriceMatch,
} from './book.js';
export {
  loadPriceTable,
  parsePriceTable,
  type PriceEntry,
  type PriceTable,
  type PriceTier,
} from './table.js';
export {
  matchWarnings,
  normalizedNames,
  snapshotBase,
  PRICE_MATCH_KINDS,
  type MatchWarning,
  type PriceMatchKind,
} from './match.js';
export type {
  BoundingPriceBook,
  MaxCostQuery,
  MaxCostResult,
  PriceBook,
  PriceQuery,
  PriceResult,
} from './types.js';

/** The bundled presets, resolved from the package root (works from src/pricing and dist/pricing). */
export const PRESETS_DIR = fileURLToPath(new URL('../../prices/', import.meta.url));

export interface PriceBookOptions {
  files: string[];
  presets: boolean;
  multipliers: Settings['multipliers'];
  upstreams: PricedUpstream[];
  log?: Logger;
  /** Override of the presets directory (tests). */
  presetsDir?: string;
}

/** Builds the price book; throws ConfigError (PRICES_INVALID) naming file:line:field on any bad file. */
export function loadPriceBook(opts: PriceBookOptions): TablePriceBook {
  const presets = opts.presets ? loadPresetTables(opts.presetsDir) : [];
  const problems: SourceProblem[] = [];
  const user: PriceTable[] = [];
  for (const file of opts.files) {
    try {
      user.push(loadPriceTable(file));
    } catch (err) {
      if (err instanceof ConfigError) problems.push(...err.problems);
      else throw err;
    }
  }
  if (problems.length > 0) throw new ConfigError(problems, 'PRICES_INVALID');
  return new TablePriceBook(user, presets, opts.multipliers, opts.upstreams, opts.log);
}

/** The price book `serve` builds from effective settings; `tokenmeter reprice` builds the same one. */
export function priceBookFor(settings: Settings, log?: Logger): TablePriceBook {
  return loadPriceBook({
    files: settings.priceFiles,
    presets: settings.presets,
    multipliers: settings.multipliers,
    upstreams: settings.upstreams.map((u) => ({
      name: u.name,
      url: u.url,
      multiplier: u.multiplier,
      trustReportedCost: u.trustReportedCost,
    })),
    log,
  });
}

/** Every `*.yaml`, `*.yml` and `*.json` file of the presets directory, in name order. */
export function presetFiles(dir: string = PRESETS_DIR): string[] {
  return readdirSync(dir)
    .filter((f) => /\.(ya?ml|json)$/.test(f))
    .sort()
    .map((f) => join(dir, f));
}

export function loadPresetTables(dir: string = PRESETS_DIR): PriceTable[] {
  const problems: SourceProblem[] = [];
  const tables: PriceTable[] = [];
  for (const file of presetFiles(dir)) {
    try {
      tables.push(loadPriceTable(file));
    } catch (err) {
      if (err instanceof ConfigError) problems.push(...err.problems);
      else throw err;
    }
  }
  if (problems.length > 0) throw new ConfigError(problems, 'PRICES_INVALID');
  return tables;
}
