/**
 * The engine: a loaded backbone, its onnxruntime sessions, and `forward` over a view and a KV cache.
 *
 * Two sessions, both over the same graph-layout weights held once in JS memory:
 * - serving: the pluggable kinds (o_proj, norms, embed_tokens, lm_head) are graph inputs, everything else
 *   is a prepacked initializer. Plugins and o_proj merges run here at full speed.
 * - research: every weight is an input, so any module can be overridden (merges of q/k/v or the MLP,
 *   destruction of any kind). Built on first need and kept.
 */
import { availableParallelism } from 'node:os';
import * as ort from 'onnxruntime-node';
import { Fingerprinter, iterateCheckpointRaw } from '../model/checkpoint.ts';
import { toFloat32, toFloat32Transposed } from '../model/dtype.ts';
import { readSpec, type ModelSpec } from '../model/config.ts';
import { expectedParams, parseName, PLUGGABLE_KINDS } from '../model/names.ts';
import { View, type ResolvedView, type Tensor } from './view.ts';
import { buildDecoderGraph, MASKED, NORM_KINDS, slotInput } from './graph.ts';
import { graphShape, isTransposed, toGraphLayout, toHfLayout, PLUGIN_SLOTS } from './layout.ts';
import { KvCache } from './kv-cache.ts';
import { quantizeInt4, type Int4Weight } from './quantize.ts';

export interface EngineOptions {
  /** onnxruntime intra-op threads; defaults to the machine's cores. */
  threads?: number;
  /** Make every weight an input in the serving session too (slower; for tests of the research path). */
  allInputs?: boolean;
  /**
   * Let onnxruntime's intra-op threads spin-wait between the ops of a run (on by default; they stop spinning
   * when the run ends either way). false: they sleep between ops.
   */
  spin?: boolean;
  /** Write onnxruntime's per-op profile (chrome trace JSON) with this file prefix. */
  profilePrefix?: string;
  /**
   * 'cuda' asks for onnxruntime's CUDA execution provider (its files come from `ONNXRUNTIME_NODE_INSTALL=cuda12`
   * at install time); where it cannot start (no files, no GPU) the engine warns and runs on the CPU.
   */
  device?: Device;
  /** Where warnings go (console.warn by default). */
  warn?: (message: string) => void;
  /**
   * 'int4': the serving session's frozen linear weights (q/k/v, gate/up/down) become block-wise int4
   * MatMulNBits initializers. Swappable weights stay fp32 inputs, and the research session stays fp32.
   */
  quantize?: Quantize;
}

export type Quantize = 'none' | 'int4';

/** The frozen kinds that --quantize int4 quantizes (everything a view cannot swap on the serving session). */
const QUANTIZED_KINDS = new Set(['q_proj', 'k_proj', 'v_proj', 'gate_proj', 'up_proj', 'down_proj']);

export type Device = 'cpu' | 'cuda';

export type SessionKind = 'serving' | 'research';

interface DecoderSession {
  kind: SessionKind;
  session: ort.InferenceSession;
  inputs: ReadonlySet<string>;
  /** Plugin slots of the graph (1: none). */
  slots: number;
  /** Whether the graph holds a prepacked copy of the backbone's head (and takes `head_backbone`). */
  headCopy: boolean;
}



export class ViewError extends Error {
  override name = 'ViewError';
}

export interface ForwardOptions {
  view?: View;
  /** 'last' (default): logits of each row's last new token; 'all': of every new token. */
  logits?: 'last' | 'all';
  /** The cache row that rows[0] goes to; rows cover [firstRow, firstRow + rows.length). */
  firstRow?: number;
  /**
   * One view per row instead of `view`: rows of up to PLUGIN_SLOTS views that `sharesRuns` accepts run
   * together on the serving session, each with its own o_proj and norms.
   */
  rowViews?: View[];
}

