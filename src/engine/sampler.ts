/**
 * Next-token choice from logits: greedy (temperature 0), or sampling with temperature, top-k and top-p from
 * a seeded generator. Also log-probabilities as the OpenAI API reports them (of the model's raw distribution,
 * as vLLM does).
 */
import type { Rng } from '../util/random.ts';

export interface SamplingParams {
  /** 0 = greedy. */
  temperature: number;
  /** Nucleus mass in (0, 1]; 1 = off. */
  topP: number;
  /** Keep the k most likely tokens; 0 = off. */
  topK: number;
}

/** Index of the largest logit; the first one on ties, as torch.argmax. */
export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) (max = logits[i]), (best = i);
  return best;
}

export function sample(logits: Float32Array, p: SamplingParams, rng: Rng): number {
  if (p.temperature === 0) return argmax(logits);
  const V = logits.length;
  const inv = 1 / p.temperature;
  let max = -Infinity;
  for (let i = 0; i < V; i++) if (logits[i] > max) max = logits[i];
  const probs = new Float64Array(V);
  let sum = 0;
  for (let i = 0; i < V; i++) sum += probs[i] = Math.exp((logits[i] - max) * inv);
  for (let i = 0; i < V; i++) probs[i] /= sum;

  // top-k and top-p keep the tokens whose probability reaches a threshold (ties at it included, as
  // transformers' warpers keep them); only the probability values are sorted, never the vocabulary's indices:
  // sorting indices of a near-uniform distribution over 152k tokens is slow (docs/benchmarks.md#design-measurements).
  let threshold = 0;
  if ((p.topK > 0 && p.topK < V) || p.topP < 1) {
    // Values under 1e-7 are left out of the sort when the rest hold enough mass for top-p and top-k, which
    // is exact: every one of them ranks below every value kept.
    let n = 0;
    let mass = 0;
    for (let i = 0; i < V; i++) if (probs[i] > 1e-7) n++, (mass += probs[i]);
    const pruned = mass >= p.topP && (p.topK === 0 || n >= p.topK);
    const values = pruned ? new Float64Array(n) : Float64Array.from(probs);
    if (pruned) for (let i = 0, j = 0; i < V; i++) if (probs[i] > 1e-7) values[j++] = probs[i];
    values.sort().reverse();
    if (p.topK > 0 && p.topK < values.length) threshold = values[p.topK - 1];
    if (p.topP < 1) {
      // top-k renormalises before top-p looks at the mass, as transformers' warpers chain them.
      let kept = 0;
      for (let j = 0; j < values.length && values[j] >= threshold; j++) kept += values[j];
      let cum = 0;
      for (let j = 0; j < values.length && values[j] >= threshold; j++) {
        cum += values[j];
        if (cum >= p.topP * kept) {
          threshold = values[j];
          break;
        }
      }
    }
  }
  let total = 0;
  for (let i = 0; i < V; i++) if (probs[i] >= threshold) total += probs[i];
  let r = rng.next() * total;
  let last = 0;
  for (let i = 0; i < V; i++) {
    if (probs[i] < threshold) continue;
    last = i;
    r -= probs[i];
    if (r < 0) return i;
  }
  return last;
}

export interface TokenLogprob {
  id: number;
  logprob: number;
}

/** log softmax of one token, and optionally the `top` most likely tokens with theirs. */
export function logprobs(logits: Float32Array, id: number, top = 0): { logprob: number; top: TokenLogprob[] } {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  const lse = max + Math.log(sum);
  const best: TokenLogprob[] = [];
  if (top > 0) {
    // A bounded insertion list: top is small (<= 20), the vocabulary is not.
    for (let i = 0; i < logits.length; i++) {
      const v = logits[i];
      if (best.length === top && v <= best[top - 1].logprob) continue;
      let j = best.length < top ? best.length : top - 1;
      if (best.length < top) best.push({ id: i, logprob: v });
      while (j > 0 && best[j - 1].logprob < v) (best[j] = best[j - 1]), j--;
      best[j] = { id: i, logprob: v };
    }
    for (const b of best) b.logprob -= lse;
  }
  return { logprob: logits[id] - lse, top: best };
}

/** The model's logits under a view were not finite: the view's weights overflow. */
export class NonFiniteLogitsError extends Error {
  readonly code = 'non_finite_logits';
  constructor(value: number, where: string) {
    super(`the model produced a non-finite logit (${value}) at ${where}: the view's weights overflow (check the plugin or merge)`);
  }
}

/** A view whose weights overflow gives NaN or +Inf logits: an error, never a token or a score. */
export function checkFinite(logits: Float32Array, where: string): void {
  for (let i = 0; i < logits.length; i++) if (!(logits[i] < Infinity)) throw new NonFiniteLogitsError(logits[i], where);
}
