/**
 * Export as GGUF: any view (plugin, merge, destruction) as one file that llama.cpp, Ollama and node-llama-cpp
 * load, written as llama.cpp's own convert_hf_to_gguf.py writes a Qwen2 or Llama checkpoint: its tensor names,
 * Llama's q/k rows permuted for llama.cpp's RoPE, the tokenizer (byte-level BPE as "gpt2", byte-fallback BPE as
 * SentencePiece "llama"), and Llama 3's RoPE smoothing as a rope_freqs tensor.
 */
import { existsSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { Engine } from '../engine/engine.ts';
import type { View } from '../engine/view.ts';
import { fsyncDir, fsyncFile } from '../model/atomic.ts';
import { type ModelSpec, ropeInvFreq } from '../model/config.ts';
import { FILE_TYPE, fitsType, type GgufTensorInfo, type GgufType, type GgufValue, writeGguf } from '../model/gguf.ts';
import { parseName } from '../model/names.ts';
import { viewParameters } from './export.ts';

const GLOBAL_NAMES: Record<string, string> = { 'model.embed_tokens.weight': 'token_embd.weight', 'model.norm.weight': 'output_norm.weight', 'lm_head.weight': 'output.weight' };
const LAYER_NAMES: Record<string, string> = {
  q_proj: 'attn_q',
  k_proj: 'attn_k',
  v_proj: 'attn_v',
  o_proj: 'attn_output',
  input_layernorm: 'attn_norm',
  post_attention_layernorm: 'ffn_norm',
  gate_proj: 'ffn_gate',
  up_proj: 'ffn_up',
  down_proj: 'ffn_down',
};

/** llama.cpp's name for a Hugging Face parameter. */
export function ggufName(hf: string): string {
  if (GLOBAL_NAMES[hf]) return GLOBAL_NAMES[hf];
  const p = parseName(hf);
  if (!p || p.layer === null) throw new Error(`no GGUF name for ${hf}`);
  return `blk.${p.layer}.${LAYER_NAMES[p.kind]}.${hf.endsWith('.bias') ? 'bias' : 'weight'}`;
}

/**
 * convert_hf_to_gguf's LlamaModel.permute: Hugging Face's Llama rotates the two halves of each head, llama.cpp's
 * Llama rotates adjacent pairs, so each head's rows are interleaved (row h*D + 2i + j <- h*D + j*D/2 + i).
 */
export function permuteForRope(w: Float32Array, rows: number, cols: number, heads: number): Float32Array {
  const D = rows / heads;
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++)
    for (let j = 0; j < 2; j++)
      for (let i = 0; i < D / 2; i++) {
        const src = (h * D + j * (D / 2) + i) * cols;
        out.set(w.subarray(src, src + cols), (h * D + 2 * i + j) * cols);
      }
  return out;
}

/**
 * Llama 3.1's per-frequency RoPE factors as llama.cpp reads them from rope_freqs.weight (it divides each plain
 * frequency by its factor): the plain frequencies over the smoothed ones, both as the graph computes them.
 */
function ropeFreqs(spec: ModelSpec): Float32Array {
  const plain = ropeInvFreq({ ...spec, rope: { ...spec.rope, type: 'default' } });
  const smoothed = ropeInvFreq(spec);
  return plain.map((f, i) => f / smoothed[i]);
}

interface TokenizerJson {
  model: { type: string; vocab: Record<string, number>; merges?: (string | [string, string])[]; byte_fallback?: boolean; unk_token?: string | null };
  added_tokens?: { id: number; content: string; special: boolean }[];
}

/** llama_token_type. */
const TOKEN_TYPE = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 };

/** The tokenizer as GGUF metadata: tokens, types, merges or scores, special ids, chat template. */
function tokenizerMetadata(dir: string, spec: ModelSpec): [string, GgufValue][] {
  const tj = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')) as TokenizerJson;
  const cfgPath = join(dir, 'tokenizer_config.json');
  const cfg = existsSync(cfgPath) ? (JSON.parse(readFileSync(cfgPath, 'utf8')) as Record<string, unknown>) : {};
  if (tj.model.type !== 'BPE') throw new Error(`GGUF export supports BPE tokenizers; this one is ${tj.model.type}`);
  const spm = tj.model.byte_fallback === true;
  const n = spec.vocabSize;
  const tokens: string[] = new Array(n);
  const types = new Int32Array(n);
  for (const [text, id] of Object.entries(tj.model.vocab)) {
    if (id >= n) continue;
    tokens[id] = text;
    types[id] = spm && /^<0x[0-9A-F]{2}>$/.test(text) ? TOKEN_TYPE.byte : TOKEN_TYPE.normal;
  }
  const ids = new Map<string, number>();
  for (const t of tj.added_tokens ?? []) {
    if (t.id >= n) continue;
    tokens[t.id] = t.content;
    types[t.id] = t.content === tj.model.unk_token ? TOKEN_TYPE.unknown : t.special ? TOKEN_TYPE.control : TOKEN_TYPE.userDefined;
    ids.set(t.content, t.id);
  }
  // The embedding may have more rows than the tokenizer has tokens (Qwen pads to a multiple of 128).
  for (let i = 0; i < n; i++) {
    if (tokens[i] === undefined) {
      tokens[i] = `[PAD${i}]`;
      types[i] = TOKEN_TYPE.unused;
    }
  }
  const merges = (tj.model.merges ?? []).map((m) => (Array.isArray(m) ? m.join(' ') : m));
  const meta: [string, GgufValue][] = [
    ['tokenizer.ggml.model', { type: 'string', value: spm ? 'llama' : 'gpt2' }],
    ['tokenizer.ggml.tokens', { type: 'string[]', value: tokens }],
    ['tokenizer.ggml.token_type', { type: 'i32[]', value: types }],
  ];
  if (spm) {
    // SentencePiece merges the pair whose result scores highest: a merge's rank, negated, keeps BPE's order.
    const scores = new Float32Array(n);
    merges.forEach((m, rank) => {
      const id = tj.model.vocab[m.replace(' ', '')];
      if (id !== undefined && id < n && scores[id] === 0) scores[id] = -rank;
    });
    meta.push(['tokenizer.ggml.scores', { type: 'f32[]', value: scores }]);
  } else {
    meta.push(['tokenizer.ggml.pre', { type: 'string', value: 'qwen2' }], ['tokenizer.ggml.merges', { type: 'string[]', value: merges }]);
  }
  const special = (key: string, id: number | null | undefined) => (id === null || id === undefined ? [] : [[`tokenizer.ggml.${key}_token_id`, { type: 'u32', value: id }] as [string, GgufValue]]);
  const named = (v: unknown) => (typeof v === 'string' ? (ids.get(v) ?? tj.model.vocab[v]) : undefined);
  meta.push(
    ...special('bos', spec.bosTokenId ?? named(cfg.bos_token)),
    ...special('eos', named(cfg.eos_token) ?? spec.eosTokenIds[0]),
    ...special('padding', named(cfg.pad_token)),
    ...(spm ? special('unknown', named(tj.model.unk_token)) : []),
    ['tokenizer.ggml.add_bos_token', { type: 'bool', value: cfg.add_bos_token === true || (spm && cfg.add_bos_token !== false) }],
    ['tokenizer.ggml.add_eos_token', { type: 'bool', value: cfg.add_eos_token === true }],
  );
  if (typeof cfg.chat_template === 'string') meta.push(['tokenizer.chat_template', { type: 'string', value: cfg.chat_template }]);
  return meta;
}

