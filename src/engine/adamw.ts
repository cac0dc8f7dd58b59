/** The optimizer of the Freeze stethoscope: AdamW as `torch.optim.AdamW` computes it, and its learning-rate schedule. */

export interface AdamWOptions {
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
}

/** torch's single-tensor AdamW in float32: decoupled decay, bias-corrected moments, eps outside the root. */
export class AdamW {
  readonly m = new Map<string, Float32Array>();
  readonly v = new Map<string, Float32Array>();
  step = 0;

  private readonly params: Map<string, Float32Array>;
  private readonly opts: AdamWOptions;
  constructor(params: Map<string, Float32Array>, opts: AdamWOptions) {
    this.params = params;
    this.opts = opts;
    for (const [n, p] of params) {
      this.m.set(n, new Float32Array(p.length));
      this.v.set(n, new Float32Array(p.length));
    }
  }

  update(grads: Map<string, Float32Array>, lr = this.opts.lr): void {
    this.step++;
    const [b1, b2] = this.opts.betas;
    const f = Math.fround;
    const decay = f(1 - lr * this.opts.weightDecay);
    const stepSize = f(lr / (1 - b1 ** this.step));
    const bc2Sqrt = f(Math.sqrt(1 - b2 ** this.step));
    for (const [n, p] of this.params) {
      const g = grads.get(n)!;
      const m = this.m.get(n)!;
      const v = this.v.get(n)!;
      for (let i = 0; i < p.length; i++) {
        p[i] = f(p[i] * decay);
        m[i] = f(m[i] + f(f(1 - b1) * f(g[i] - m[i])));
        v[i] = f(f(v[i] * b2) + f(f(g[i] * g[i]) * f(1 - b2)));
        const denom = f(f(Math.sqrt(v[i]) / bc2Sqrt) + this.opts.eps);
        p[i] = f(p[i] - f(stepSize * f(m[i] / denom)));
      }
    }
  }
}

/** The learning rate at `step` (0-based): linear warmup, then constant or cosine to 0. */
export function lrAt(step: number, s: { lr: number; warmup: number; schedule: 'constant' | 'cosine'; steps: number }): number {
  if (s.warmup > 0 && step < s.warmup) return (s.lr * (step + 1)) / s.warmup;
  if (s.schedule === 'constant') return s.lr;
  const t = (step - s.warmup) / Math.max(1, s.steps - s.warmup);
  return s.lr * 0.5 * (1 + Math.cos(Math.PI * Math.min(1, t)));
}
