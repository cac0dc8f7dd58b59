/**
 * What a stethoscope needs from an engine: generation and scoring on a view, the KL of views' next-token
 * distributions, and a view written as a checkpoint. The server implements it over its engine worker (views as
 * specs, server/engine-client.ts), the CLI over an engine in its own process (views as built views,
 * local-client.ts); every stethoscope (probes, levels, evals, tables, sweeps, export) is written once against it.
 */
import type { GeneratedToken, JobParams } from '../engine/generate.ts';
import type { FloatDtype } from '../model/dtype.ts';

export interface Generation {
  ids: number[];
  content: string;
  reasoning: string;
  /** Content-channel token ids (what the answer is). */
  contentIds: number[];
  finish: string;
}

export interface EngineClient<V> {
  generate(view: V, promptIds: number[], params: JobParams): Promise<Generation>;
  /** Log-probabilities of `continuation` after `context` under `view`. */
  score(view: V, context: number[], continuation: number[]): Promise<number[]>;
  /** Mean KL(base || view) of the next-token distributions over every position of `ids`, for each view. */
  kl(ids: number[], base: V, views: V[]): Promise<number[]>;
  /** Writes `view` as a full HF checkpoint directory. */
  export(view: V, out: string, opts: { dtype: FloatDtype; shardBytes?: number }): Promise<{ tensors: number }>;
}

/** A generation's tokens split into the answer and the thinking (the end-of-thinking delimiter in neither). */
export function collect(tokens: GeneratedToken[], finish: string): Generation {
  const content = tokens.filter((t) => t.channel === 'content' && !t.closesReasoning);
  return {
    ids: tokens.map((t) => t.id),
    content: content.map((t) => t.text).join(''),
    reasoning: tokens
      .filter((t) => t.channel === 'reasoning')
      .map((t) => t.text)
      .join(''),
    contentIds: content.map((t) => t.id),
    finish,
  };
}

/** Maps with at most `limit` calls in flight, in order: bounds what one request puts into the scheduler's queue. */
export async function mapLimit<T, R>(xs: readonly T[], limit: number, fn: (x: T, i: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(xs.length);
  let next = 0;
  const worker = async () => {
    while (next < xs.length) {
      const i = next++;
      out[i] = await fn(xs[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, xs.length)) }, worker));
  return out;
}