function modelMetadata(spec: ModelSpec, name: string, type: GgufType): [string, GgufValue][] {
  const a = spec.arch;
  const u32 = (value: number): GgufValue => ({ type: 'u32', value });
  const meta: [string, GgufValue][] = [
    ['general.architecture', { type: 'string', value: a }],
    ['general.name', { type: 'string', value: name }],
    ['general.file_type', u32(FILE_TYPE[type])],
    [`${a}.context_length`, u32(spec.maxPositionEmbeddings)],
    [`${a}.embedding_length`, u32(spec.hiddenSize)],
    [`${a}.block_count`, u32(spec.numLayers)],
    [`${a}.feed_forward_length`, u32(spec.intermediateSize)],
    [`${a}.attention.head_count`, u32(spec.numHeads)],
    [`${a}.attention.head_count_kv`, u32(spec.numKvHeads)],
    [`${a}.attention.key_length`, u32(spec.headDim)],
    [`${a}.attention.value_length`, u32(spec.headDim)],
    [`${a}.rope.freq_base`, { type: 'f32', value: spec.rope.theta }],
    [`${a}.rope.dimension_count`, u32(spec.headDim)],
    [`${a}.attention.layer_norm_rms_epsilon`, { type: 'f32', value: spec.rmsNormEps }],
    [`${a}.vocab_size`, u32(spec.vocabSize)],
  ];
  if (spec.rope.type === 'linear') meta.push([`${a}.rope.scaling.type`, { type: 'string', value: 'linear' }], [`${a}.rope.scaling.factor`, { type: 'f32', value: spec.rope.factor }]);
  return meta;
}

/**
 * Writes `view` of `engine` as a GGUF file at `out` (through a temporary file and a rename: no partial file).
 * Matrices are stored as `type` where their rows fit its blocks (else f16, as llama.cpp's converter does);
 * norms, biases and rope factors stay f32. `between` runs after each tensor (to let generation interleave).
 */
export async function exportGguf(engine: Engine, view: View, out: string, opts: { type: GgufType; name?: string; between?: () => Promise<void> }): Promise<{ tensors: number }> {
  if (!engine.dir) throw new Error('this engine was not loaded from a directory; nothing to take the tokenizer from');
  const spec = engine.spec;
  const meta = [...modelMetadata(spec, opts.name ?? basename(engine.dir), opts.type), ...tokenizerMetadata(engine.dir, spec)];
  const infos: GgufTensorInfo[] = [];
  for (const [name, shape] of engine.shapes) {
    const ne = [...shape].reverse();
    const matrix = shape.length === 2;
    const type: GgufType = !matrix || opts.type === 'f32' ? 'f32' : fitsType(opts.type, ne[0]) ? opts.type : 'f16';
    infos.push({ name: ggufName(name), ne, type });
  }
  const freqs = spec.rope.type === 'llama3' ? ropeFreqs(spec) : null;
  if (freqs) infos.push({ name: 'rope_freqs.weight', ne: [freqs.length], type: 'f32' });
  const params = viewParameters(engine, view);
  const tmp = join(dirname(out), `.${basename(out)}.tmp-${process.pid}-${Date.now()}`);
  try {
    await writeGguf(tmp, meta, infos, async (i) => {
      if (i === engine.shapes.size) return freqs!;
      const { name, shape, data } = params.next().value!;
      await opts.between?.();
      const kind = parseName(name)!.kind;
      // Biases ([rows]) are permuted as one-column matrices.
      if (spec.arch === 'llama' && (kind === 'q_proj' || kind === 'k_proj')) return permuteForRope(data, shape[0], shape[1] ?? 1, kind === 'q_proj' ? spec.numHeads : spec.numKvHeads);
      return data;
    });
    fsyncFile(tmp);
    renameSync(tmp, out);
    fsyncDir(dirname(out));
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
  return { tensors: infos.length };
}