export class Engine {
  private serving!: DecoderSession;
  private research: Promise<DecoderSession> | null = null;
  /** Graph-layout tensors of overlays, keyed by the HF-layout array they came from. */
  private readonly layoutCache = new WeakMap<Float32Array, Float32Array>();
  private readonly tensorCache = new WeakMap<Float32Array, ort.Tensor>();
  private readonly normNames: ReadonlySet<string>;
  private readonly oProjNames: ReadonlySet<string>;
  /** The parameter the head multiplies by (embed_tokens when tied). */
  private readonly headName: string;
  private readonly rowNormBuffers = new Map<string, Float32Array>();
  private readonly falseTensor = new ort.Tensor('bool', Uint8Array.from([0]), []);
  private readonly trueTensor = new ort.Tensor('bool', Uint8Array.from([1]), []);
  private readonly noPositions = new ort.Tensor('int64', new BigInt64Array(0), [0]);
  readonly shapes: Map<string, number[]>;
  readonly baseView: View;
  /** The device sessions actually run on ('cpu' after a CUDA fallback). */
  device: Device;

  private constructor(
    readonly spec: ModelSpec,
    /** Every parameter in graph layout. */
    private readonly weights: Map<string, Float32Array>,
    /** sha256 over the config and every weight's values. */
    readonly fingerprint: string,
    private readonly options: EngineOptions,
    readonly dir: string | null,
  ) {
    this.shapes = expectedParams(spec);
    this.baseView = new View(fingerprint);
    const names = [...this.shapes.keys()];
    this.normNames = new Set(names.filter((n) => NORM_KINDS.includes(parseName(n)!.kind)));
    this.oProjNames = new Set(names.filter((n) => parseName(n)!.kind === 'o_proj' && parseName(n)!.param === 'weight'));
    this.device = options.device ?? 'cpu';
    this.headName = spec.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
  }

  /** Loads a Hugging Face model directory. */
  static async load(dir: string, options: EngineOptions = {}): Promise<Engine> {
    const { spec, raw } = readSpec(dir);
    const fp = new Fingerprinter(raw);
    const weights = new Map<string, Float32Array>();
    for (const t of iterateCheckpointRaw(dir, spec)) {
      fp.addRaw(t.name, t.dtype, t.bytes);
      // Decoded (and transposed where the graph wants it) straight into the final array.
      const data = isTransposed(spec, t.name)
        ? toFloat32Transposed(t.bytes, t.dtype, t.shape[0], t.shape[1])
        : t.dtype === 'F32'
          ? new Float32Array(t.bytes.slice().buffer)
          : toFloat32(t.bytes, t.dtype);
      weights.set(t.name, data);
    }
    return Engine.create(spec, weights, fp.digest(), options, dir);
  }

  /** An engine over tensors already in memory (HF layout), e.g. a materialised view. */
  static async fromTensors(spec: ModelSpec, tensors: ReadonlyMap<string, Tensor>, options: EngineOptions = {}): Promise<Engine> {
    const fp = new Fingerprinter(spec);
    const weights = new Map<string, Float32Array>();
    for (const [name, shape] of expectedParams(spec)) {
      const t = tensors.get(name);
      if (!t) throw new ViewError(`missing tensor ${name}`);
      if (t.shape.join() !== shape.join()) throw new ViewError(`${name}: shape [${t.shape}], expected [${shape}]`);
      fp.add(name, t.data);
      weights.set(name, toGraphLayout(spec, name, t.data, shape));
    }
    return Engine.create(spec, weights, fp.digest(), options, null);
  }

  private static async create(spec: ModelSpec, weights: Map<string, Float32Array>, fp: string, options: EngineOptions, dir: string | null) {
    const e = new Engine(spec, weights, fp, options, dir);
    e.serving = await e.buildSession(options.allInputs ? 'research' : 'serving');
    return e;
  }

  /** Names that the serving session takes as inputs. */
  get swappable(): ReadonlySet<string> {
    return this.serving.inputs;
  }

  /** The same tensor in graph layout (held once: the HF-layout copy can be dropped). */
  toGraph(name: string, t: Tensor): Tensor {
    if (t.layout === 'graph') return t;
    return { shape: t.shape, data: toGraphLayout(this.spec, name, t.data, t.shape), layout: 'graph' };
  }

