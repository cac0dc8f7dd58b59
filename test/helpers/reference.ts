/**
 * An independent float64 forward pass for the tests, written straight from the transformers modeling code
 * (modeling_qwen2.py / modeling_llama.py) with plain loops. It shares no code with the engine's graph.
 */
import type { ModelSpec } from '../../src/model/config.ts';

export interface RefTensor {
  shape: number[];
  data: ArrayLike<number>;
}

function invFreq(spec: ModelSpec): number[] {
  const d = spec.headDim;
  const r = spec.rope;
  const out: number[] = [];
  for (let i = 0; i < d; i += 2) {
    const f = 1 / r.theta ** (i / d);
    if (r.type === 'linear') {
      out.push(f / r.factor);
    } else if (r.type === 'llama3') {
      const wavelen = (2 * Math.PI) / f;
      const low = r.originalMaxPositionEmbeddings / r.lowFreqFactor;
      const high = r.originalMaxPositionEmbeddings / r.highFreqFactor;
      if (wavelen < high) out.push(f);
      else if (wavelen > low) out.push(f / r.factor);
      else {
        const s = (r.originalMaxPositionEmbeddings / wavelen - r.lowFreqFactor) / (r.highFreqFactor - r.lowFreqFactor);
        out.push((1 - s) * (f / r.factor) + s * f);
      }
    } else out.push(f);
  }
  return out;
}

/** y = x W^T (+ b), W in HF [out, in] layout. */
function linear(x: number[], w: RefTensor, b?: RefTensor): number[] {
  const [out, inp] = w.shape;
  const y = new Array(out).fill(0);
  for (let o = 0; o < out; o++) {
    let s = b ? b.data[o] : 0;
    for (let i = 0; i < inp; i++) s += x[i] * w.data[o * inp + i];
    y[o] = s;
  }
  return y;
}

function rmsNorm(x: number[], w: RefTensor, eps: number): number[] {
  const ms = x.reduce((a, v) => a + v * v, 0) / x.length;
  const r = 1 / Math.sqrt(ms + eps);
  return x.map((v, i) => v * r * w.data[i]);
}

function rope(x: number[], pos: number, freqs: number[]): number[] {
  const half = freqs.length;
  const out = x.slice();
  for (let i = 0; i < half; i++) {
    const c = Math.cos(pos * freqs[i]);
    const s = Math.sin(pos * freqs[i]);
    out[i] = x[i] * c - x[i + half] * s;
    out[i + half] = x[i + half] * c + x[i] * s;
  }
  return out;
}

/** Logits of every position; `skipLayers` leaves layers out (destruction "Remove"). */
export function referenceLogits(spec: ModelSpec, w: Map<string, RefTensor>, ids: number[], skipLayers: Set<number> = new Set()): number[][] {
  const { hiddenSize: H, numHeads: nh, numKvHeads: nkv, headDim: D } = spec;
  const G = nh / nkv;
  const freqs = invFreq(spec);
  const get = (n: string) => {
    const t = w.get(n);
    if (!t) throw new Error(`reference: missing ${n}`);
    return t;
  };
  const emb = get('model.embed_tokens.weight');
  let hs = ids.map((id) => Array.from({ length: H }, (_, i) => emb.data[id * H + i]));
  for (let l = 0; l < spec.numLayers; l++) {
    if (skipLayers.has(l)) continue;
    const p = `model.layers.${l}`;
    const opt = (n: string) => w.get(n);
    const xs = hs.map((h) => rmsNorm(h, get(`${p}.input_layernorm.weight`), spec.rmsNormEps));
    const qs = xs.map((x, t) => {
      const q = linear(x, get(`${p}.self_attn.q_proj.weight`), opt(`${p}.self_attn.q_proj.bias`));
      return Array.from({ length: nh }, (_, h) => rope(q.slice(h * D, (h + 1) * D), t, freqs));
    });
    const ks = xs.map((x, t) => {
      const k = linear(x, get(`${p}.self_attn.k_proj.weight`), opt(`${p}.self_attn.k_proj.bias`));
      return Array.from({ length: nkv }, (_, h) => rope(k.slice(h * D, (h + 1) * D), t, freqs));
    });
    const vs = xs.map((x) => {
      const v = linear(x, get(`${p}.self_attn.v_proj.weight`), opt(`${p}.self_attn.v_proj.bias`));
      return Array.from({ length: nkv }, (_, h) => v.slice(h * D, (h + 1) * D));
    });
    hs = hs.map((h, t) => {
      const ctx: number[] = [];
      for (let head = 0; head < nh; head++) {
        const kvh = Math.floor(head / G);
        const scores = Array.from({ length: t + 1 }, (_, j) => qs[t][head].reduce((a, q, d) => a + q * ks[j][kvh][d], 0) / Math.sqrt(D));
        const m = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - m));
        const z = e.reduce((a, b) => a + b, 0);
        for (let d = 0; d < D; d++) ctx.push(e.reduce((a, p, j) => a + (p / z) * vs[j][kvh][d], 0));
      }
      const o = linear(ctx, get(`${p}.self_attn.o_proj.weight`), opt(`${p}.self_attn.o_proj.bias`));
      return h.map((v, i) => v + o[i]);
    });
    hs = hs.map((h) => {
      const x = rmsNorm(h, get(`${p}.post_attention_layernorm.weight`), spec.rmsNormEps);
      const g = linear(x, get(`${p}.mlp.gate_proj.weight`), opt(`${p}.mlp.gate_proj.bias`));
      const u = linear(x, get(`${p}.mlp.up_proj.weight`), opt(`${p}.mlp.up_proj.bias`));
      const a = g.map((v, i) => (v / (1 + Math.exp(-v))) * u[i]);
      const f = linear(a, get(`${p}.mlp.down_proj.weight`), opt(`${p}.mlp.down_proj.bias`));
      return h.map((v, i) => v + f[i]);
    });
  }
  const head = spec.tieWordEmbeddings ? emb : get('lm_head.weight');
  return hs.map((h) => linear(rmsNorm(h, get('model.norm.weight'), spec.rmsNormEps), head));
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

export function logSoftmax(row: ArrayLike<number>): number[] {
  const xs = Array.from(row);
  const m = Math.max(...xs);
  const lse = m + Math.log(xs.reduce((a, x) => a + Math.exp(x - m), 0));
  return xs.map((x) => x - lse);
}

/** Prompt-scoring logprobs (echo + logprobs) against the log-softmax of expected logits, token by token. */
export function expectPromptScores(got: (number | null)[], ids: number[], logits: ArrayLike<number>[], tol = 1e-4): void {
  for (let t = 1; t < ids.length; t++) {
    const want = logSoftmax(logits[t - 1])[ids[t]];
    if (!(Math.abs(got[t]! - want) < tol)) throw new Error(`token ${t}: ${got[t]} vs ${want}`);
  }
}
