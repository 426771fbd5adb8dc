/**
 * Every better-sqlite3 connection tokenmeter opens goes through `openSqlite`, because of a crash
 * on Node.js 24: better-sqlite3 ≤ 12 wraps its Database and Statement objects in `node::ObjectWrap`,
 * whose destructor on Node 24 removes an environment cleanup hook and aborts the whole process
 * (`Assertion failed: (env) != nullptr` in `node::RemoveEnvironmentCleanupHook`, from
 * `Statement::~Statement`) when V8 collects such an object while no Node context is current.
 * Reported against 12.x and closed without a fix (WiseLibs/better-sqlite3#1515); 13.x moved to
 * Node-API and needs Node ≥ 22, while CI and many users run Node 20 (docs/dependencies.md).
 *
 * So no Database or Statement object tokenmeter creates ever becomes garbage:
 * - each connection stays referenced for the life of the process (or thread), closed or not;
 * - `prepare` returns one Statement per SQL text per connection, made once and kept (every SQL
 *   text in src/ is fixed or built from a bounded set of clauses, values are always parameters);
 * - `pragma` runs through that same cache (better-sqlite3's own makes a fresh Statement per call);
 * - `iterate()` is never used: its StatementIterator aborts the same way when collected (seen
 *   under `reprice`), so long reads go in pages with `.all()` (src/cli/reprice.ts).
 * `db.transaction` already keeps its BEGIN/COMMIT statements for the connection's life.
 * Statement modes are per Statement: a caller that sets one (`safeIntegers()`, `pluck()`) always
 * sets it for its own SQL text, and `pragma` sets `pluck` explicitly on every call.
 */
import Database from 'better-sqlite3';

const retained = new Set<Database.Database>();

export function openSqlite(path: string, options?: Database.Options): Database.Database {
  const db = new Database(path, options);
  retained.add(db);
  const statements = new Map<string, Database.Statement>();
  const prepareOnce = (sql: string): Database.Statement => {
    let statement = statements.get(sql);
    if (statement === undefined) {
      statement = Database.prototype.prepare.call(db, sql) as Database.Statement;
      statements.set(sql, statement);
    }
    return statement;
  };
  db.prepare = prepareOnce as Database.Database['prepare'];
  db.pragma = ((source: string, options?: { simple?: boolean }) => {
    const statement = prepareOnce(`PRAGMA ${source}`);
    if (!statement.reader) {
      // A pragma that sets without answering (`foreign_keys = ON`): better-sqlite3 answers [].
      statement.run();
      return options?.simple ? undefined : [];
    }
    return options?.simple ? statement.pluck(true).get() : statement.pluck(false).all();
  }) as Database.Database['pragma'];
  return db;
}

/** How many connections this process (or thread) has kept alive; for tests. */
export function retainedConnections(): number {
  return retained.size;
}
