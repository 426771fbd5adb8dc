/**
 * The console in a real browser (./chromium.ts), against a running `tokenmeter serve` after real
 * SDK traffic, including a request whose model is an XSS probe.
 */
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatNanos } from '../../src/pricing/money.js';
import type { Row } from '../e2e/helpers.js';
import { launchChromium, skipWithoutChromium, watchedPage } from './chromium.js';
import { XSS_MODEL, sendTraffic, startConsoleWorld, type ConsoleWorld } from './world.js';

describe.skipIf(skipWithoutChromium('test/console/browser.test.ts'))('the console in Chromium', () => {
  let world: ConsoleWorld;
  let rows: Row[];
  let browser: Browser;
  let page: Page;
  let problems: string[];
  let dialogs: () => number;

  beforeAll(async () => {
    world = await startConsoleWorld();
    rows = await sendTraffic(world, { xss: true });
    browser = await launchChromium();
    ({ page, problems, dialogs } = await watchedPage(browser));
  });
  afterAll(async () => {
    await browser?.close();
    await world?.stop();
  });

  const newestFirst = () => [...rows].sort((a, b) => b.ts_start - a.ts_start || (a.id < b.id ? 1 : -1));

  it('shows every request newest first, with the cost `report` prints', async () => {
    await page.goto(`${world.base}/-/`);
    expect(page.url()).toBe(`${world.base}/-/ui/`);
    await page.waitForSelector('#requests tbody tr[data-id]');
    const ids = await page.$$eval('#requests tbody tr[data-id]', (trs) =>
      trs.map((t) => t.getAttribute('data-id')),
    );
    expect(ids).toEqual(newestFirst().map((r) => r.id));
    for (const r of rows) {
      const costCell = await page.textContent(`tr[data-id="${r.id}"] td.cost`);
      expect(costCell).toBe(r.cost_nanos === null ? '-' : `${formatNanos(r.cost_nanos)} ${r.currency}`);
    }
  });

  it('keeps the XSS probe inert: shown as text, no img element, no dialog', async () => {
    const probe = rows.find((r) => r.request_model === XSS_MODEL)!;
    expect(probe).toBeDefined();
    const shown = await page.textContent(`tr[data-id="${probe.id}"] td.model`);
    expect(shown).toBe(XSS_MODEL);
    expect(await page.$$eval('img', (imgs) => imgs.length)).toBe(0);
    expect(dialogs()).toBe(0);
  });

  it('narrows the table with a filter', async () => {
    await page.fill('#filters input[name=app]', 'beta');
    await page.click('#filters button[type=submit]');
    const want = newestFirst()
      .filter((r) => r.app === 'beta')
      .map((r) => r.id);
    expect(want.length).toBeGreaterThan(0);
    expect(want.length).toBeLessThan(rows.length);
    // Wait for the filtered table itself (the page re-renders on the hash change, and a busy
    // machine may show the previous table for a while), then check it.
    await page.waitForURL(/app=beta/);
    // Polled from here, not with a string predicate in the page: the console's CSP (no
    // 'unsafe-eval') refuses page.waitForFunction's string form whenever it has to poll.
    await expect
      .poll(
        () => page.$$eval('#requests tbody tr[data-id]', (trs) => trs.map((t) => t.getAttribute('data-id'))),
        { timeout: 15_000 },
      )
      .toEqual(want);
    expect(page.url()).toContain('app=beta');
  });

  it('opens a request whose fields match its DB row', async () => {
    const target = rows.find((r) => r.app === 'beta' && r.request_model === 'deepseek-chat')!;
    await page.click(`tr[data-id="${target.id}"]`);
    await page.waitForSelector('dd[data-field="id"]');
    const fields = await page.$$eval('dd[data-field]', (dds) =>
      Object.fromEntries(dds.map((d) => [d.getAttribute('data-field'), d.textContent])),
    );
    const text = (v: unknown) => (v === null ? '-' : String(v));
    for (const key of [
      'id',
      'app',
      'request_model',
      'response_model',
      'upstream',
      'path',
      'http_status',
      'input_tokens',
      'output_tokens',
      'usage_source',
      'cost_nanos',
      'currency',
      'cost_source',
      'price_id',
      'trace_id',
      'upstream_request_id',
    ] as const)
      expect([key, fields[key]]).toEqual([key, text(target[key])]);
    expect(fields.stream).toBe('false');
    expect(fields.ts_start).toContain(`(${target.ts_start})`);
    // Capture is on: the redacted request body is shown as text.
    expect(await page.textContent('#body-request')).toContain('Explain keyset pagination');
  });

  it('draws the spend chart with points, one chart per currency', async () => {
    await page.goto(`${world.base}/-/ui/#/spend?since=24h&by=model`);
    await page.waitForSelector('svg.chart circle.point');
    const charts = await page.$$eval('svg.chart', (svgs) => svgs.map((s) => s.getAttribute('data-currency')));
    expect(charts).toEqual(['CNY', 'USD']);
    const points = await page.$$eval('svg.chart[data-currency=USD] circle.point', (c) => c.length);
    expect(points).toBeGreaterThanOrEqual(2); // gpt-4o-mini and claude-haiku-4-5
  });

  it('shows the prices page with the unpriced XSS model as text', async () => {
    await page.goto(`${world.base}/-/ui/#/prices`);
    await page.waitForSelector('#unpriced tbody tr');
    const models = await page.$$eval('#unpriced td.model', (tds) => tds.map((t) => t.textContent));
    expect(models).toContain(XSS_MODEL);
    expect(models).toContain('mystery-model-x');
    expect(await page.$$eval('img', (imgs) => imgs.length)).toBe(0);
    await page.goto(`${world.base}/-/ui/#/budgets`);
    await page.waitForSelector('text=No budgets configured');
  });

  it('shows the reconcile page (nothing to reconcile without billing: or reported costs)', async () => {
    await page.goto(`${world.base}/-/ui/#/reconcile?since=24h`);
    await page.waitForSelector('text=Nothing to reconcile in this window');
    expect(await page.$eval('nav a.active', (a) => a.textContent)).toBe('Reconcile');
  });

  it('offers no Fleet tab without fleet.postgres (test/console/fleet.test.ts has the page)', async () => {
    expect(await page.isHidden('nav a[data-page=fleet]')).toBe(true);
    expect(await page.isVisible('nav a[data-page=reconcile]')).toBe(true);
  });

  it('had no console errors, CSP violations or dialogs on any page', () => {
    expect(problems).toEqual([]);
    expect(dialogs()).toBe(0);
  });
});
