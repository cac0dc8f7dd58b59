/**
 * The weight inputs of one decoder run: each session input fed from the view's overlay or the backbone, in graph
 * layout, with tensors and layout conversions cached per array (the decode hot path builds these every step);
 * for a run mixing views, each row's norms and each slot's o_proj.
 */
import * as ort from 'onnxruntime-node';
import type { ModelSpec } from '../model/config.ts';
import { parseName } from '../model/names.ts';
import { NORM_KINDS, slotInput } from './graph.ts';
import { graphShape, toGraphLayout } from './layout.ts';
import type { DecoderSession } from './session.ts';
import type { ResolvedView, Tensor } from './view.ts';

/** Distinct views of a run's rows and each row's slot. */
export interface SlotMix {
  views: ResolvedView[];
  slotOf: number[];
}

export class WeightFeeds {
  /** Graph-layout tensors of overlays, keyed by the HF-layout array they came from. */
  private readonly layoutCache = new WeakMap<Float32Array, Float32Array>();
  private readonly tensorCache = new WeakMap<Float32Array, ort.Tensor>();
  private readonly rowNormBuffers = new Map<string, Float32Array>();
  private readonly falseTensor = new ort.Tensor('bool', Uint8Array.from([0]), []);
  private readonly trueTensor = new ort.Tensor('bool', Uint8Array.from([1]), []);
  private readonly noPositions = new ort.Tensor('int64', new BigInt64Array(0), [0]);
  /** Fed as the head input where the graph's backbone copy of the head is used instead (the input is not read). */
  private readonly headStandIn: ort.Tensor;
  readonly normNames: ReadonlySet<string>;
  readonly oProjNames: ReadonlySet<string>;

  private readonly spec: ModelSpec;
  /** Every backbone parameter in graph layout. */
  private readonly weights: ReadonlyMap<string, Float32Array>;
  private readonly shapes: ReadonlyMap<string, number[]>;
  /** The parameter the head multiplies by (embed_tokens when tied). */
  private readonly headName: string;
  constructor(spec: ModelSpec, weights: ReadonlyMap<string, Float32Array>, shapes: ReadonlyMap<string, number[]>, headName: string) {
    this.spec = spec;
    this.weights = weights;
    this.shapes = shapes;
    this.headName = headName;
    this.headStandIn = new ort.Tensor('float32', new Float32Array(spec.hiddenSize), [1, spec.hiddenSize]);
    const names = [...shapes.keys()];
    this.normNames = new Set(names.filter((n) => NORM_KINDS.includes(parseName(n)!.kind)));
    this.oProjNames = new Set(names.filter((n) => parseName(n)!.kind === 'o_proj' && parseName(n)!.param === 'weight'));
  }

  /** Whether rows of this view may share a serving run with other such views: o_proj and norms only, no gate. */
  sharesRuns({ tensors, gates }: ResolvedView): boolean {
    if (gates.size > 0) return false;
    for (const name of tensors.keys()) if (!this.oProjNames.has(name) && !this.normNames.has(name)) return false;
    return true;
  }

  /** Feeds every weight input of `session` from one view. */
  single(feeds: Record<string, ort.Tensor>, session: DecoderSession, view: ResolvedView): void {
    for (const name of session.inputs) {
      if (session.headCopy && name === this.headName && !view.tensors.has(name)) {
        feeds[name] = this.headStandIn;
        continue;
      }
      const data = this.viewWeight(name, view);
      const shape = graphShape(this.spec, name, this.shapes.get(name)!);
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
    if (session.headCopy) feeds.head_backbone = view.tensors.has(this.headName) ? this.falseTensor : this.trueTensor;
  }

  /** Feeds a run whose rows (B of S tokens) use several views, each in its plugin slot. */
  mixed(feeds: Record<string, ort.Tensor>, session: DecoderSession, mix: SlotMix, B: number, S: number): void {
    const H = this.spec.hiddenSize;
    for (const name of session.inputs) {
      const shape = graphShape(this.spec, name, this.shapes.get(name)!);
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
        // The head: no view that shares runs replaces it, so the graph's backbone copy serves.
        feeds[name] = session.headCopy ? this.headStandIn : this.feedTensor(this.weights.get(name)!, shape);
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
}
