/**
 * The decoder's forward graph, built from a ModelSpec at load time (no export step, no Python).
 *
 * Qwen2 and Llama share one shape: embeddings -> N x [RMSNorm -> attention (GQA, RoPE) -> residual ->
 * RMSNorm -> SwiGLU MLP -> residual] -> RMSNorm -> head. The embedding lookup is the engine's (a few rows per
 * run, read where the view or the checkpoint has them): the graph starts from their vectors, so no copy of the
 * embedding matrix needs to be a graph input. Every weight node is named with its Hugging Face
 * parameter name. A weight is either a graph *input* (swappable per run, fed by a view) or an *initializer*
 * (frozen, prepacked by onnxruntime); the caller chooses which.
 *
 * KV cache: the engine owns per-layer buffers and feeds them as inputs (wrapped, not copied); the graph
 * attends over [past (masked beyond each row's length) | new rows] without concatenating them, and outputs
 * only the new rows' keys and values, which the engine appends. Keys are stored [batch, kv_heads, capacity,
 * head_dim] and values transposed ([.., head_dim, capacity]): both products then take the cache as the
 * transposed right operand (see matMulT).
 *
 * Inputs (B batch rows, S new tokens per row, C cache capacity, N selected positions):
 *   inputs_embeds [B,S,H] f32, position_ids [B,S] int64,
 *   past_mask [B,1,1,C] f32 (0 = attend, -1e30 = masked), new_mask [B,1,S,S] f32 (causal + padding),
 *   select [N] int64 (flat indices b*S+s of the positions whose logits are wanted),
 *   layer_gate [L] f32 (1 = layer on, 0 = layer removed: its residual contributions are gated off),
 *   past.{l}.key [B,kvH,C,D], past.{l}.value [B,kvH,D,C], and the swappable weights.
 * Outputs: logits [N,V], present.{l}.key [B,kvH,S,D], present.{l}.value [B,kvH,D,S].
 */
import type { ModelSpec } from '../model/config.ts';
import { ropeInvFreq } from '../model/config.ts';
import { expectedParams, formatName, type ModuleKind } from '../model/names.ts';
import { graphShape } from './layout.ts';
import { GraphBuilder, type ExternalTensor } from './onnx.ts';
import type { Int4Weight } from './quantize.ts';

export const MASKED = -1e30;

export interface GraphOptions {
  /** Parameters fed at run time, in graph layout. */
  inputs: ReadonlySet<string>;
  /** Graph-layout data of every other parameter, kept as (external) initializers. */
  frozen: ReadonlyMap<string, Float32Array>;
  /**
   * Frozen linear weights (q/k/v, gate/up/down) as block-wise int4 for com.microsoft MatMulNBits; swappable
   * weights are never quantized (MatMulNBits on a graph input is an order of magnitude slower than fp32).
   */
  quantized?: ReadonlyMap<string, Int4Weight>;
  /**
   * Plugin slots (>= 2) let one run carry rows of several views that differ only in o_proj and the norms:
   * norm weights become per-row inputs [rows, 1, H] (rows 1 broadcasts), and each layer's o_proj is an If:
   * with `mixed` false the product with the view's weight, with it true each slot's rows (slot_positions.k)
   * times that slot's weight, put back in position order (slot_order); `slot{k}.<o_proj name>` is slot k's
   * weight (slot 0 under the plain name).
   */
  slots?: number;
  /**
   * The backbone's head [V,H] (lm_head, or embed_tokens when tied) while the head is an input: kept as an
   * initializer too, which onnxruntime prepacks, and used when the `head_backbone` input is true. The head
   * is the largest single product of a decode step, and as an input it streams ~15% slower.
   */
  backboneHead?: Float32Array;
  /** That copy as int4 instead (--quantize int4): [V, H] quantized along H, for MatMulNBits. */
  backboneHeadInt4?: Int4Weight;
}

