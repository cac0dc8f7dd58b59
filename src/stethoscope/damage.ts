/**
 * Damage scores for destruction sweeps: how far a destroyed view's next-token distributions move from the
 * intact model's, as the mean over positions of KL(intact || destroyed), in nats.
 */

function logSoftmax(logits: Float32Array): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  const lse = max + Math.log(sum);
  const out = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i] - lse;
  return out;
}

/** KL(p || q) for two logit vectors. */
export function kl(p: Float32Array, q: Float32Array): number {
  const lp = logSoftmax(p);
  const lq = logSoftmax(q);
  let s = 0;
  for (let i = 0; i < lp.length; i++) {
    const pi = Math.exp(lp[i]);
    if (pi > 0) s += pi * (lp[i] - lq[i]);
  }
  return Math.max(0, s);
}

export function meanKl(base: Float32Array[], other: Float32Array[]): number {
  if (base.length !== other.length || base.length === 0) throw new Error('KL needs the same, non-empty positions');
  return base.reduce((a, p, i) => a + kl(p, other[i]), 0) / base.length;
}
