/**
 * The writer thread's entry (a `worker_threads` worker started by `writer-host.ts`): one
 * `AuditWriter` owning the write connection, answering each message in order. Replies carry the
 * request's `seq`; everything else (queue, retries, logging, counters) stays on the main thread.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { lowerThisThreadPriority } from '../../thread-priority.js';
import { AuditWriter, type WriterSetup } from './audit-writer.js';
import type { FromWriter, ToWriter } from './writer-host.js';

if (!parentPort) throw new Error('writer-thread.ts runs as a worker thread of the audit log');
const port = parentPort;
const setup = workerData as WriterSetup;
// Before the connection opens: SQLite's work is all on this thread.
const lowPriority = setup.lowPriority === true && lowerThisThreadPriority();
const writer = new AuditWriter(setup);
const reply = (msg: FromWriter): void => port.postMessage(msg);

port.on('message', (msg: ToWriter) => {
  switch (msg.type) {
    case 'job':
      reply({
        type: 'result',
        seq: msg.seq,
        result: writer.run(msg.job),
      });
      return;
    case 'exec':
      try {
        writer.exec(msg.sql);
        reply({ type: 'exec', seq: msg.seq });
      } catch (err) {
        reply({ type: 'exec', seq: msg.seq, error: (err as Error).message });
      }
      return;
    case 'close':
      reply({ type: 'closed', seq: msg.seq, ...writer.close(msg.keepMarker) });
      port.close();
      return;
    case 'exit':
      process.exit(1);
  }
});
reply({ type: 'ready', lowPriority });
