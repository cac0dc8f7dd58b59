/**
 * The engine's thread. onnxruntime-node's `session.run` blocks the event loop for the whole run, so the
 * engine, its scheduler and the overlay tensors live here, and the HTTP server stays responsive. Messages
 * are defined in `protocol.ts`; weights are loaded once, in this thread only.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { Engine } from '../engine/engine.ts';
import { QueueFullError, Scheduler } from '../engine/scheduler.ts';
import { ModelTokenizer } from '../engine/tokenizer.ts';
import { OverlayLoader } from '../views/overlays.ts';
import { exportView } from '../stethoscope/export.ts';
import { meanKl } from '../stethoscope/damage.ts';
import { servedContext, type HostToWorker, type WorkerInit, type WorkerToHost } from './protocol.ts';

const port = parentPort!;
const post = (m: WorkerToHost) => port.postMessage(m);
const init = workerData as WorkerInit;

/** A stop that arrives while the model loads is honoured once it has loaded (a session mid-creation must finish). */
let stopRequested = false;
port.on('message', (m: HostToWorker) => {
  if (m.type === 'stop') stopRequested = true;
});

async function main() {
  let engine: Engine;
  let tokenizer: ModelTokenizer;
  try {
    engine = await Engine.load(init.modelDir, init.engine);
    tokenizer = ModelTokenizer.fromDir(init.modelDir);
  } catch (e) {
    post({ type: 'fatal', message: (e as Error).message });
    // Nothing more to do here: let the thread end (the listener above would keep it alive).
    port.close();
    return;
  }
  // Work outside the scheduler (KL sweeps) that a stop waits for: onnxruntime must not be torn down mid-run.
  const tasks = new Set<Promise<unknown>>();
  const track = (p: Promise<unknown>) => {
    tasks.add(p);
    void p.finally(() => tasks.delete(p));
  };
  let stopping: Promise<void> | null = null;
  const stop = () =>
    (stopping ??= (async () => {
      scheduler.cancelAll();
      await scheduler.idle();
      await Promise.allSettled([...tasks]);
      await engine.release();
      process.exit(0);
    })());
  const overlays = new OverlayLoader(engine, init.overlayCacheBytes);
  const scheduler = new Scheduler(engine, tokenizer, { ...init.scheduler, maxContext: servedContext(init.scheduler.maxContext, engine.spec) });
  post({ type: 'ready', spec: engine.spec, fingerprint: engine.fingerprint, device: engine.device, servingFrom: engine.servingFrom, pluggableMaxAbs: Object.fromEntries(engine.pluggableMaxAbs()) });

  if (stopRequested) return void stop();
  port.on('message', (m: HostToWorker) => {
    if (stopping && m.type !== 'stats') return;
    switch (m.type) {
      case 'stop':
        void stop();
        break;
      case 'submit': {
        const id = m.id;
        try {
          const view = overlays.view(m.view);
          scheduler.submit({
            id,
            promptIds: m.promptIds,
            params: m.params,
            view,
            promptLogprobs: m.promptLogprobs,
            promptGroup: m.promptGroup,
            onPromptLogprobs: (lps) => post({ type: 'prompt_logprobs', id, logprobs: lps }),
            onScheduled: () => post({ type: 'scheduled', id }),
            onToken: (token) => post({ type: 'token', id, token }),
            onDone: (finish) => post({ type: 'done', id, finish }),
            onError: (e) => post({ type: 'error', id, message: e.message, code: (e as Error & { code?: string }).code }),
          });
        } catch (e) {
          const err = e as Error;
          post({ type: 'rejected', id, reason: e instanceof QueueFullError ? 'queue_full' : 'invalid', message: err.message });
        }
        break;
      }
      case 'cancel':
        scheduler.cancel(m.id);
        break;
      case 'export':
        track(
          (async () => {
            try {
              // A turn of the event loop between tensors: the scheduler's decode steps go on during an export.
              const between = () => new Promise<void>((r) => setImmediate(r));
              const { tensors } = await exportView(engine, overlays.view(m.view), m.out, { dtype: m.dtype, shardBytes: m.shardBytes, between });
              post({ type: 'exported', reqId: m.reqId, tensors });
            } catch (e) {
              post({ type: 'exported', reqId: m.reqId, error: (e as Error).message });
            }
          })(),
        );
        break;
      case 'kl':
        track(
          (async () => {
            try {
              const base = await engine.logits(m.ids, overlays.view(m.base));
              const kl: number[] = [];
              for (const v of m.views) kl.push(meanKl(base, await engine.logits(m.ids, overlays.view(v))));
              post({ type: 'kl', reqId: m.reqId, kl });
            } catch (e) {
              post({ type: 'kl', reqId: m.reqId, error: (e as Error).message });
            }
          })(),
        );
        break;
      case 'stats':
        post({ type: 'stats', reqId: m.reqId, stats: { ...scheduler.stats(), overlays: overlays.stats() } });
        break;
    }
  });
}

void main();
