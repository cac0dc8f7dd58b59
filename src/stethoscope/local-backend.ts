/**
 * An evaluation backend in this process (for `sfn eval`): the engine and its batching scheduler, without a
 * server. Items generated at once share decode steps as they do behind the HTTP API.
 */
import type { Engine } from '../engine/engine.ts';
import type { GeneratedToken } from '../engine/generate.ts';
import type { JobParams } from '../engine/protocol.ts';
import { Scheduler } from '../engine/scheduler.ts';
import type { ModelTokenizer } from '../engine/tokenizer.ts';
import type { View } from '../views/view.ts';
import type { EvalBackend, Generation } from './eval.ts';

export function collect(tokens: GeneratedToken[], finish: string): Generation {
  const content = tokens.filter((t) => t.channel === 'content' && !t.closesReasoning);
  return {
    ids: tokens.map((t) => t.id),
    content: content.map((t) => t.text).join(''),
    reasoning: tokens.filter((t) => t.channel === 'reasoning').map((t) => t.text).join(''),
    contentIds: content.map((t) => t.id),
    finish,
  };
}

export function localBackend(engine: Engine, tok: ModelTokenizer, view: View, concurrency: number): EvalBackend {
  const sched = new Scheduler(engine, tok, { maxBatch: concurrency, maxRunning: concurrency * 2, maxWaiting: 1 << 20, prefillChunk: 512, maxContext: engine.spec.maxPositionEmbeddings });
  let seq = 0;
  const run = (promptIds: number[], params: JobParams, v: View, promptLogprobs?: number) =>
    new Promise<{ tokens: GeneratedToken[]; finish: string; prompt: (number | null)[] }>((resolve, reject) => {
      const tokens: GeneratedToken[] = [];
      let prompt: (number | null)[] = [];
      sched.submit({
        id: `eval-${seq++}`,
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
    generate: async (ids, params) => {
      const r = await run(ids, params, view);
      return collect(r.tokens, r.finish);
    },
    score: async (context, answer) => {
      if (!answer.length) return [];
      const r = await run([...context, ...answer], { maxTokens: 0 }, engine.baseView, 0);
      return r.prompt.slice(context.length).map((x) => x ?? 0);
    },
  };
}
