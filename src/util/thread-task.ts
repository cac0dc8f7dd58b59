/**
 * One function call in a worker thread, for work that would hold the HTTP thread for seconds (validating or
 * extracting a plugin of hundreds of MB): the module is imported in a fresh thread, the named export called
 * with the (structured-cloned) arguments, and its result or error sent back. An error comes back with its
 * name, message and own fields, so the caller can rebuild its class.
 */
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { tsWorker } from './ts-worker.ts';

interface Task {
  threadTask: { module: string; fn: string; args: unknown[] };
}

type Reply = { ok: true; value: unknown } | { ok: false; error: { name: string; message: string; fields: Record<string, unknown> } };

/** A thrown error as it crossed the thread: `name`, `message` and its own fields. */
export class ThreadTaskError extends Error {
  readonly errorName: string;
  readonly fields: Record<string, unknown>;
  constructor(errorName: string, message: string, fields: Record<string, unknown>) {
    super(message);
    this.errorName = errorName;
    this.fields = fields;
    this.name = errorName;
  }
}

export function runInThread<T>(module: URL, fn: string, args: unknown[]): Promise<T> {
  const worker = tsWorker(new URL(import.meta.url), { threadTask: { module: module.href, fn, args } } satisfies Task);
  return new Promise<T>((resolve, reject) => {
    let done = false;
    worker.once('message', (m: Reply) => {
      done = true;
      if (m.ok) resolve(m.value as T);
      else reject(new ThreadTaskError(m.error.name, m.error.message, m.error.fields));
    });
    worker.once('error', (e) => {
      done = true;
      reject(e);
    });
    worker.once('exit', (code) => done || reject(new Error(`the task's thread exited (code ${code}) without an answer`)));
  });
}

if (!isMainThread && (workerData as Partial<Task> | undefined)?.threadTask) {
  const { module, fn, args } = (workerData as Task).threadTask;
  const post = (r: Reply) => parentPort!.postMessage(r);
  import(module)
    .then((mod: Record<string, (...a: unknown[]) => unknown>) => mod[fn](...args))
    .then(
      (value) => post({ ok: true, value }),
      (e: Error) => post({ ok: false, error: { name: e?.name ?? 'Error', message: e?.message ?? String(e), fields: { ...e } } }),
    )
    .finally(() => parentPort!.close());
}