/**
 * cos/sin of every position's rotary angles, [max_position_embeddings, width] with width D/2, or D with each half
 * repeated. Each angle is the float32 product position x inv_freq, as transformers computes it, then cos/sin.
 */
export function ropeTables(spec: ModelSpec, width: number): { cos: Float32Array; sin: Float32Array } {
  const half = spec.headDim / 2;
  const invF = Float32Array.from(ropeInvFreq(spec));
  const P = spec.maxPositionEmbeddings;
  const cos = new Float32Array(P * width);
  const sin = new Float32Array(P * width);
  for (let p = 0; p < P; p++) {
    for (let i = 0; i < half; i++) {
      const angle = Math.fround(p * invF[i]);
      for (let k = i; k < width; k += half) {
        cos[p * width + k] = Math.cos(angle);
        sin[p * width + k] = Math.sin(angle);
      }
    }
  }
  return { cos, sin };
}

export const NORM_KINDS: readonly ModuleKind[] = ['input_layernorm', 'post_attention_layernorm', 'norm'];

/** The input that carries slot k's weight for a slotted parameter (slot 0: the parameter's own name). */
export const slotInput = (name: string, k: number): string => (k === 0 ? name : `slot${k}.${name}`);

export interface DecoderGraph {
  bytes: Uint8Array;
  external: ExternalTensor[];
  weightInputs: string[];
  /** The same model with its external tensors in one file instead (GraphBuilder.buildWithDataFile). */
  withDataFile(file: string, align: number): { bytes: Uint8Array; placed: { offset: number; data: Uint8Array }[] };
}

