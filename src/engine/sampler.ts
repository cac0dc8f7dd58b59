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

// e^x for x <= 0 without Math.exp, which costs ~20 ns here: over a 152k vocabulary that was ~3 ms per row and token
// (a softmax to sample, a log-sum-exp for logprobs), on the engine thread between decode steps. x = (m + f) ln2/32
// with m an integer and |f| <= 1/2: e^x = 2^(m >> 5) 2^((m & 31) / 32) e^r, |r| <= ln2/64, e^r to degree 4
// (relative error < 2e-12). Below -103 (e^x < 2e-45, nothing next to the largest term's 1) it is 0, as for -Infinity.
const EXP_K = 32 / Math.LN2;
const EXP_H = Math.LN2 / 32;
const POW2_FRACTION = Float64Array.from({ length: 32 }, (_, j) => 2 ** (j / 32));
// m >> 5 is in [-149, 0] for x >= -103.
const POW2_INTEGER = Float64Array.from({ length: 150 }, (_, j) => 2 ** -j);

/** e^x for x <= 0 (see above); exported for its tests. */
export function expNonPositive(x: number): number {
  if (!(x >= -103)) return 0;
  const m = (x * EXP_K - 0.5) | 0;
  const r = x - m * EXP_H;
  const er = 1 + r * (1 + r * (0.5 + r * (1 / 6 + r * (1 / 24))));
  return er * POW2_FRACTION[m & 31] * POW2_INTEGER[-(m >> 5)];
}

/** The largest logit; -Infinity for none. */
function maxOf(logits: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  return max;
}

/** log sum_i e^(logits_i), from the largest logit (so no term overflows). */
export function logSumExp(logits: Float32Array): number {
  const max = maxOf(logits);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += expNonPositive(logits[i] - max);
  return max + Math.log(sum);
}

// One buffer for the softmax of each sample (1.2 MB at a 152k vocabulary): allocating it per token was churn.
let probsScratch = new Float64Array(0);

export function sample(logits: Float32Array, p: SamplingParams, rng: Rng): number {
  if (p.temperature === 0) return argmax(logits);
  const V = logits.length;
  const inv = 1 / p.temperature;
  const max = maxOf(logits);
  if (probsScratch.length < V) probsScratch = new Float64Array(V);
  const probs = probsScratch.subarray(0, V);
  let sum = 0;
  for (let i = 0; i < V; i++) sum += probs[i] = expNonPositive((logits[i] - max) * inv);
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
    // A token without mass (masked to -Infinity) is never the fallback for a draw that rounding left unspent.
    if (probs[i] < threshold || probs[i] === 0) continue;
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
  const lse = logSumExp(logits);
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
