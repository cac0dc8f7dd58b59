/**
 * A worker thread running one of the project's TypeScript modules: tsx is registered inside the thread before
 * the module is imported (the project runs without a build step).
 */
import { Worker } from 'node:worker_threads';

export function tsWorker(module: URL, workerData: unknown): Worker {
  return new Worker(`import('tsx/esm/api').then(({ register }) => { register(); return import(${JSON.stringify(module.href)}); })`, { eval: true, workerData });
}
