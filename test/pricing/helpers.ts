import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Settings } from '../../src/config/types.js';
import { TablePriceBook, type PricedUpstream } from '../../src/pricing/book.js';
import { parsePriceTable, type PriceTable } from '../../src/pricing/table.js';
import type { PriceQuery } from '../../src/pricing/types.js';
import { onTestFinished } from 'vitest';

export const NO_MULTIPLIERS: Settings['multipliers'] = { upstream: {}, app: {}, model: {} };

/** Parses price-file text, failing the test with the problems if it is invalid. */
export function table(text: string, file = 'test.yaml'): PriceTable {
  const { table: t, problems } = parsePriceTable(text, file);
  if (!t)
    throw new Error(
      `invalid test table:\n${problems.map((p) => `${p.line}: ${p.field}: ${p.message}`).join('\n')}`,
    );
  return t;
}

export function book(
  user: PriceTable[],
  opts: {
    presets?: PriceTable[];
    multipliers?: Partial<Settings['multipliers']>;
    upstreams?: PricedUpstream[];
  } = {},
): TablePriceBook {
  return new TablePriceBook(
    user,
    opts.presets ?? [],
    { ...NO_MULTIPLIERS, ...opts.multipliers },
    opts.upstreams ?? [{ name: 'default', url: new URL('https://cailag.xin/v1'), trustReportedCost: false }],
    undefined,
  );
}

export function query(over: Partial<PriceQuery>): PriceQuery {
  return {
    model: 'deepseek-chat',
    upstream: 'default',
    app: 'default',
    operation: 'chat',
    at: new Date('2026-11-01T00:00:00Z'),
    usage: {},
    ...over,
  };
}

/** A fresh temporary directory, removed when the calling test finishes (call it inside a test). */
export function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'tokenmeter-pricing-'));
  onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export function writeTemp(dir: string, name: string, text: string): string {
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
}
