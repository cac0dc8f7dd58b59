/**
 * A Freeze run in a worker thread, so that training (onnxruntime's runs block their thread) never stalls the
 * server's HTTP thread. Cancelling asks the thread to stop between steps: terminating a thread inside an
 * onnxruntime run aborts the whole process.
 */
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { tsWorker } from '../util/ts-worker.ts';
import { runFreeze, type FreezeResult, type FreezeSettings } from './freeze.ts';
import { FreezeError } from './freeze-sets.ts';

type Message = { type: 'progress'; step: number; steps: number; loss: number } | { type: 'done'; result: FreezeResult } | { type: 'error'; message: string; param?: string };

/** Training threads alive: shutdown waits for them to end (after their current step) before the process exits. */
const threads = new Set<Promise<void>>();

/** Resolves when every training thread has ended. */
export async function trainingThreadsEnded(): Promise<void> {
  while (threads.size) await Promise.all([...threads]);
}

export function freezeInWorker(settings: FreezeSettings, progress: (step: number, steps: number, loss: number) => void, signal?: AbortSignal): Promise<FreezeResult> {
  const worker = tsWorker(new URL('./freeze-worker.ts', import.meta.url), { freeze: settings });
  const ended = new Promise<void>((r) => worker.once('exit', () => r()));
  threads.add(ended);
  void ended.then(() => threads.delete(ended));
  return new Promise((resolve, reject) => {
    let settled = false;
    const settle = (f: () => void) => {
      if (settled) return;
      settled = true;
      signal?.removeEventListener('abort', abort);
      f();
    };
    const abort = () => worker.postMessage({ type: 'cancel' });
    if (signal?.aborted) abort();
    signal?.addEventListener('abort', abort);
    worker.on('message', (m: Message) => {
      if (m.type === 'progress') progress(m.step, m.steps, m.loss);
      else if (m.type === 'done') settle(() => resolve(m.result));
      else settle(() => reject(m.param ? new FreezeError(m.message, m.param) : new Error(m.message)));
    });
    worker.on('error', (e) => settle(() => reject(e)));
    worker.on('exit', (code) => settle(() => reject(new Error(`the training thread exited (code ${code})`))));
  });
}

if (!isMainThread && workerData?.freeze) {
  const post = (m: Message) => parentPort!.postMessage(m);
  const ac = new AbortController();
  parentPort!.on('message', (m: { type?: string }) => m?.type === 'cancel' && ac.abort());
  runFreeze(workerData.freeze as FreezeSettings, (step, steps, loss) => post({ type: 'progress', step, steps, loss }), ac.signal)
    .then(
      (result) => post({ type: 'done', result }),
      (e: Error) => post({ type: 'error', message: e.message, param: e instanceof FreezeError ? e.param : undefined }),
    )
    // The port would keep the thread alive: with the run over, let it end.
    .finally(() => parentPort!.close());
}
