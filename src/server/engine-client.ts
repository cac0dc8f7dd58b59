/**
 * The EngineClient over the server's engine worker: generation and scoring on view specs through the same
 * runner (admission, batching, metrics) as the OpenAI routes; KL and export as requests to the worker. A probe answering a request fails with a 429 when
 * the queue is full; a background job (`wait`) waits for room instead.
 */
import type { GeneratedToken } from '../engine/generate.ts';
import type { EngineHost } from '../runtime/host.ts';
import type { ViewSpec } from '../runtime/protocol.ts';
import { collect, type EngineClient } from '../stethoscope/engine-client.ts';
import { ApiError } from './errors.ts';
import type { JobRunner } from './jobs.ts';

export function serverClient(deps: { runner: JobRunner; host: EngineHost }, signal: AbortSignal, opts: { wait: boolean }): EngineClient<ViewSpec> {
  const { runner, host } = deps;
  const admit = async () => {
    for (;;) {
      try {
        runner.admit(1);
        return;
      } catch (e) {
        if (!opts.wait || !(e instanceof ApiError) || e.status !== 429) throw e;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  };
  return {
    generate: async (view, promptIds, params) => {
      await admit();
      const tokens: GeneratedToken[] = [];
      let finish = 'length';
      for await (const e of runner.start({ promptIds, view, params }, signal)) {
        if (e.type === 'token') tokens.push(e.token);
        else if (e.type === 'done') finish = e.finish.reason;
      }
      return collect(tokens, finish);
    },
    score: async (view, context, continuation) => {
      if (continuation.length === 0) return [];
      await admit();
      let lps: number[] = [];
      for await (const e of runner.start({ promptIds: [...context, ...continuation], view, params: { maxTokens: 0 }, promptLogprobs: 0 }, signal)) {
        if (e.type === 'prompt_logprobs') lps = e.logprobs.slice(context.length).map((p) => p.logprob ?? 0);
      }
      return lps;
    },
    kl: (ids, base, views) => host.kl(ids, base, views),
    export: (view, out, o) => host.export(view, out, o.dtype, o.shardBytes),
  };
}