  /**
   * Every parameter of a view in HF layout, for export as a plain checkpoint. A layer gate g (Remove: 0)
   * scales that layer's o_proj and down_proj (weights and biases): their outputs are the layer's residual
   * contributions, so the exported model computes exactly what the gated view does.
   */
  *viewParameters(view: View): Generator<{ name: string; shape: number[]; data: Float32Array }> {
    const { tensors, gates } = view.resolve();
    this.sessionCheck(tensors);
    for (const [name, shape] of this.shapes) {
      const t = tensors.get(name);
      let data = t ? (t.layout === 'graph' ? toHfLayout(this.spec, name, t.data, shape) : t.data) : toHfLayout(this.spec, name, this.weights.get(name)!, shape);
      const p = parseName(name)!;
      const g = p.layer === null ? undefined : gates.get(p.layer);
      if (g !== undefined && (p.kind === 'o_proj' || p.kind === 'down_proj')) data = data.map((x) => x * g);
      yield { name, shape, data };
    }
  }

  /** A backbone parameter in graph layout (shared, not a copy: do not write to it). */
  graphWeight(name: string): Float32Array {
    const data = this.weights.get(name);
    if (!data) throw new ViewError(`unknown parameter ${name}`);
    return data;
  }

  /** A backbone parameter in HF layout (a copy when the graph layout differs). */
  parameter(name: string): Tensor {
    const shape = this.shapes.get(name);
    const data = this.weights.get(name);
    if (!shape || !data) throw new ViewError(`unknown parameter ${name}`);
    return { shape, data: toHfLayout(this.spec, name, data, shape) };
  }

  newCache(batch = 1): KvCache {
    return new KvCache(this.spec, batch);
  }

  private async buildSession(kind: SessionKind): Promise<DecoderSession> {
    const inputs = new Set<string>();
    for (const name of this.shapes.keys()) {
      const p = parseName(name)!;
      if (kind === 'research' || PLUGGABLE_KINDS.includes(p.kind)) inputs.add(name);
    }
    const frozen = new Map([...this.weights].filter(([n]) => !inputs.has(n)));
    let quantized: Map<string, Int4Weight> | undefined;
    if (kind === 'serving' && this.options.quantize === 'int4') {
      quantized = new Map();
      for (const [name, data] of frozen) {
        const p = parseName(name)!;
        if (p.param !== 'weight' || !QUANTIZED_KINDS.has(p.kind)) continue;
        const [K, N] = graphShape(this.spec, name, this.shapes.get(name)!);
        quantized.set(name, quantizeInt4(data, K, N));
      }
    }
    const slots = kind === 'serving' ? PLUGIN_SLOTS : 1;
    const backboneHead = kind === 'serving' ? this.weights.get(this.headName) : undefined;
    const graph = buildDecoderGraph(this.spec, { inputs, frozen, quantized, slots, backboneHead });
    const options: ort.InferenceSession.SessionOptions = {
      externalData: graph.external,
      graphOptimizationLevel: 'all',
      intraOpNumThreads: this.options.threads ?? availableParallelism(),
      executionMode: 'sequential',
      // Threads that sleep between ops pay a wake-up per parallel op (hundreds per decode step: 4-6% of a
      // step, measured on one set of weights); spinning without force_spinning_stop went on after each run,
      // taking a core from the rest of the process (26 ms of CPU per idle 50 ms).
      // MatmulTransposeFusion would turn the head's (W x^T)^T into a transB product: 18.4 vs 16.3 ms at one row.
      extra: { session: { intra_op: { allow_spinning: this.options.spin === false ? '0' : '1' }, force_spinning_stop: '1' }, optimization: { disable_specified_optimizers: 'MatmulTransposeFusion' } },
      ...(this.options.profilePrefix ? { enableProfiling: true, profileFilePrefix: `${this.options.profilePrefix}-${kind}` } : {}),
    };
    let session: ort.InferenceSession;
    if (this.device === 'cuda') {
      try {
        // CPU stays listed: nodes the CUDA provider lacks kernels for run there.
        session = await ort.InferenceSession.create(graph.bytes, { ...options, executionProviders: ['cuda', 'cpu'] });
      } catch (err) {
        this.device = 'cpu';
        (this.options.warn ?? console.warn)(`sfn: warning: the CUDA execution provider could not start (${(err as Error).message.split('\n')[0]}); running on the CPU`);
        session = await ort.InferenceSession.create(graph.bytes, options);
      }
    } else {
      session = await ort.InferenceSession.create(graph.bytes, options);
    }
    return { kind, session, inputs, slots, headCopy: backboneHead !== undefined };
  }

