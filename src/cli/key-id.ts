/**
 * `tokenmeter key-id <key>` (DESIGN.md §4.3): prints the 12-hex fingerprint of an API key, the
 * value to put in the config's `apps:` map and the one records carry as `key_id`. The secret is
 * `--key-salt` (the config's `key_salt`) if given, else the audit DB's own secret, created if the
 * DB is new so that a later `serve` on the same DB fingerprints identically. Config and DB path
 * resolve exactly as for `serve` (src/config/load.ts). The key itself is
 * never printed; pass `-` to read it from stdin and keep it out of shell history.
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { keyFingerprint } from '../attribution.js';
import { UsageError } from '../errors.js';
import { ensureKeySecret, openDatabase } from '../sinks/audit/migrations.js';
import { CONFIG_HELP, DB_HELP, resolveDb, runAction } from './db.js';

export interface KeyIdOptions {
  db?: string;
  config?: string;
  keySalt?: string;
}

export function keyIdCommand(
  key: string,
  opts: KeyIdOptions,
  env: NodeJS.ProcessEnv = process.env,
  cwd: string = process.cwd(),
): string {
  const apiKey = (key === '-' ? readFileSync(0, 'utf8') : key).trim();
  if (apiKey === '') throw new UsageError('key-id: the key is empty');
  if (opts.keySalt !== undefined) return keyFingerprint(opts.keySalt, apiKey) + '\n';
  const { settings, dbPath: path } = resolveDb(opts, env, cwd);
  if (settings.keySalt !== undefined) return keyFingerprint(settings.keySalt, apiKey) + '\n';
  if (path === ':memory:') {
    throw new UsageError('key-id: an in-memory DB has no lasting secret; pass --key-salt or a DB file');
  }
  const db = openDatabase(path);
  try {
    return keyFingerprint(ensureKeySecret(db), apiKey) + '\n';
  } finally {
    db.close();
  }
}

export function register(program: Command): void {
  program
    .command('key-id')
    .description('print the fingerprint (key_id) of an API key, as used in apps: and in records')
    .argument('<key>', 'the API key, or - to read it from stdin')
    .option('--db <path>', DB_HELP)
    .option('--config <file>', `${CONFIG_HELP}; its key_salt wins over the DB secret`)
    .option('--key-salt <salt>', 'use this salt instead of the config key_salt or the DB secret')
    .action((key: string, opts: KeyIdOptions) =>
      runAction(() => {
        process.stdout.write(keyIdCommand(key, opts));
      }),
    );
}
