/**
 * tokenmeter's proxy with a no-op Meter, as its own process (docs/benchmarks.md, row `tm-noop`):
 * the same proxy code `serve` runs, minus decoders, pricing and sinks. Next to the `tm-serve` row it
 * tells the proxy's own cost from the metering's. Built with the proxy tests' settings helpers and
 * NOOP_METER, which move with the proxy's interfaces.
 *
 * The tree is TOKENMETER_BENCH_ROOT (default: this repository), so the row measures the same
 * tree as the CLI under test. The proxy and logger come from its built `dist/`, the code `serve`
 * runs: loaded from source through tsx, every closure the proxy makes per request also ran
 * esbuild's `__name` helper (1.5 % of a profile at c=32), a cost `serve` does not have.
 *
 * Run: `node --import tsx bench/tm-noop.ts --upstream URL`; prints `{"port":N}` on stdout, or exits
 * 1 with the reason on stderr.
 */
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

type ServerModule = typeof import('../src/proxy/server.js');
type HelpersModule = typeof import('../test/proxy/helpers.js');
type MeterModule = typeof import('../test/proxy/recording-meter.js');

const root = resolve(process.env.TOKENMETER_BENCH_ROOT ?? new URL('..', import.meta.url).pathname);
const load = <T>(rel: string): Promise<T> => import(pathToFileURL(resolve(root, rel)).href) as Promise<T>;

const flag = process.argv.indexOf('--upstream');
const upstreamUrl = process.argv[flag + 1] ?? 'http://127.0.0.1:1';

try {
  const { createProxyServer } = await load<ServerModule>('dist/proxy/server.js');
  const { testSettings, upstreamSettings } = await load<HelpersModule>('test/proxy/helpers.ts');
  const { NOOP_METER } = await load<MeterModule>('test/proxy/recording-meter.ts');
  const { SILENT_LOGGER } = await load<typeof import('../src/log.js')>('dist/log.js');
  const settings = testSettings([upstreamSettings('default', `${upstreamUrl}/v1`)], {
    db: null,
    presets: true,
  });
  const proxy = createProxyServer({ settings, meter: NOOP_METER, log: SILENT_LOGGER });
  const addr = await proxy.listen();
  process.stdout.write(JSON.stringify({ port: addr.port }) + '\n');
  process.on('SIGTERM', () => void proxy.close(1000).then(() => process.exit(0)));
} catch (err) {
  process.stderr.write(`tm-noop: cannot start the proxy from ${root}: ${(err as Error).message}\n`);
  process.exit(1);
}