  private researchSession(): Promise<DecoderSession> {
    this.research ??= this.buildSession('research');
    return this.research;
  }

  /** Checks a view's tensors against the backbone and picks the session that can run it. */
  async sessionFor(view: View): Promise<DecoderSession> {
    return this.sessionForTensors(view.resolve().tensors);
  }

  private sessionForTensors(tensors: ReadonlyMap<string, Tensor>): Promise<DecoderSession> {
    this.sessionCheck(tensors);
    const needsResearch = [...tensors.keys()].some((name) => !this.serving.inputs.has(name));
    return needsResearch ? this.researchSession() : Promise.resolve(this.serving);
  }

  private sessionCheck(tensors: ReadonlyMap<string, Tensor>): void {
    for (const [name, t] of tensors) {
      const shape = this.shapes.get(name);
      if (!shape) throw new ViewError(`overlay names "${name}", which the backbone does not have`);
      if (t.shape.join() !== shape.join()) throw new ViewError(`overlay tensor "${name}" has shape [${t.shape}], the backbone's is [${shape}]`);
    }
  }

  private feedTensor(data: Float32Array, dims: number[]): ort.Tensor {
    let t = this.tensorCache.get(data);
    // A shared buffer (the Zero overlay's) may serve tensors of other shapes with the same size.
    if (!t || t.dims.join() !== dims.join()) {
      t = new ort.Tensor('float32', data, dims);
      this.tensorCache.set(data, t);
    }
    return t;
  }

  /** A parameter as a resolved view has it, in graph layout: its overlay's tensor, else the backbone's. */
  private viewWeight(name: string, view: ResolvedView): Float32Array {
    const over = view.tensors.get(name);
    return over ? this.graphData(name, over) : this.weights.get(name)!;
  }

  private graphData(name: string, t: Tensor): Float32Array {
    if (t.layout === 'graph') return t.data;
    let g = this.layoutCache.get(t.data);
    if (!g) {
      g = toGraphLayout(this.spec, name, t.data, t.shape);
      this.layoutCache.set(t.data, g);
    }
    return g;
  }

