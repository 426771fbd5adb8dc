/**
 * One connection to the fleet Postgres for a CLI command (`report --fleet`, `db prune --fleet`):
 * a clear error when fleet mode is not configured or the server cannot be reached, with the
 * password masked (./redact.ts).
 */
import pg from 'pg';
import type { Settings } from '../config/types.js';
import { TokenmeterError, UsageError } from '../errors.js';
import { readPgSchemaVersion } from './pg-schema.js';
import { redactSecret, redactUrl } from './redact.js';

export const FLEET_NOT_CONFIGURED =
  'fleet.postgres is not configured: set fleet.postgres.url in the config file or TOKENMETER_PG_URL';

export interface FleetConnectOptions {
  connectTimeoutMs?: number;
}

/** Connects and checks that some sidecar created the schema; the caller ends the client. */
export async function connectFleet(settings: Settings, opts: FleetConnectOptions = {}): Promise<pg.Client> {
  const url = settings.fleet?.postgres.url;
  if (url === undefined || url === '') throw new UsageError(FLEET_NOT_CONFIGURED);
  const client = new pg.Client({
    connectionString: url,
    connectionTimeoutMillis: opts.connectTimeoutMs ?? 5_000,
  });
  // A server going away mid-command rejects the query in flight; the event alone must not crash.
  client.on('error', () => undefined);
  try {
    await client.connect();
    if ((await readPgSchemaVersion(client)) === 0) {
      throw new TokenmeterError(
        'DB_ERROR',
        `fleet Postgres ${redactUrl(url)} has no tokenmeter tables yet: start a sidecar with fleet.postgres (it creates them)`,
      );
    }
    return client;
  } catch (err) {
    await client.end().catch(() => undefined);
    if (err instanceof TokenmeterError) throw err;
    const text = err instanceof Error ? err.message : String(err);
    throw new TokenmeterError(
      'DB_ERROR',
      `cannot reach the fleet Postgres at ${redactUrl(url)}: ${redactSecret(text, url)}; ` +
        'check fleet.postgres.url / TOKENMETER_PG_URL and that the server is up',
    );
  }
}

/** Runs `fn` with a connected fleet client and always closes it. */
export async function withFleet<T>(
  settings: Settings,
  fn: (client: pg.Client) => Promise<T>,
  opts: FleetConnectOptions = {},
): Promise<T> {
  const client = await connectFleet(settings, opts);
  try {
    return await fn(client);
  } catch (err) {
    if (err instanceof TokenmeterError) throw err;
    const url = settings.fleet?.postgres.url ?? '';
    const text = err instanceof Error ? err.message : String(err);
    throw new TokenmeterError('DB_ERROR', `fleet Postgres ${redactUrl(url)}: ${redactSecret(text, url)}`);
  } finally {
    await client.end().catch(() => undefined);
  }
}
