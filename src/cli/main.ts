/**
 * The `tokenmeter` command. Each subcommand lives in src/cli/<cmd>.ts and registers itself through
 * `register(program)`. bin/tokenmeter.js imports this module, so importing it runs the CLI.
 */
import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import { TokenmeterError } from '../errors.js';
import { register as registerBudgets } from './budgets.js';
import { register as registerDb } from './db.js';
import { register as registerKeyId } from './key-id.js';
import { register as registerPrices } from './prices.js';
import { register as registerReconcile } from './reconcile.js';
import { register as registerReport } from './report.js';
import { register as registerReprice } from './reprice.js';
import { register as registerServe } from './serve.js';

function packageVersion(): string {
  // src/cli/main.ts and dist/cli/main.js both sit two levels below the package root.
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
      version?: string;
    };
    return pkg.version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
}

export function buildProgram(): Command {
  const program = new Command('tokenmeter')
    .description(
      'transparent local proxy that meters LLM tokens and cost (Prometheus, OpenTelemetry, SQLite)',
    )
    .version(packageVersion(), '-V, --version')
    .configureOutput({
      // commander usage errors: one line on stderr, exit 2 (see exitOverride below).
      outputError: (str, write) => write(str),
    })
    .exitOverride((err) => {
      if (
        err.code === 'commander.helpDisplayed' ||
        err.code === 'commander.version' ||
        err.code === 'commander.help'
      )
        process.exit(0);
      process.exit(2);
    });
  registerServe(program);
  registerReport(program);
  registerReprice(program);
  registerReconcile(program);
  registerPrices(program);
  registerBudgets(program);
  registerKeyId(program);
  registerDb(program);
  return program;
}

try {
  await buildProgram().parseAsync(process.argv);
} catch (err) {
  // Known errors: one line (or one line per problem) and their exit code; never a stack trace.
  if (!(err instanceof TokenmeterError)) throw err;
  process.stderr.write(`tokenmeter: ${err.message}\n`);
  process.exitCode = err.exitCode;
}
