/**
 * The training graph of the Freeze stethoscope: the decoder's forward pass with the activations its backward
 * needs, then a hand-built backward (each block's vector-Jacobian product beside its forward, in standard ONNX
 * ops), producing d loss / d p for the trainable parameters only while still back-propagating through frozen
 * ones. Parameters keep their Hugging Face names and layout; gradients are outputs named `<name>.grad`.
 *
 * Shapes: B rows of S tokens (right-padded), T = B*S, H hidden, nh / nkv heads of D, G = nh / nkv, I the MLP
 * width, V the vocabulary. Activations flow as [T, H] except inside attention ([B, heads, S, D]).
 *
 * Inputs: input_ids [B,S] int64, labels [T] int64 (the next token of each position), loss_weight [T] f32
 * (1 / (number of counted positions) where the position's next-token loss counts, else 0; so the loss is the
 * mean next-token cross-entropy over the counted positions, transformers' `model(ids, labels=...).loss`),
 * attn_mask [B,1,S,S] f32 (0 attend, -1e30 masked: causal and key padding), and the trainable parameters.
 * Frozen parameters are initializers, handed to onnxruntime once (never copied per step).
 * Outputs: loss [] and `<name>.grad` for each trainable parameter.
 *
 * RoPE is rotate-half with positions 0..S-1 (transformers' non-interleaved form): y = x cos + R(x) sin with
 * R(x) = [-x2, x1], whose transpose is R^T(y) = [y2, -y1], so dx = dy cos + R^T(dy sin).
 */
import type { ModelSpec } from '../model/config.ts';
import { expectedParams, formatName, parseName, type ModuleKind } from '../model/names.ts';
import { ropeTables } from './graph.ts';
import { GraphBuilder, type ExternalTensor } from './onnx.ts';

export interface TrainGraphOptions {
  /** Parameters that get gradients: graph inputs, fed per step (HF layout). */
  trainable: ReadonlySet<string>;
  /** HF-layout data of every other parameter, kept as initializers. */
  frozen: ReadonlyMap<string, Float32Array>;
}

export interface TrainGraph {
  bytes: Uint8Array;
  external: ExternalTensor[];
  /** The trainable parameters, in the order their gradients are output. */
  trainable: string[];
}

/** Forward order of a parameter's block: backward computes an input gradient only where an earlier block learns. */
function order(spec: ModelSpec, name: string, kind: ModuleKind, layer: number | null): number {
  if (kind === 'embed_tokens') return 0;
  if (kind === 'norm') return 1 + spec.numLayers * 6;
  if (kind === 'lm_head') return 2 + spec.numLayers * 6;
  const within: Record<string, number> = { input_layernorm: 0, q_proj: 1, k_proj: 1, v_proj: 1, o_proj: 2, post_attention_layernorm: 3, gate_proj: 4, up_proj: 4, down_proj: 5 };
  if (within[kind] === undefined) throw new Error(`no training order for ${name}`);
  return 1 + layer! * 6 + within[kind];
}