  /**
   * Runs new tokens through the model: rows[b] are appended to batch row b of the cache (an empty row takes
   * no part). Returns, per row, the logits of its last new token (or of every new token).
   */
  async forward(cache: KvCache, rows: number[][], opts: ForwardOptions = {}): Promise<Float32Array[][]> {
    const { spec } = this;
    const B = rows.length;
    const first = opts.firstRow ?? 0;
    if (first < 0 || first + B > cache.batch) throw new RangeError(`rows ${first}..${first + B - 1} outside a cache of batch ${cache.batch}`);
    const counts = rows.map((r) => r.length);
    const S = Math.max(...counts);
    if (S === 0) return rows.map(() => []);
    for (const r of rows) for (const id of r) {
      if (!Number.isInteger(id) || id < 0 || id >= spec.vocabSize) throw new RangeError(`token id ${id} is outside the vocabulary (0..${spec.vocabSize - 1})`);
    }
    const rowViews = opts.rowViews;
    if (rowViews && rowViews.length !== B) throw new RangeError(`${rowViews.length} row views for ${B} rows`);
    const view = opts.view ?? rowViews?.[0] ?? this.baseView;
    // Resolved once per run: this is the decode hot path.
    const resolved = view.resolve();
    const mix = rowViews ? this.mixFor(rowViews) : null;
    const session = mix ? this.serving : await this.sessionForTensors(resolved.tensors);
    cache.reserve(S);
    const C = cache.capacity;

    // Token ids, positions and masks; padded rows attend only to themselves so that no softmax is empty.
    const ids = new BigInt64Array(B * S);
    const pos = new BigInt64Array(B * S);
    const newMask = new Float32Array(B * S * S).fill(MASKED);
    const select: number[] = [];
    for (let b = 0; b < B; b++) {
      const n = counts[b];
      const start = cache.lengths[first + b];
      // RoPE reads its cos/sin tables at these positions: the model's own limit is a hard one.
      if (start + n > spec.maxPositionEmbeddings) throw new RangeError(`row ${first + b} would reach position ${start + n - 1}; the model has ${spec.maxPositionEmbeddings} positions`);
      for (let i = 0; i < S; i++) {
        ids[b * S + i] = BigInt(i < n ? rows[b][i] : 0);
        // Padding repeats the row's last position (its outputs are discarded) so it stays inside the tables.
        pos[b * S + i] = BigInt(Math.min(spec.maxPositionEmbeddings - 1, start + Math.max(0, Math.min(i, n - 1))));
        const rowBase = (b * S + i) * S;
        if (i < n) newMask.fill(0, rowBase, rowBase + i + 1);
        else newMask[rowBase + i] = 0;
      }
      if (n > 0) {
        if (opts.logits === 'all') for (let i = 0; i < n; i++) select.push(b * S + i);
        else select.push(b * S + n - 1);
      }
    }
    const gates = new Float32Array(spec.numLayers).fill(1);
    for (const [l, g] of resolved.gates) {
      if (l < 0 || l >= spec.numLayers) throw new ViewError(`gate for layer ${l}, which the model does not have`);
      gates[l] = g;
    }

    const { numKvHeads: kvH, headDim: D } = spec;
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', ids, [B, S]),
      position_ids: new ort.Tensor('int64', pos, [B, S]),
      past_mask: new ort.Tensor('float32', cache.pastMask(first, B), [B, 1, 1, C]),
      new_mask: new ort.Tensor('float32', newMask, [B, 1, S, S]),
      select: new ort.Tensor('int64', BigInt64Array.from(select, BigInt), [select.length]),
      layer_gate: new ort.Tensor('float32', gates, [spec.numLayers]),
    };
    for (let l = 0; l < spec.numLayers; l++) {
      const r = cache.rows(l, first, B);
      feeds[`past.${l}.key`] = new ort.Tensor('float32', r.keys, [B, kvH, C, D]);
      feeds[`past.${l}.value`] = new ort.Tensor('float32', r.values, [B, kvH, D, C]);
    }
    if (mix) this.mixedFeeds(feeds, session, mix, B, S);
    else {
      for (const name of session.inputs) {
        const data = this.viewWeight(name, resolved);
        const shape = graphShape(spec, name, this.shapes.get(name)!);
        // Slotted graphs take norms per row; one row's weight broadcasts over all rows.
        feeds[name] = this.feedTensor(data, session.slots > 1 && this.normNames.has(name) ? [1, 1, shape[0]] : shape);
        if (session.slots > 1 && this.oProjNames.has(name)) for (let k = 1; k < session.slots; k++) feeds[slotInput(name, k)] = feeds[name];
      }
      if (session.slots > 1) {
        // Read only by the mixed branch, but every input must be fed.
        feeds.mixed = this.falseTensor;
        for (let k = 0; k < session.slots; k++) feeds[`slot_positions.${k}`] = this.noPositions;
        feeds.slot_order = this.noPositions;
      }
      if (session.headCopy) feeds.head_backbone = resolved.tensors.has(this.headName) ? this.falseTensor : this.trueTensor;
    }

    const out = await session.session.run(feeds);
    for (let l = 0; l < spec.numLayers; l++) {
      cache.append(l, out[`present.${l}.key`].data as Float32Array, out[`present.${l}.value`].data as Float32Array, S, counts, first);
    }
    cache.advance(counts, first);

