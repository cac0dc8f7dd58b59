/**
 * The engine: a loaded backbone, its onnxruntime sessions, and `forward` over a view and a KV cache.
 *
 * Two sessions, both over the same graph-layout weights held once in JS memory:
 * - serving: the pluggable kinds (o_proj, norms, embed_tokens, lm_head) are graph inputs, everything else
 *   is a prepacked initializer. Plugins and o_proj merges run here at full speed.
 * - research: every weight is an input, so any module can be overridden (merges of q/k/v or the MLP,
 *   destruction of any kind). Built on first need and kept.
 */
import * as ort from 'onnxruntime-node';
import { checkCheckpoint, CheckpointReader, Fingerprinter, iterateCheckpointRaw } from '../model/checkpoint.ts';
import { readSpec, type ModelSpec } from '../model/config.ts';
import { maxAbsStored } from '../model/dtype.ts';
import { expectedParams, PLUGGABLE_KINDS, parseName } from '../model/names.ts';
import { View, type ResolvedView, type Tensor } from './view.ts';
import { MASKED } from './graph.ts';
import { toGraphLayout, toHfLayout } from './layout.ts';
import { decodeWeight, gatherRows, WeightStore } from './weight-store.ts';
import { KvCache } from './kv-cache.ts';
import { WeightFeeds, type SlotMix } from './weight-feeds.ts';
import { SessionCache, type PendingEntry } from './session-cache.ts';
import { CheckpointMemo } from './checkpoint-memo.ts';
import { createDecoderSession, openCachedSession, type DecoderSession, type Device, type ServingFrom, type EngineOptions, type SessionKind } from './session.ts';

/**
 * The kinds JS keeps once the serving session is built: the swappable ones fed from the backbone on every run.
 * (The embedding is read from the checkpoint row by row; onnxruntime holds the head's copy and the rest.)
 */
const KEPT_IN_JS: ReadonlySet<string> = new Set(PLUGGABLE_KINDS.filter((k) => k !== 'embed_tokens' && k !== 'lm_head'));

interface CreateFrom {
  /** The largest |value| of each pluggable parameter, taken as the tensors went by. */
  maxAbs: ReadonlyMap<string, number>;
  serving?: DecoderSession;
  save?: { cache: SessionCache; pending: PendingEntry; made: Record<string, unknown> };
}

