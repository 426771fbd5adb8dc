/**
 * Runs the fake gateway as a process, for manual runs and tests that need a separate process:
 *   node --import tsx test/fake-gateway/main.ts [--port N] [--base-path /api/v1] [--no-record]
 * (--no-record: keep no request log, for long benchmark runs.)
 * Prints `{"url": "http://127.0.0.1:PORT"}` on one stdout line once listening; exits on SIGTERM/SIGINT.
 */
import { startFakeGateway } from './index.js';

function argValue(name: string): string | undefined {
  const index = process.argv.indexOf(name);
  return index >= 0 ? process.argv[index + 1] : undefined;
}

const portArg = argValue('--port');
const port = portArg === undefined ? 0 : Number.parseInt(portArg, 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  process.stderr.write(`fake-gateway: --port must be an integer 0..65535, got ${String(portArg)}\n`);
  process.exit(2);
}

const gateway = await startFakeGateway({
  port,
  basePath: argValue('--base-path'),
  recordRequests: !process.argv.includes('--no-record'),
});
process.stdout.write(`${JSON.stringify({ url: gateway.url })}\n`);

let stopping = false;
const stop = (): void => {
  if (stopping) return;
  stopping = true;
  void gateway.close().then(() => process.exit(0));
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