    const logits = out.logits.data as Float32Array;
    const V = spec.vocabSize;
    const result: Float32Array[][] = rows.map(() => []);
    let k = 0;
    for (let b = 0; b < B; b++) {
      const n = counts[b];
      const m = n === 0 ? 0 : opts.logits === 'all' ? n : 1;
      for (let i = 0; i < m; i++, k++) result[b].push(logits.subarray(k * V, (k + 1) * V));
    }
    return result;
  }

  /**
   * Whether rows of this view can share a serving run with rows of other such views: it replaces only o_proj
   * and norms (which the graph takes per slot / per row) and gates no layer.
   */
  sharesRuns(view: View): boolean {
    return this.sharesRunsResolved(view.resolve());
  }

  private sharesRunsResolved({ tensors, gates }: ResolvedView): boolean {
    if (gates.size > 0) return false;
    for (const name of tensors.keys()) if (!this.oProjNames.has(name) && !this.normNames.has(name)) return false;
    return true;
  }

  /** Distinct views of a run's rows and each row's slot; null when they are all one view. */
  private mixFor(rowViews: View[]): { views: ResolvedView[]; slotOf: number[] } | null {
    const index = new Map<string, number>();
    const views: ResolvedView[] = [];
    const slotOf = rowViews.map((v) => {
      let k = index.get(v.fingerprint);
      if (k === undefined) {
        const resolved = v.resolve();
        if (!this.sharesRunsResolved(resolved)) throw new ViewError('a view that replaces more than o_proj and norms cannot share a run with other views');
        k = views.length;
        index.set(v.fingerprint, k);
        views.push(resolved);
      }
      return k;
    });
    if (views.length === 1) return null;
    if (views.length > this.serving.slots) throw new ViewError(`${views.length} views in one run; the serving graph has ${this.serving.slots} plugin slots`);
    return { views, slotOf };
  }

  private mixedFeeds(feeds: Record<string, ort.Tensor>, session: DecoderSession, mix: { views: ResolvedView[]; slotOf: number[] }, B: number, S: number): void {
    const { spec } = this;
    const H = spec.hiddenSize;
    for (const name of session.inputs) {
      const shape = graphShape(spec, name, this.shapes.get(name)!);
      if (this.normNames.has(name)) {
        // Each row's own norm weight, in a buffer reused across runs (fresh memory is slow to touch here).
        let buf = this.rowNormBuffers.get(name);
        if (!buf || buf.length < B * H) this.rowNormBuffers.set(name, (buf = new Float32Array(Math.max(B, 8) * H)));
        const perSlot = mix.views.map((v) => this.viewWeight(name, v));
        for (let b = 0; b < B; b++) buf.set(perSlot[mix.slotOf[b]], b * H);
        feeds[name] = new ort.Tensor('float32', buf.subarray(0, B * H), [B, 1, H]);
      } else if (this.oProjNames.has(name)) {
        for (let k = 0; k < session.slots; k++) feeds[slotInput(name, k)] = this.feedTensor(this.viewWeight(name, mix.views[Math.min(k, mix.views.length - 1)]), shape);
      } else {
        // embed_tokens / lm_head: no view that shares runs replaces them.
        feeds[name] = this.feedTensor(this.weights.get(name)!, shape);
      }
    }
    feeds.mixed = this.trueTensor;
    if (session.headCopy) feeds.head_backbone = this.trueTensor;
    const order = new BigInt64Array(B * S);
    let column = 0;
    for (let k = 0; k < session.slots; k++) {
      const positions: bigint[] = [];
      for (let b = 0; b < B; b++) {
        if (mix.slotOf[b] !== k) continue;
        for (let t = 0; t < S; t++) {
          order[b * S + t] = BigInt(column++);
          positions.push(BigInt(b * S + t));
        }
      }
      feeds[`slot_positions.${k}`] = new ort.Tensor('int64', BigInt64Array.from(positions), [positions.length]);
    }
    feeds.slot_order = new ort.Tensor('int64', order, [B * S]);
  }

  /** Logits of every position of `ids`, from an empty cache (the `sfn logits` computation). */
  async logits(ids: number[], view?: View): Promise<Float32Array[]> {
    const cache = this.newCache(1);
    return (await this.forward(cache, [ids], { view, logits: 'all' }))[0];
  }

  /** Ends onnxruntime profiling (when enabled) and returns the trace files written. */
  async endProfiling(): Promise<void> {
    this.serving.session.endProfiling();
    if (this.research) (await this.research).session.endProfiling();
  }

  async release(): Promise<void> {
    await this.serving.session.release();
    if (this.research) await (await this.research).session.release();
  }
}
