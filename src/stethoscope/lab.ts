/**
 * What a stethoscope needs from an engine: greedy or sampled generation on a view, and scoring a continuation
 * on a view. The server implements it over its worker (views as specs), the CLI over an in-process engine and
 * scheduler (views as built views); probes, levels and table jobs are written once against this interface.
 */
import type { GeneratedToken } from '../engine/generate.ts';
import type { JobParams } from '../engine/generate.ts';

export interface Generation {
  ids: number[];
  content: string;
  reasoning: string;
  /** Content-channel token ids (what the answer is). */
  contentIds: number[];
  finish: string;
}

export interface Lab<V> {
  generate(view: V, promptIds: number[], params: JobParams): Promise<Generation>;
  /** Log-probabilities of `continuation` after `context` under `view`. */
  score(view: V, context: number[], continuation: number[]): Promise<number[]>;
}

/** A generation's tokens split into the answer and the thinking (the end-of-thinking delimiter in neither). */
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
