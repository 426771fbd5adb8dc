/**
 * The console's reader thread (a `worker_threads` worker started by `reader.ts`): the read-only
 * connection to the audit log and the named operations of `operations.ts`, one message at a time,
 * so a long query never holds the event loop that carries the proxied traffic. Each answer crosses
 * as JSON text and carries the request's `seq`; queueing, timeouts and restarts stay on the main
 * thread.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { TokenmeterError } from '../errors.js';
import { ReadOnlyAudit, runOperation } from './operations.js';
import type { FromReader, ReaderSetup, ToReader } from './reader.js';

if (!parentPort) throw new Error('reader-thread.ts runs as a worker thread of the console');
const port = parentPort;
const setup = workerData as ReaderSetup;
const audit = new ReadOnlyAudit(setup.path, setup.busyTimeoutMs);
const reply = (msg: FromReader): void => port.postMessage(msg);

port.on('message', (msg: ToReader) => {
  switch (msg.type) {
    case 'query':
      try {
        reply({ type: 'result', seq: msg.seq, json: JSON.stringify(runOperation(audit.db(), msg.query)) });
      } catch (err) {
        reply({
          type: 'error',
          seq: msg.seq,
          message: err instanceof Error ? err.message : String(err),
          usage: err instanceof TokenmeterError && err.code === 'USAGE',
        });
      }
      return;
    case 'exit':
      process.exit(1);
  }
});
reply({ type: 'ready' });