export function buildTrainGraph(spec: ModelSpec, opts: TrainGraphOptions): TrainGraph {
  const b = new GraphBuilder();
  const { hiddenSize: H, numHeads: nh, numKvHeads: nkv, headDim: D, numLayers: L, vocabSize: V } = spec;
  const G = nh / nkv;
  const shapes = expectedParams(spec);
  for (const n of opts.trainable) if (!shapes.has(n)) throw new Error(`${n} is not a parameter of this model`);
  const trainable = [...shapes.keys()].filter((n) => opts.trainable.has(n));

  // The earliest block that learns: backward stops below it.
  let earliest = Infinity;
  for (const n of trainable) {
    const p = parseName(n)!;
    earliest = Math.min(earliest, order(spec, n, p.kind, p.layer));
  }
  /** Whether the gradient into the block at forward position `at` is needed by something earlier. */
  const needInput = (at: number) => earliest < at;

  const declared = new Set<string>();
  const w = (layer: number | null, kind: ModuleKind, param: 'weight' | 'bias' = 'weight'): string => {
    const name = formatName({ layer, kind, param });
    if (declared.has(name)) return name;
    declared.add(name);
    const shape = shapes.get(name)!;
    if (opts.trainable.has(name)) b.input(name, 'float32', shape);
    else {
      const data = opts.frozen.get(name);
      if (!data) throw new Error(`no data for frozen weight ${name}`);
      b.externalFloat(name, data, shape);
    }
    return name;
  };
  const grads = new Map<string, string>();
  /** Records a parameter's gradient (summed when a tied matrix gets two). */
  const grad = (name: string, value: string) => {
    const prev = grads.get(name);
    grads.set(name, prev ? b.op('Add', [prev, value]) : value);
  };
  const learns = (name: string) => opts.trainable.has(name);

  // ---- inputs and shared constants ----
  const ids = b.input('input_ids', 'int64', ['batch', 'seq']);
  const labels = b.input('labels', 'int64', ['tokens']);
  const lossWeight = b.input('loss_weight', 'float32', ['tokens']);
  const mask = b.input('attn_mask', 'float32', ['batch', 1, 'seq', 'seq']);
  const eps = b.constFloat([spec.rmsNormEps], [], 'rms_eps');
  const invH = b.constFloat([1 / H], [], 'inv_h');
  const one = b.constFloat([1], [], 'one');
  const minusOne = b.constFloat([-1], [], 'minus_one');
  const scale = b.constFloat([1 / Math.sqrt(D)], [], 'attn_scale');
  const axisLast = b.constInt64([-1], 'axis_last');
  const axis0 = b.constInt64([0], 'axis_0');
  const shapeFlat = (width: number) => b.constInt64([-1, width]);
  const idsShape = b.op('Shape', [ids], {}, 'ids_shape');
  const batchDim = b.op('Slice', [idsShape, b.constInt64([0]), b.constInt64([1])], {}, 'batch_dim');
  const seqDim = b.op('Slice', [idsShape, b.constInt64([1]), b.constInt64([2])], {}, 'seq_dim');
  const heads4 = (heads: number) => b.op('Concat', [batchDim, seqDim, b.constInt64([heads, D])], { axis: 0 });
  const shapeQ = heads4(nh);
  const shapeKv = heads4(nkv);
  const shapeGrouped = b.op('Concat', [batchDim, b.constInt64([nkv, G]), seqDim, b.constInt64([D])], { axis: 0 }, 'shape_grouped'); // [B,nkv,G,S,D]
  const shapeRep = b.op('Concat', [batchDim, b.constInt64([nh]), seqDim, b.constInt64([D])], { axis: 0 }, 'shape_rep'); // [B,nh,S,D]

  // RoPE tables [S, 1, D] (full width: each half repeats), sliced from every position's angles.
  const half = D / 2;
  const P = spec.maxPositionEmbeddings;
  const { cos: cosT, sin: sinT } = ropeTables(spec, D);
  const table = (name: string, data: Float32Array) => b.op('Unsqueeze', [b.op('Slice', [b.externalFloat(name, data, [P, D]), b.constInt64([0]), seqDim, axis0]), b.constInt64([1])], {}, `${name}.seq`); // [S,1,D]
  const cos = table('rope.cos', cosT);
  const sin = table('rope.sin', sinT);
  const halves = (x: string) => b.opN('Split', [x, b.constInt64([half, half])], 2, { axis: -1 });
  const rotate = (x: string) => {
    const [x1, x2] = halves(x);
    return b.op('Concat', [b.op('Mul', [x2, minusOne]), x1], { axis: -1 });
  };
  const rotateT = (y: string) => {
    const [y1, y2] = halves(y);
    return b.op('Concat', [y2, b.op('Mul', [y1, minusOne])], { axis: -1 });
  };
  // x [B,S,heads,D]
  const rope = (x: string, name: string) => b.op('Add', [b.op('Mul', [x, cos]), b.op('Mul', [rotate(x), sin])], {}, name);
  const ropeBack = (dy: string, name: string) => b.op('Add', [b.op('Mul', [dy, cos]), rotateT(b.op('Mul', [dy, sin]))], {}, name);

  // ==================================================================== blocks: forward, then backward

  // ---- RMSNorm: y = g * x * r, r = (mean(x^2) + eps)^-1/2 ----
  interface Norm {
    x: string;
    r: string;
    nx: string;
    g: string;
  }
  const rmsNorm = (x: string, layer: number | null, kind: ModuleKind, prefix: string): { y: string; saved: Norm } => {
    const g = w(layer, kind);
    const r = b.op('Reciprocal', [b.op('Sqrt', [b.op('Add', [b.op('ReduceMean', [b.op('Mul', [x, x])], { axes: [-1], keepdims: 1 }), eps])])], {}, `${prefix}.rstd`);
    const nx = b.op('Mul', [x, r], {}, `${prefix}.normed`);
    return { y: b.op('Mul', [nx, g], {}, `${prefix}.out`), saved: { x, r, nx, g } };
  };
  // dg = sum_t dy * nx; dx = r dn - x (r^3 / H) sum(dn * x), dn = dy * g
  const rmsNormBack = (dy: string, s: Norm, at: number, prefix: string): string | null => {
    if (learns(s.g)) grad(s.g, b.op('ReduceSum', [b.op('Mul', [dy, s.nx]), axis0], { keepdims: 0 }, `${s.g}.grad_part`));
    if (!needInput(at)) return null;
    const dn = b.op('Mul', [dy, s.g]);
    const r3 = b.op('Mul', [b.op('Mul', [s.r, s.r]), b.op('Mul', [s.r, invH])]);
    const dot = b.op('ReduceSum', [b.op('Mul', [dn, s.x]), axisLast], { keepdims: 1 });
    return b.op('Sub', [b.op('Mul', [dn, s.r]), b.op('Mul', [s.x, b.op('Mul', [r3, dot])])], {}, `${prefix}.dx`);
  };

  // ---- linear: y = x W^T (+ b), W [N, K] as Hugging Face holds it ----
  interface Lin {
    x: string;
    w: string;
    bias: string | null;
  }
  const linear = (x: string, layer: number | null, kind: ModuleKind, hasBias: boolean, prefix: string): { y: string; saved: Lin } => {
    const weight = w(layer, kind);
    const y = b.op('Gemm', [x, weight], { transB: 1 }, `${prefix}.${kind}`);
    const bias = hasBias ? w(layer, kind, 'bias') : null;
    return { y: bias ? b.op('Add', [y, bias], {}, `${prefix}.${kind}.bias_add`) : y, saved: { x, w: weight, bias } };
  };
  // dW = dy^T x, db = sum_t dy, dx = dy W
  const linearBack = (dy: string, s: Lin, wantInput: boolean): string | null => {
    if (learns(s.w)) grad(s.w, b.op('Gemm', [dy, s.x], { transA: 1 }, `${s.w}.grad_part`));
    if (s.bias && learns(s.bias)) grad(s.bias, b.op('ReduceSum', [dy, axis0], { keepdims: 0 }));
    return wantInput ? b.op('MatMul', [dy, s.w]) : null;
  };

  // ---- attention: grouped-query, causal, over the batch's own tokens ----
  interface Attn {
    q: Lin;
    k: Lin;
    v: Lin;
    o: Lin;
    Q: string;
    Krep: string;
    Vrep: string;
    probs: string;
  }
  const attention = (x: string, l: number): { y: string; saved: Attn } => {
    const p = `model.layers.${l}.self_attn`;
    const q = linear(x, l, 'q_proj', spec.qkvBias, p);
    const k = linear(x, l, 'k_proj', spec.qkvBias, p);
    const v = linear(x, l, 'v_proj', spec.qkvBias, p);
    const Q = b.op('Transpose', [rope(b.op('Reshape', [q.y, shapeQ]), `${p}.q_rope`)], { perm: [0, 2, 1, 3] }, `${p}.Q`); // [B,nh,S,D]
    const K = b.op('Transpose', [rope(b.op('Reshape', [k.y, shapeKv]), `${p}.k_rope`)], { perm: [0, 2, 1, 3] }); // [B,nkv,S,D]
    const Vh = b.op('Transpose', [b.op('Reshape', [v.y, shapeKv])], { perm: [0, 2, 1, 3] });
    // repeat_kv: head h = kv * G + g
    const rep = (t: string, name: string) => (G === 1 ? t : b.op('Reshape', [b.op('Expand', [b.op('Unsqueeze', [t, b.constInt64([2])]), shapeGrouped]), shapeRep], {}, name));
    const Krep = rep(K, `${p}.K_rep`);
    const Vrep = rep(Vh, `${p}.V_rep`);
    const scores = b.op('Add', [b.op('Mul', [b.op('MatMul', [Q, b.op('Transpose', [Krep], { perm: [0, 1, 3, 2] })]), scale]), mask], {}, `${p}.scores`);
    const probs = b.op('Softmax', [scores], { axis: -1 }, `${p}.probs`);
    const ctx = b.op('Reshape', [b.op('Transpose', [b.op('MatMul', [probs, Vrep])], { perm: [0, 2, 1, 3] }), shapeFlat(nh * D)], {}, `${p}.context`);
    const o = linear(ctx, l, 'o_proj', spec.oBias, p);
    return { y: o.y, saved: { q: q.saved, k: k.saved, v: v.saved, o: o.saved, Q, Krep, Vrep, probs } };
  };
  const attentionBack = (dy: string, s: Attn, l: number): string | null => {
    const p = `model.layers.${l}.self_attn`;
    const at = 1 + l * 6;
    const dctx = linearBack(dy, s.o, needInput(at + 2));
    if (!dctx) return null;
    const dC = b.op('Transpose', [b.op('Reshape', [dctx, shapeQ])], { perm: [0, 2, 1, 3] }); // [B,nh,S,D]
    const dP = b.op('MatMul', [dC, b.op('Transpose', [s.Vrep], { perm: [0, 1, 3, 2] })]);
    const dVrep = b.op('MatMul', [b.op('Transpose', [s.probs], { perm: [0, 1, 3, 2] }), dC]);
    // softmax: dS = P (dP - sum(dP P))
    const dS = b.op('Mul', [s.probs, b.op('Sub', [dP, b.op('ReduceSum', [b.op('Mul', [dP, s.probs]), axisLast], { keepdims: 1 })])], {}, `${p}.dscores`);
    const dQ = b.op('Mul', [b.op('MatMul', [dS, s.Krep]), scale]);
    const dKrep = b.op('Mul', [b.op('MatMul', [b.op('Transpose', [dS], { perm: [0, 1, 3, 2] }), s.Q]), scale]);
    // repeat_kv's transpose: the G query heads of a kv head add up
    const unrep = (t: string) => (G === 1 ? t : b.op('ReduceSum', [b.op('Reshape', [t, shapeGrouped]), b.constInt64([2])], { keepdims: 0 }));
    const flat = (t: string, heads: number) => b.op('Reshape', [t, shapeFlat(heads * D)]);
    const dq = flat(ropeBack(b.op('Transpose', [dQ], { perm: [0, 2, 1, 3] }), `${p}.dq_rope`), nh);
    const dk = flat(ropeBack(b.op('Transpose', [unrep(dKrep)], { perm: [0, 2, 1, 3] }), `${p}.dk_rope`), nkv);
    const dv = flat(b.op('Transpose', [unrep(dVrep)], { perm: [0, 2, 1, 3] }), nkv);
    const want = needInput(at + 1);
    const parts = [linearBack(dq, s.q, want), linearBack(dk, s.k, want), linearBack(dv, s.v, want)];
    return want ? b.op('Add', [b.op('Add', [parts[0]!, parts[1]!]), parts[2]!], {}, `${p}.dx`) : null;
  };

  // ---- SwiGLU MLP: down(silu(gate x) * up x) ----
  interface Mlp {
    gate: Lin;
    up: Lin;
    down: Lin;
    g: string;
    sg: string;
    u: string;
  }
  const mlp = (x: string, l: number): { y: string; saved: Mlp } => {
    const p = `model.layers.${l}.mlp`;
    const gate = linear(x, l, 'gate_proj', spec.mlpBias, p);
    const up = linear(x, l, 'up_proj', spec.mlpBias, p);
    const sg = b.op('Sigmoid', [gate.y], {}, `${p}.gate_sigmoid`);
    const act = b.op('Mul', [b.op('Mul', [gate.y, sg]), up.y], {}, `${p}.act`);
    const down = linear(act, l, 'down_proj', spec.mlpBias, p);
    return { y: down.y, saved: { gate: gate.saved, up: up.saved, down: down.saved, g: gate.y, sg, u: up.y } };
  };
  // d up = dact silu(g); d gate = dact up s (1 + g (1 - s))
  const mlpBack = (dy: string, s: Mlp, l: number): string | null => {
    const at = 1 + l * 6;
    const dact = linearBack(dy, s.down, needInput(at + 5));
    if (!dact) return null;
    const du = b.op('Mul', [dact, b.op('Mul', [s.g, s.sg])]);
    const dsilu = b.op('Mul', [s.sg, b.op('Add', [one, b.op('Mul', [s.g, b.op('Sub', [one, s.sg])])])]);
    const dg = b.op('Mul', [b.op('Mul', [dact, s.u]), dsilu]);
    const want = needInput(at + 4);
    const a = linearBack(dg, s.gate, want);
    const c = linearBack(du, s.up, want);
    return want ? b.op('Add', [a!, c!], {}, `model.layers.${l}.mlp.dx`) : null;
  };

  // ==================================================================== forward
  const embed = w(null, 'embed_tokens');
  const idsFlat = b.op('Reshape', [ids, b.constInt64([-1])], {}, 'ids_flat');
  let h = b.op('Gather', [embed, idsFlat], { axis: 0 }, 'embed_tokens.out'); // [T,H]
  const layers: { n1: Norm; attn: Attn; n2: Norm; mlp: Mlp }[] = [];
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}`;
    const n1 = rmsNorm(h, l, 'input_layernorm', `${p}.input_layernorm`);
    const a = attention(n1.y, l);
    h = b.op('Add', [h, a.y], {}, `${p}.residual_attn`);
    const n2 = rmsNorm(h, l, 'post_attention_layernorm', `${p}.post_attention_layernorm`);
    const f = mlp(n2.y, l);
    h = b.op('Add', [h, f.y], {}, `${p}.residual_mlp`);
    layers.push({ n1: n1.saved, attn: a.saved, n2: n2.saved, mlp: f.saved });
  }
  const nf = rmsNorm(h, null, 'norm', 'model.norm');
  const head = linear(nf.y, null, spec.tieWordEmbeddings ? 'embed_tokens' : 'lm_head', false, 'lm');
  const logits = head.y; // [T,V]

  // ---- loss: mean next-token cross-entropy over the counted positions ----
  const lse = b.op('ReduceLogSumExp', [logits], { axes: [-1], keepdims: 1 }, 'logsumexp');
  const labels2 = b.op('Unsqueeze', [labels, b.constInt64([1])]);
  const picked = b.op('GatherElements', [logits, labels2], { axis: 1 }, 'label_logit');
  const perToken = b.op('Reshape', [b.op('Sub', [lse, picked]), b.constInt64([-1])], {}, 'token_loss');
  b.op('ReduceSum', [b.op('Mul', [perToken, lossWeight]), axis0], { keepdims: 0 }, 'loss_sum');
  b.op('Reshape', ['loss_sum', b.constInt64([])], {}, 'loss');
  b.output('loss', 'float32', []);

  // ==================================================================== backward
  // d loss / d logits = (softmax - onehot(label)) * weight
  const onehot = b.op('OneHot', [labels, b.constInt64([V]), b.constFloat([0, 1], [2])], { axis: -1 }, 'label_onehot');
  const dlogits = b.op('Mul', [b.op('Sub', [b.op('Softmax', [logits], { axis: -1 }), onehot]), b.op('Unsqueeze', [lossWeight, b.constInt64([1])])], {}, 'dlogits');
  const headAt = 2 + L * 6;
  let dh = linearBack(dlogits, head.saved, needInput(headAt));
  if (dh) dh = rmsNormBack(dh, nf.saved, 1 + L * 6, 'model.norm');
  for (let l = L - 1; l >= 0 && dh; l--) {
    const s = layers[l];
    const at = 1 + l * 6;
    // Residuals pass the gradient through; each branch adds its own where something earlier learns.
    const dMlp = mlpBack(dh, s.mlp, l);
    if (dMlp) {
      const dn2 = rmsNormBack(dMlp, s.n2, at + 3, `model.layers.${l}.post_attention_layernorm`);
      if (dn2) dh = b.op('Add', [dh, dn2]);
    }
    if (!needInput(at + 3)) break;
    const dAttn = attentionBack(dh, s.attn, l);
    if (dAttn) {
      const dn1 = rmsNormBack(dAttn, s.n1, at, `model.layers.${l}.input_layernorm`);
      if (dn1) dh = b.op('Add', [dh, dn1]);
    }
    if (!needInput(at)) break;
  }
  if (learns(embed) && dh) {
    // The embedding's rows add up the gradients of every position that looked them up.
    const zeros = b.op('ConstantOfShape', [b.constInt64([V, H])], { value: { tensor: { dataType: 1, dims: [1], floatData: [0] } } });
    grad(embed, b.op('ScatterND', [zeros, b.op('Unsqueeze', [idsFlat, b.constInt64([1])]), dh], { reduction: 'add' }, 'embed_tokens.grad_scatter'));
  }

  for (const n of trainable) {
    const g = grads.get(n);
    if (!g) throw new Error(`internal: no gradient for ${n}`);
    b.op('Identity', [g], {}, `${n}.grad`);
    b.output(`${n}.grad`, 'float32', shapes.get(n)!);
  }
  return { bytes: b.build(`sfn-${spec.arch}-train`), external: b.external, trainable };
}
