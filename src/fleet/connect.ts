/**
 * Connections to the fleet Postgres outside the shipper: one client for a CLI command (`report
 * --fleet`, `db prune --fleet`), a small pool for a long-lived reader (the console's fleet view,
 * the shared budget ledger). Clear errors when fleet mode is not configured or the server cannot be
 * reached, with the password masked (./redact.ts).
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

const errorText = (err: unknown): string => (err instanceof Error ? err.message : String(err));

/** The one-line answer when the server cannot be reached: names host:port, never the password. */
export function unreachableMessage(url: string, err: unknown): string {
  return (
    `cannot reach the fleet Postgres at ${redactUrl(url)}: ${redactSecret(errorText(err), url)}; ` +
    'check fleet.postgres.url / TOKENMETER_PG_URL and that the server is up'
  );
}

/** A statement that failed on a reachable server (timed out, connection cut), password masked. */
export function queryFailedMessage(url: string, err: unknown): string {
  return `fleet Postgres ${redactUrl(url)}: ${redactSecret(errorText(err), url)}`;
}

/** Refuses a database no sidecar has migrated yet (the fleet tables would not exist). */
export async function requireFleetSchema(client: pg.ClientBase, url: string): Promise<void> {
  if ((await readPgSchemaVersion(client)) === 0) {
    throw new TokenmeterError(
      'DB_ERROR',
      `fleet Postgres ${redactUrl(url)} has no tokenmeter tables yet: start a sidecar with fleet.postgres (it creates them)`,
    );
  }
}

/**
 * A pool that never crashes the process: an idle client losing its server emits 'error' on the
 * pool, and a checked-out one (between two statements) on the client itself; without a listener
 * either would be an uncaught exception when Postgres restarts. The statement in progress, or the
 * next one, fails instead, and its caller handles that.
 */
export function openFleetPool(url: string, config: Omit<pg.PoolConfig, 'connectionString'>): pg.Pool {
  const pool = new pg.Pool({ ...config, connectionString: url });
  pool.on('error', () => undefined);
  pool.on('connect', (c) => c.on('error', () => undefined));
  return pool;
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
    await requireFleetSchema(client, url);
    return client;
  } catch (err) {
    await client.end().catch(() => undefined);
    if (err instanceof TokenmeterError) throw err;
    throw new TokenmeterError('DB_ERROR', unreachableMessage(url, err));
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
    throw new TokenmeterError('DB_ERROR', queryFailedMessage(settings.fleet?.postgres.url ?? '', err));
  } finally {
    await client.end().catch(() => undefined);
  }
}