export function buildDecoderGraph(spec: ModelSpec, opts: GraphOptions): DecoderGraph {
  const b = new GraphBuilder();
  const slots = opts.slots ?? 1;
  const { hiddenSize: H, numHeads: nh, numKvHeads: nkv, headDim: D, numLayers: L } = spec;
  const G = nh / nkv;
  const shapes = expectedParams(spec);
  const weightInputs: string[] = [];
  const headCopy = opts.backboneHead !== undefined || opts.backboneHeadInt4 !== undefined;

  // ---- weights: an input when swappable, an initializer when frozen ----
  const declared = new Set<string>();
  const w = (layer: number | null, kind: ModuleKind, param: 'weight' | 'bias' = 'weight'): string => {
    const name = formatName({ layer, kind, param });
    if (declared.has(name)) return name;
    declared.add(name);
    const shape = graphShape(spec, name, shapes.get(name)!);
    if (opts.inputs.has(name)) {
      const perRow = slots > 1 && NORM_KINDS.includes(kind);
      // With a backbone copy of the head, the head input is read only for views that replace it: the others
      // feed a one-row stand-in, so its rows are not fixed.
      const standIn = headCopy && (kind === 'lm_head' || kind === 'embed_tokens');
      b.input(name, 'float32', perRow ? [`${name}.rows`, 1, shape[0]] : standIn ? [`${name}.rows`, shape[1]] : shape);
      weightInputs.push(name);
    } else {
      const data = opts.frozen.get(name);
      if (!data) throw new Error(`no data for frozen weight ${name}`);
      b.externalFloat(name, data, shape);
    }
    return name;
  };

  // ---- inputs ----
  const embeds = b.input('inputs_embeds', 'float32', ['batch', 'seq', H]);
  const pos = b.input('position_ids', 'int64', ['batch', 'seq']);
  const pastMask = b.input('past_mask', 'float32', ['batch', 1, 1, 'capacity']);
  const newMask = b.input('new_mask', 'float32', ['batch', 1, 'seq', 'seq']);
  const select = b.input('select', 'int64', ['selected']);
  const layerGate = b.input('layer_gate', 'float32', [L]);
  const mixed = slots > 1 ? b.input('mixed', 'bool', []) : '';
  // slot_positions.k: the flattened positions (b*S + t) of slot k's rows; slot_order: where each position's
  // column lands when the slots' products are concatenated in slot order (its inverse permutation).
  const slotPositions = Array.from({ length: slots > 1 ? slots : 0 }, (_, k) => b.input(`slot_positions.${k}`, 'int64', [`slot_positions.${k}.n`]));
  const slotOrder = slots > 1 ? b.input('slot_order', 'int64', ['positions']) : '';

  // ---- shared constants ----
  const eps = b.constFloat([spec.rmsNormEps], [], 'rms_eps');
  const two = b.constFloat([2], [], 'two');
  const scale = b.constFloat([1 / Math.sqrt(D)], [], 'attn_scale');

  // ---- embeddings: looked up by the engine ----
  let h = embeds; // [B,S,H]
  const shapeBSH = b.op('Shape', [h], {}, 'shape_bsh');

  // ---- rotary embedding: onnxruntime's RotaryEmbedding over cos/sin tables of every position ----
  // Each angle is the float32 product position x inv_freq, as transformers computes it, then cos/sin.
  const half = D / 2;
  const maxPos = spec.maxPositionEmbeddings;
  const { cos: cosTable, sin: sinTable } = ropeTables(spec, half);
  const cosCache = b.externalFloat('rope.cos_cache', cosTable, [maxPos, half]);
  const sinCache = b.externalFloat('rope.sin_cache', sinTable, [maxPos, half]);
  // x [B,S,heads*D] -> the same with rotate_half applied per head (transformers' non-interleaved RoPE).
  const rope = (x: string, heads: number, name: string): string => b.op('RotaryEmbedding', [x, pos, cosCache, sinCache], { interleaved: 0, num_heads: heads }, name, 'com.microsoft');

  // [C, S]: how the concatenated scores split back into cache and new rows.
  const capacityDim = b.op('Slice', [b.op('Shape', [pastMask]), b.constInt64([3]), b.constInt64([4])]);
  const seqDim = b.op('Slice', [b.op('Shape', [embeds]), b.constInt64([1]), b.constInt64([2])]);
  const scoreSplit = b.op('Concat', [capacityDim, seqDim], { axis: 0 }, 'score_split');

  // The causal/padding mask of the new rows, tiled over the G query heads that share a kv head: [B,1,G*S,S].
  const newMaskG = G === 1 ? newMask : b.op('Tile', [newMask, b.constInt64([1, 1, G, 1])], {}, 'new_mask_tiled');

  // RMSNorm in the op pattern onnxruntime fuses into SimplifiedLayerNormalization. A per-row weight (plugin
  // slots) multiplies after a fused norm with unit scale, which keeps the fusion.
  const ones = slots > 1 ? b.constFloat(new Float32Array(H).fill(1), [H], 'ones_h') : '';
  const rmsNorm = (x: string, weight: string, prefix: string): string => {
    const variance = b.op('ReduceMean', [b.op('Pow', [x, two])], { axes: [-1], keepdims: 1 });
    const normed = b.op('Div', [x, b.op('Sqrt', [b.op('Add', [variance, eps])])]);
    if (slots > 1 && opts.inputs.has(weight)) return b.op('Mul', [b.op('Mul', [normed, ones]), weight], {}, `${prefix}.out`);
    return b.op('Mul', [normed, weight], {}, `${prefix}.out`);
  };

  // x [B,S,K] times a weight held [N, K] (o_proj): (W x^T)^T, so that the weight is the streamed left operand
  // and never repacked, whatever the row count. With plugin slots, an If picks the single-view product or
  // per slot, W_k times the columns of that slot's rows.
  const rowsRight = (x: string, name: string, nodeName: string): string => {
    const [N, K] = graphShape(spec, name, shapes.get(name)!);
    const xT = b.op('Transpose', [b.op('Reshape', [x, b.constInt64([-1, K])])], { perm: [1, 0] }, `${nodeName}.xT`); // [K, B*S]
    let yT: string;
    if (slots > 1) {
      for (let k = 1; k < slots; k++) b.input(slotInput(name, k), 'float32', [N, K]);
      const out = { type: 'float32' as const, dims: [N, 'positions'] };
      yT = b.op(
        'If',
        [mixed],
        {
          then_branch: b.subgraph(`${nodeName}.mixed`, (g) => {
            // Each slot multiplies only its own rows' columns, so the compute stays that of one product.
            const parts = slotPositions.map((idx, k) => g.op('MatMul', [slotInput(name, k), g.op('Gather', [xT, idx], { axis: 1 })]));
            return [{ ...out, name: g.op('Gather', [g.op('Concat', parts, { axis: 1 }), slotOrder], { axis: 1 }) }];
          }),
          else_branch: b.subgraph(`${nodeName}.single`, (g) => [{ ...out, name: g.op('MatMul', [name, xT]) }]),
        },
        `${nodeName}.T`,
      );
    } else yT = b.op('MatMul', [name, xT], {}, `${nodeName}.T`);
    return b.op('Reshape', [b.op('Transpose', [yT], { perm: [1, 0] }), shapeBSH], {}, nodeName);
  };

  const linear = (x: string, layer: number | null, kind: ModuleKind, bias: boolean, prefix: string): string => {
    const name = formatName({ layer, kind, param: 'weight' });
    const q = opts.quantized?.get(name);
    let y: string;
    if (q) y = int4MatMul(x, name, q, `${prefix}.${kind}`);
    else if (kind === 'o_proj') y = rowsRight(x, w(layer, kind), `${prefix}.${kind}`);
    else y = b.op('MatMul', [x, w(layer, kind)], {}, `${prefix}.${kind}`);
    return bias ? b.op('Add', [y, w(layer, kind, 'bias')], {}, `${prefix}.${kind}.bias_add`) : y;
  };

  // accuracy_level 4: activations quantized to int8 inside the kernel (2.7x faster than fp32 here; see notes).
  const int4MatMul = (x: string, name: string, q: Int4Weight, nodeName: string): string => {
    const kBlocks = Math.ceil(q.K / q.blockSize);
    b.externalTensor(`${name}.int4`, 'uint8', q.packed, [q.N, kBlocks, q.blockSize / 2]);
    b.externalFloat(`${name}.scales`, q.scales, [q.N * kBlocks]);
    return b.op('MatMulNBits', [x, `${name}.int4`, `${name}.scales`], { K: q.K, N: q.N, bits: 4, block_size: q.blockSize, accuracy_level: 4 }, nodeName, 'com.microsoft');
  };

  // ---- attention: grouped-query, over [past | new] without concatenation ----
  // x [.., M, K] times y [.., N, K] transposed (onnxruntime's FusedMatMul). The cache is always the right
  // operand, which onnxruntime packs on every call; packing it from the transposed side is faster for decode
  // and no slower for prefill (docs/benchmarks.md#design-measurements).
  const matMulT = (x: string, y: string) => b.op('FusedMatMul', [x, y], { transB: 1 }, undefined, 'com.microsoft');
  const shapeQ = b.constInt64([0, 0, nh, D], 'shape_q');
  const shapeKv = b.constInt64([0, 0, nkv, D], 'shape_kv');
  const shapeGrouped = b.constInt64([0, nkv, -1, D], 'shape_grouped');
  const shapeHeads = b.constInt64([0, nh, -1, D], 'shape_heads');
  const shapeMerged = b.constInt64([0, 0, nh * D], 'shape_merged');

  // q, k and v projections. Frozen fp32 ones are one initializer [H, (nh + 2 nkv) D] and one MatMul, split
  // after: one larger product streams better than three small ones, with fewer nodes.
  const qkv = (x: string, l: number, p: string): string[] => {
    const kinds = ['q_proj', 'k_proj', 'v_proj'] as const;
    const names = kinds.map((kind) => formatName({ layer: l, kind, param: 'weight' }));
    if (names.some((n) => opts.inputs.has(n) || opts.quantized?.has(n))) return kinds.map((kind) => linear(x, l, kind, spec.qkvBias, p));
    const widths = [nh * D, nkv * D, nkv * D];
    const total = widths[0] + widths[1] + widths[2];
    const rowsIn = graphShape(spec, names[0], shapes.get(names[0])!)[0];
    const fused = new Float32Array(rowsIn * total);
    let offset = 0;
    names.forEach((n, i) => {
      const data = opts.frozen.get(n)!;
      for (let r = 0; r < rowsIn; r++) fused.set(data.subarray(r * widths[i], (r + 1) * widths[i]), r * total + offset);
      offset += widths[i];
    });
    let y = b.op('MatMul', [x, b.externalFloat(`${p}.qkv_proj.weight`, fused, [rowsIn, total])], {}, `${p}.qkv_proj`);
    if (spec.qkvBias) {
      const bias = new Float32Array(total);
      kinds.reduce((o, kind, i) => (bias.set(opts.frozen.get(formatName({ layer: l, kind, param: 'bias' }))!, o), o + widths[i]), 0);
      y = b.op('Add', [y, b.constFloat(bias, [total], `${p}.qkv_proj.bias`)], {}, `${p}.qkv_proj.bias_add`);
    }
    return b.opN('Split', [y, b.constInt64(widths)], 3, { axis: -1 }, `${p}.qkv_split`);
  };

  const attention = (x: string, l: number): string => {
    const p = `model.layers.${l}.self_attn`;
    const [qLin, kLin, vLin] = qkv(x, l, p);
    const q = b.op('Reshape', [rope(qLin, nh, `${p}.q.rope`), shapeQ]); // [B,S,nh,D]
    const k = b.op('Reshape', [rope(kLin, nkv, `${p}.k.rope`), shapeKv]); // [B,S,nkv,D]
    const v = b.op('Reshape', [vLin, shapeKv]);
    // Queries [B,nh,S,D] regrouped as [B,nkv,G*S,D]: head h = kv*G + g, as transformers' repeat_kv pairs them.
    const qT = b.op('Mul', [b.op('Transpose', [q], { perm: [0, 2, 1, 3] }), scale]);
    const qg = b.op('Reshape', [qT, shapeGrouped], {}, `${p}.q_grouped`);
    const kNew = b.op('Transpose', [k], { perm: [0, 2, 1, 3] }, `present.${l}.key`); // [B,nkv,S,D]
    const vNew = b.op('Transpose', [v], { perm: [0, 2, 3, 1] }, `present.${l}.value`); // [B,nkv,D,S]
    b.output(kNew, 'float32', ['batch', nkv, 'seq', D]);
    b.output(vNew, 'float32', ['batch', nkv, D, 'seq']);
    const pastK = b.input(`past.${l}.key`, 'float32', ['batch', nkv, 'capacity', D]);
    const pastV = b.input(`past.${l}.value`, 'float32', ['batch', nkv, D, 'capacity']);

    // Scores against the cache and against the new rows, one softmax over both (the scores are small next to
    // the cache, which is never concatenated), then the two halves weight their values.
    const sPast = b.op('Add', [matMulT(qg, pastK), pastMask], {}, `${p}.scores_past`); // [B,nkv,G*S,C]
    const sNew = b.op('Add', [matMulT(qg, kNew), newMaskG], {}, `${p}.scores_new`); // [B,nkv,G*S,S]
    const probs = b.op('Softmax', [b.op('Concat', [sPast, sNew], { axis: -1 })], { axis: -1 }, `${p}.probs`);
    const [pPast, pNew] = b.opN('Split', [probs, scoreSplit], 2, { axis: -1 }, `${p}.probs_split`);
    const ctx = b.op('Add', [matMulT(pPast, pastV), matMulT(pNew, vNew)], {}, `${p}.context`);
    const heads = b.op('Transpose', [b.op('Reshape', [ctx, shapeHeads])], { perm: [0, 2, 1, 3] }); // [B,S,nh,D]
    return linear(b.op('Reshape', [heads, shapeMerged]), l, 'o_proj', spec.oBias, p);
  };

  // ---- SwiGLU MLP ----
  const mlp = (x: string, l: number): string => {
    const p = `model.layers.${l}.mlp`;
    const gate = linear(x, l, 'gate_proj', spec.mlpBias, p);
    const up = linear(x, l, 'up_proj', spec.mlpBias, p);
    const act = b.op('Mul', [b.op('Mul', [gate, b.op('Sigmoid', [gate])]), up], {}, `${p}.act`);
    return linear(act, l, 'down_proj', spec.mlpBias, p);
  };

  // ---- decoder layers ----
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}`;
    const gate = b.op('Gather', [layerGate, b.constInt64([l])], { axis: 0 }, `${p}.gate`); // [1], broadcast
    const a = attention(rmsNorm(h, w(l, 'input_layernorm'), `${p}.input_layernorm`), l);
    h = b.op('Add', [h, b.op('Mul', [a, gate])], {}, `${p}.residual_attn`);
    const f = mlp(rmsNorm(h, w(l, 'post_attention_layernorm'), `${p}.post_attention_layernorm`), l);
    h = b.op('Add', [h, b.op('Mul', [f, gate])], {}, `${p}.residual_mlp`);
  }

  // ---- final norm and head, on the selected positions only ----
  h = rmsNorm(h, w(null, 'norm'), 'model.norm');
  const flat = b.op('Reshape', [h, b.constInt64([-1, H], 'shape_flat')]);
  const picked = b.op('Gather', [flat, select], { axis: 0 }, 'select_positions'); // [N,H]
  // The head is [V,H]: logits = (W picked^T)^T, so that the big matrix is streamed, never repacked.
  const head = w(null, spec.tieWordEmbeddings ? 'embed_tokens' : 'lm_head');
  const inputHead = (g: GraphBuilder, name?: string) => g.op('Transpose', [g.op('MatMul', [head, g.op('Transpose', [picked], { perm: [1, 0] })], {}, 'lm_head')], { perm: [1, 0] }, name); // [N,V]
  if (headCopy && opts.inputs.has(head)) {
    // A prepacked copy of the backbone's head (transB: the same [V,H] data), or an int4 one, for views that keep it.
    const q = opts.backboneHeadInt4;
    let backbone: (g: GraphBuilder) => string;
    if (q) {
      b.externalTensor('lm_head.backbone.int4', 'uint8', q.packed, [q.N, Math.ceil(q.K / q.blockSize), q.blockSize / 2]);
      b.externalFloat('lm_head.backbone.scales', q.scales, [q.scales.length]);
      const attrs = { K: q.K, N: q.N, bits: 4, block_size: q.blockSize, accuracy_level: 4 };
      backbone = (g) => g.op('MatMulNBits', [picked, 'lm_head.backbone.int4', 'lm_head.backbone.scales'], attrs, undefined, 'com.microsoft');
    } else {
      b.externalFloat('lm_head.backbone', opts.backboneHead!, [spec.vocabSize, H]);
      backbone = (g) => g.op('Gemm', [picked, 'lm_head.backbone'], { transB: 1 });
    }
    const out = { type: 'float32' as const, dims: ['selected', spec.vocabSize] };
    b.op(
      'If',
      [b.input('head_backbone', 'bool', [])],
      {
        then_branch: b.subgraph('head.backbone', (g) => [{ ...out, name: backbone(g) }]),
        else_branch: b.subgraph('head.view', (g) => [{ ...out, name: inputHead(g) }]),
      },
      'logits',
    );
  } else inputHead(b, 'logits');
  b.output('logits', 'float32', ['selected', spec.vocabSize]);

  const name = `sfn-${spec.arch}`;
  return { bytes: b.build(name), external: b.external, weightInputs, withDataFile: (file, align) => b.buildWithDataFile(name, file, align) };
}
