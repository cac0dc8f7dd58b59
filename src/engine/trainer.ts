/**
 * The Freeze stethoscope's engine: an onnxruntime session over the training graph of a checkpoint, with the
 * chosen parameters trainable (fed per step from `params`, which the optimizer updates in place) and every
 * other parameter an initializer handed over once. `step` runs forward and backward on a padded batch and
 * returns the loss and the gradients.
 */
import { availableParallelism } from 'node:os';
import * as ort from 'onnxruntime-node';
import { CheckpointReader } from '../model/checkpoint.ts';
import { readSpec, type ModelSpec } from '../model/config.ts';
import { expectedParams } from '../model/names.ts';
import { MASKED } from './graph.ts';
import { buildTrainGraph } from './train-graph.ts';

/** One training sequence: its token ids, and which tokens are targets (`targets[j]`: token j is predicted from 0..j-1). */
export interface TrainRow {
  ids: number[];
  targets: boolean[];
}

export interface StepResult {
  /** Mean next-token cross-entropy over the batch's target tokens. */
  loss: number;
  grads: Map<string, Float32Array>;
  /** Target tokens in the batch. */
  tokens: number;
}

export class Trainer {
  readonly spec: ModelSpec;
  /** Trainable parameters (HF layout), in the graph's order; the optimizer updates them in place. */
  readonly params: Map<string, Float32Array>;
  readonly shapes: Map<string, number[]>;
  private readonly session: ort.InferenceSession;
  private constructor(spec: ModelSpec, params: Map<string, Float32Array>, shapes: Map<string, number[]>, session: ort.InferenceSession) {
    this.spec = spec;
    this.params = params;
    this.shapes = shapes;
    this.session = session;
  }

  static async load(dir: string, trainable: ReadonlySet<string>, opts: { threads?: number } = {}): Promise<Trainer> {
    const { spec } = readSpec(dir);
    const shapes = expectedParams(spec);
    const reader = new CheckpointReader(dir);
    const frozen = new Map<string, Float32Array>();
    const params = new Map<string, Float32Array>();
    try {
      for (const name of shapes.keys()) (trainable.has(name) ? params : frozen).set(name, reader.read(name).data);
    } finally {
      reader.close();
    }
    const graph = buildTrainGraph(spec, { trainable, frozen });
    const session = await ort.InferenceSession.create(graph.bytes, {
      externalData: graph.external,
      graphOptimizationLevel: 'all',
      intraOpNumThreads: opts.threads ?? availableParallelism(),
      executionMode: 'sequential',
    });
    const ordered = new Map(graph.trainable.map((n) => [n, params.get(n)!]));
    return new Trainer(spec, ordered, new Map(graph.trainable.map((n) => [n, shapes.get(n)!])), session);
  }

  /** Forward and backward over `rows`, right-padded to the longest. */
  async step(rows: TrainRow[]): Promise<StepResult> {
    if (!rows.length) throw new RangeError('an empty batch');
    const B = rows.length;
    const S = Math.max(...rows.map((r) => r.ids.length));
    if (S > this.spec.maxPositionEmbeddings) throw new RangeError(`a sequence of ${S} tokens is longer than the model's ${this.spec.maxPositionEmbeddings} positions`);
    const ids = new BigInt64Array(B * S);
    const labels = new BigInt64Array(B * S);
    const weight = new Float32Array(B * S);
    const mask = new Float32Array(B * S * S).fill(MASKED);
    let tokens = 0;
    rows.forEach((r, i) => {
      const n = r.ids.length;
      for (let t = 0; t < n; t++) {
        ids[i * S + t] = BigInt(r.ids[t]);
        // Position t predicts token t + 1; it attends to the tokens 0..t of its own row.
        if (t + 1 < n && r.targets[t + 1]) {
          labels[i * S + t] = BigInt(r.ids[t + 1]);
          weight[i * S + t] = 1;
          tokens++;
        }
        for (let j = 0; j <= t; j++) mask[(i * S + t) * S + j] = 0;
      }
      // Padded positions attend to the first token only: no row is all masked, and none is counted.
      for (let t = n; t < S; t++) mask[(i * S + t) * S] = 0;
    });
    if (tokens === 0) throw new RangeError('the batch has no target tokens');
    for (let k = 0; k < weight.length; k++) weight[k] /= tokens;
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', ids, [B, S]),
      labels: new ort.Tensor('int64', labels, [B * S]),
      loss_weight: new ort.Tensor('float32', weight, [B * S]),
      attn_mask: new ort.Tensor('float32', mask, [B, 1, S, S]),
    };
    for (const [name, data] of this.params) feeds[name] = new ort.Tensor('float32', data, this.shapes.get(name)!);
    const out = await this.session.run(feeds);
    const grads = new Map<string, Float32Array>();
    for (const name of this.params.keys()) grads.set(name, out[`${name}.grad`].data as Float32Array);
    return { loss: (out.loss.data as Float32Array)[0], grads, tokens };
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
