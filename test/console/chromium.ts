/**
 * Debian's Chromium driven by playwright-core, for the console's browser tests. Without
 * /usr/bin/chromium they skip with a printed reason, except with CI=true (.ci/run installs it).
 */
import { existsSync } from 'node:fs';
import { chromium, type Browser, type Page } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';

/** True (after printing why, once per file) when a browser test should skip. */
export function skipWithoutChromium(file: string): boolean {
  if (existsSync(CHROMIUM) || process.env.CI === 'true') return false;
  console.warn(`${file} skipped: ${CHROMIUM} is missing (apt-get install chromium)`);
  return true;
}

export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/** A page that records console errors (CSP violations included), failed loads and dialogs. */
export interface WatchedPage {
  page: Page;
  problems: string[];
  dialogs(): number;
}

export async function watchedPage(browser: Browser): Promise<WatchedPage> {
  const page = await browser.newPage();
  const problems: string[] = [];
  let dialogs = 0;
  page.on('dialog', (d) => {
    dialogs++;
    void d.dismiss();
  });
  // Console errors include CSP violations ("Refused to …") and failed loads.
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') problems.push(m.text());
  });
  page.on('pageerror', (e) => problems.push(e.message));
  // A fetch cut short by the test's own navigation (net::ERR_ABORTED) is not a page problem.
  page.on('requestfailed', (r) => {
    if (r.failure()?.errorText !== 'net::ERR_ABORTED') problems.push(`failed: ${r.url()}`);
  });
  return { page, problems, dialogs: () => dialogs };
}
