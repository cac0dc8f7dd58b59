/**
 * The EngineClient in this process (for the CLI): the engine and its batching scheduler, without a server. Work
 * started at once shares decode steps as it does behind the HTTP API.
 */
import type { Engine } from '../engine/engine.ts';
import type { GeneratedToken } from '../engine/generate.ts';
import type { JobParams } from '../engine/generate.ts';
import { Scheduler } from '../engine/scheduler.ts';
import type { ModelTokenizer } from '../engine/tokenizer.ts';
import type { View } from '../engine/view.ts';
import { meanKl } from './damage.ts';
import { collect, type EngineClient } from './engine-client.ts';
import { exportView } from './export.ts';

export function localClient(engine: Engine, tok: ModelTokenizer, concurrency: number): EngineClient<View> {
  const sched = new Scheduler(engine, tok, { maxBatch: concurrency, maxRunning: concurrency * 2, maxWaiting: 1 << 20, prefillChunk: 512, maxContext: engine.spec.maxPositionEmbeddings });
  let seq = 0;
  const run = (promptIds: number[], params: JobParams, v: View, promptLogprobs?: number) =>
    new Promise<{ tokens: GeneratedToken[]; finish: string; prompt: (number | null)[] }>((resolve, reject) => {
      const tokens: GeneratedToken[] = [];
      let prompt: (number | null)[] = [];
      sched.submit({
        id: `client-${seq++}`,
        promptIds,
        params,
        view: v,
        promptLogprobs,
        onPromptLogprobs: (lps) => (prompt = lps.map((p) => p.logprob)),
        onToken: (t) => tokens.push(t),
        onDone: (f) => resolve({ tokens, finish: f.reason, prompt }),
        onError: reject,
      });
    });
  return {
    generate: async (view, ids, params) => {
      const r = await run(ids, params, view);
      return collect(r.tokens, r.finish);
    },
    score: async (view, context, continuation) => {
      if (!continuation.length) return [];
      const r = await run([...context, ...continuation], { maxTokens: 0 }, view, 0);
      return r.prompt.slice(context.length).map((x) => x ?? 0);
    },
    kl: async (ids, base, views) => {
      const intact = await engine.logits(ids, base);
      const out: number[] = [];
      for (const v of views) out.push(meanKl(intact, await engine.logits(ids, v)));
      return out;
    },
    export: async (view, out, opts) => exportView(engine, view, out, opts),
  };
}