/** The embedding: looked up here, row by row, rather than by the graph. */
const EMBED = 'model.embed_tokens.weight';

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
  private readonly feeds: WeightFeeds;
  /** The parameter the head multiplies by (embed_tokens when tied). */
  private readonly headName: string;
  readonly shapes: Map<string, number[]>;
  readonly baseView: View;
  /** The device sessions actually run on ('cpu' after a CUDA fallback). */
  device: Device;
  /**
   * How the serving session was made: 'cache' (opened from the session cache), 'cached' (built, and written to
   * the cache), 'built' (built; no cache, or it could not be written).
   */
  servingFrom: ServingFrom = 'built';

  readonly spec: ModelSpec;
  /** Every parameter in graph layout; frozen ones dropped from JS once the serving session holds them. */
  private readonly store: WeightStore;
  /** sha256 over the config and every weight's values. */
  readonly fingerprint: string;
  private readonly options: EngineOptions;
  private pluggableMax: ReadonlyMap<string, number> = new Map();
  readonly dir: string | null;
  private constructor(spec: ModelSpec, weights: Map<string, Float32Array>, fingerprint: string, options: EngineOptions, dir: string | null, reader: CheckpointReader | null) {
    this.spec = spec;
    this.store = new WeightStore(spec, weights, reader);
    this.fingerprint = fingerprint;
    this.options = options;
    this.dir = dir;
    this.shapes = expectedParams(spec);
    this.baseView = new View(fingerprint);
    this.device = options.device ?? 'cpu';
    this.headName = spec.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
    this.feeds = new WeightFeeds(spec, weights, this.shapes, this.headName);
  }

  /**
   * Loads a Hugging Face model directory. With a session cache holding this backbone's serving session, only the
   * weights JS keeps (o_proj and the norms) are decoded; the rest stay in the checkpoint until something asks.
   * With a memo of these very files (checkpoint-memo.ts) nothing else is read: not even to hash the fingerprint.
   */
  static async load(dir: string, options: EngineOptions = {}): Promise<Engine> {
    const { spec, raw } = readSpec(dir);
    const shapes = expectedParams(spec);
    const cache = options.sessionCache && !options.allInputs && (options.device ?? 'cpu') === 'cpu' ? new SessionCache(options.sessionCache, options.warn ?? console.warn) : null;
    // Stated before anything is read, so that what the read finds is recorded against these files.
    const memo = cache ? new CheckpointMemo(cache.dir, dir) : null;
    const weights = new Map<string, Float32Array>();
    // Opened first: frozen weights are read back later through these files, the ones read now.
    const reader = new CheckpointReader(dir);
    try {
      let facts = memo?.find() ?? null;
      if (facts) {
        // Files unchanged since a load read them whole: only what JS keeps is read.
        checkCheckpoint(dir, spec);
        for (const [name, shape] of shapes) {
          if (!KEPT_IN_JS.has(parseName(name)!.kind)) continue;
          const { bytes, dtype } = reader.raw(name);
          weights.set(name, decodeWeight(spec, name, bytes, dtype, shape));
        }
      } else {
        const fp = new Fingerprinter(raw);
        // Taken while the bytes pass by: afterwards the embedding would have to be read and decoded again.
        const maxAbs = new Map<string, number>();
        for (const t of iterateCheckpointRaw(dir, spec)) {
          fp.addRaw(t.name, t.dtype, t.bytes);
          const kind = parseName(t.name)!.kind;
          if (PLUGGABLE_KINDS.includes(kind)) maxAbs.set(t.name, maxAbsStored(t.bytes, t.dtype));
          if (!cache || KEPT_IN_JS.has(kind)) weights.set(t.name, decodeWeight(spec, t.name, t.bytes, t.dtype, t.shape));
        }
        facts = { fingerprint: fp.digest(), maxAbs };
        memo?.save(facts);
      }
      const { fingerprint, maxAbs } = facts;
      if (!cache) return await Engine.create(spec, weights, fingerprint, options, dir, reader, { maxAbs });
      const { key, made } = cache.key(fingerprint, { kind: 'serving', quantize: options.quantize ?? 'none' });
      const model = cache.find(key);
      if (model) {
        try {
          return await Engine.create(spec, weights, fingerprint, options, dir, reader, { maxAbs, serving: await openCachedSession(model, shapes, options) });
        } catch (e) {
          cache.discard(key, (e as Error).message.split('\n')[0]);
        }
      }
      // A miss: the session is built from every weight, and onnxruntime writes what it built into the cache.
      let bytes = 0;
      for (const [name, shape] of shapes) {
        if (!weights.has(name)) {
          const { bytes: b, dtype } = reader.raw(name);
          weights.set(name, decodeWeight(spec, name, b, dtype, shape));
        }
        bytes += weights.get(name)!.byteLength;
      }
      // The source model's weights, then the entry's data file: the initializers and their prepacked forms.
      const pending = cache.begin(key, 3 * bytes);
      return await Engine.create(spec, weights, fingerprint, options, dir, reader, { maxAbs, ...(pending ? { save: { cache, pending, made } } : {}) });
    } catch (e) {
      reader.close();
      throw e;
    }
  }

  /** An engine over tensors already in memory (HF layout), e.g. a materialised view. */
  static async fromTensors(spec: ModelSpec, tensors: ReadonlyMap<string, Tensor>, options: EngineOptions = {}): Promise<Engine> {
    const fp = new Fingerprinter(spec);
    const weights = new Map<string, Float32Array>();
    const maxAbs = new Map<string, number>();
    for (const [name, shape] of expectedParams(spec)) {
      const t = tensors.get(name);
      if (!t) throw new ViewError(`missing tensor ${name}`);
      if (t.shape.join() !== shape.join()) throw new ViewError(`${name}: shape [${t.shape}], expected [${shape}]`);
      fp.add(name, t.data);
      if (PLUGGABLE_KINDS.includes(parseName(name)!.kind)) maxAbs.set(name, maxAbsStored(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), 'F32'));
      weights.set(name, toGraphLayout(spec, name, t.data, shape));
    }
    return Engine.create(spec, weights, fp.digest(), options, null, null, { maxAbs });
  }

  /** `serving`: a session opened from the cache; `save`: build it and write it to the cache as well. */
  private static async create(spec: ModelSpec, weights: Map<string, Float32Array>, fp: string, options: EngineOptions, dir: string | null, reader: CheckpointReader | null, from: CreateFrom) {
    const e = new Engine(spec, weights, fp, options, dir, reader);
    e.pluggableMax = from.maxAbs;
    if (from.serving) {
      e.serving = from.serving;
      e.servingFrom = 'cache';
    } else if (from.save) {
      const { cache, pending, made } = from.save;
      try {
        e.serving = await e.buildSession('serving', pending);
        if (cache.commit(pending, made)) e.servingFrom = 'cached';
      } catch (err) {
        // Writing the entry failed (a full disk, say): serve without it, from the weights read back.
        cache.abandon(pending);
        e.store.restore();
        (options.warn ?? console.warn)(`sfn: warning: the optimised session was not cached: ${(err as Error).message.split('\n')[0]}`);
        e.serving = await e.buildSession('serving');
      }
    } else e.serving = await e.buildSession(options.allInputs ? 'research' : 'serving');
    // onnxruntime holds the frozen weights and its copy of the backbone's head; the embedding's rows are read
    // from the checkpoint as runs need them.
    const headCopy = e.serving.headCopy;
    if (!options.allInputs) e.store.drop([...e.shapes.keys()].filter((n) => !e.serving.inputs.has(n) || (headCopy && n === e.headName)));
    return e;
  }

  /** Names that a view may replace on the serving session: its weight inputs, and the embedding (looked up here). */
  get swappable(): ReadonlySet<string> {
    return new Set([...this.serving.inputs, EMBED]);
  }

  /** The same tensor in graph layout (held once: the HF-layout copy can be dropped). */
  toGraph(name: string, t: Tensor): Tensor {
    if (t.layout === 'graph') return t;
    return { shape: t.shape, data: toGraphLayout(this.spec, name, t.data, t.shape), layout: 'graph' };
  }

  /** The largest |value| of each parameter a plugin may replace: what an uploaded plugin's magnitudes are checked against. */
  pluggableMaxAbs(): Map<string, number> {
    return new Map(this.pluggableMax);
  }

  /** A backbone parameter in graph layout (shared, not a copy: do not write to it). */
  graphWeight(name: string): Float32Array {
    const data = this.store.get(name);
    if (!data) throw new ViewError(`unknown parameter ${name}`);
    return data;
  }

  /** A backbone parameter in HF layout (a copy when the graph layout differs). */
  parameter(name: string): Tensor {
    const shape = this.shapes.get(name);
    const data = this.store.get(name);
    if (!shape || !data) throw new ViewError(`unknown parameter ${name}`);
    return { shape, data: toHfLayout(this.spec, name, data, shape) };
  }

  newCache(batch = 1): KvCache {
    return new KvCache(this.spec, batch);
  }

  private async buildSession(kind: SessionKind, save?: PendingEntry): Promise<DecoderSession> {
    const release = (names: string[]) => this.store.drop(names);
    const r = await createDecoderSession({ spec: this.spec, weights: this.store.held, shapes: this.shapes, headName: this.headName, device: this.device, options: this.options, release }, kind, save);
    this.device = r.device;
    return r.session;
  }

  private researchSession(): Promise<DecoderSession> {
    // It feeds every weight on every run: the dropped ones are read back and held again while it lives.
    this.research ??= (this.store.restore(), this.buildSession('research'));
    return this.research;
  }

  /** Checks a view's tensors against the backbone and picks the session that can run it. */
  async sessionFor(view: View): Promise<DecoderSession> {
    return this.sessionForTensors(view.resolve().tensors);
  }

  private sessionForTensors(tensors: ReadonlyMap<string, Tensor>): Promise<DecoderSession> {
    this.checkTensors(tensors);
    const needsResearch = [...tensors.keys()].some((name) => name !== EMBED && !this.serving.inputs.has(name));
    return needsResearch ? this.researchSession() : Promise.resolve(this.serving);
  }

  /** Checks a view's replacement tensors against the backbone's names and shapes. */
  checkTensors(tensors: ReadonlyMap<string, Tensor>): void {
    for (const [name, t] of tensors) {
      const shape = this.shapes.get(name);
      if (!shape) throw new ViewError(`overlay names "${name}", which the backbone does not have`);
      if (t.shape.join() !== shape.join()) throw new ViewError(`overlay tensor "${name}" has shape [${t.shape}], the backbone's is [${shape}]`);
    }
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
    for (const r of rows)
      for (const id of r) {
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

    // Token vectors, positions and masks; padded rows attend only to themselves so that no softmax is empty.
    const ids = new Int32Array(B * S);
    const pos = new BigInt64Array(B * S);
    const newMask = new Float32Array(B * S * S).fill(MASKED);
    const select: number[] = [];
    for (let b = 0; b < B; b++) {
      const n = counts[b];
      const start = cache.lengths[first + b];
      // RoPE reads its cos/sin tables at these positions: the model's own limit is a hard one.
      if (start + n > spec.maxPositionEmbeddings) throw new RangeError(`row ${first + b} would reach position ${start + n - 1}; the model has ${spec.maxPositionEmbeddings} positions`);
      for (let i = 0; i < S; i++) {
        ids[b * S + i] = i < n ? rows[b][i] : 0;
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
      inputs_embeds: new ort.Tensor('float32', this.embed(ids, mix ? undefined : resolved.tensors.get(EMBED)), [B, S, spec.hiddenSize]),
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
    if (mix) this.feeds.mixed(feeds, session, mix, B, S);
    else this.feeds.single(feeds, session, resolved);

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
    return this.feeds.sharesRuns(view.resolve());
  }

  /** Distinct views of a run's rows and each row's slot; null when they are all one view. */
  private mixFor(rowViews: View[]): SlotMix | null {
    const index = new Map<string, number>();
    const views: ResolvedView[] = [];
    const slotOf = rowViews.map((v) => {
      let k = index.get(v.fingerprint);
      if (k === undefined) {
        const resolved = v.resolve();
        if (!this.feeds.sharesRuns(resolved)) throw new ViewError('a view that replaces more than o_proj and norms cannot share a run with other views');
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

  /** The embedding's rows of `ids`: the view's embedding, else the backbone's (read back when dropped). */
  private embed(ids: Int32Array, over: Tensor | undefined): Float32Array {
    const H = this.spec.hiddenSize;
    const out = new Float32Array(ids.length * H);
    if (over) gatherRows(over.data, ids, H, out);
    else this.store.rows(EMBED, ids, H, out);
    return out;
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

  /** Bytes of float32 weights held in JS (the frozen ones are not, once the serving session holds them). */
  get heldWeightBytes(): number {
    return this.store.heldBytes;
  }

  async release(): Promise<void> {
    await this.serving.session.release();
    if (this.research) await (await this.research).session.release();
    this.store.close();
  }
}
