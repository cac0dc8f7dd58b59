/**
 * A worker thread running one of the project's TypeScript modules (the project runs without a build step): Node
 * 22.18+ strips the types itself (not under node_modules); elsewhere tsx is registered inside the thread first.
 */
import { Worker } from 'node:worker_threads';

/** Whether this Node runs the TypeScript module at `url` by type stripping alone. */
export function stripsTypes(url: URL): boolean {
  return Boolean((process.features as { typescript?: string }).typescript) && !url.pathname.includes('/node_modules/');
}

export function tsWorker(module: URL, workerData: unknown): Worker {
  if (stripsTypes(module)) return new Worker(module, { workerData });
  return new Worker(`import('tsx/esm/api').then(({ register }) => { register(); return import(${JSON.stringify(module.href)}); })`, { eval: true, workerData });
}
