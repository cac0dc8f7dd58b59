/**
 * The engine's onnxruntime sessions over one set of graph-layout weights: which weights are graph inputs (the
 * serving session: the pluggable kinds; the research session: all), int4 quantisation of the frozen linears,
 * the execution provider and its CPU fallback.
 */
import { availableParallelism } from 'node:os';
import * as ort from 'onnxruntime-node';
import type { ModelSpec } from '../model/config.ts';
import { parseName, PLUGGABLE_KINDS } from '../model/names.ts';
import { buildDecoderGraph, type DecoderGraph } from './graph.ts';
import { graphShape, PLUGIN_SLOTS } from './layout.ts';
import { quantizeInt4, type Int4Weight } from './quantize.ts';
import { releaseBuffers } from '../util/release.ts';
import { SOURCE_DATA, SOURCE_MODEL, type PendingEntry, type SessionCacheOptions } from './session-cache.ts';
import { closeSync, openSync, writeFileSync } from 'node:fs';
import { writeAll } from '../model/atomic.ts';
import { join } from 'node:path';

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
   * MatMulNBits initializers, and so does its copy of the backbone's head (used by views that keep it). Swappable
   * weights stay fp32 inputs (a view's head, o_proj, norms are exact), and the research session stays fp32.
   */
  quantize?: Quantize;
  /**
   * Keep the serving session as onnxruntime optimised it (weights prepacked) in this directory, and open it from
   * there on later loads of the same backbone (CPU only; see session-cache.ts).
   */
  sessionCache?: SessionCacheOptions;
}

export type Quantize = 'none' | 'int4';

/** The frozen kinds that --quantize int4 quantizes (everything a view cannot swap on the serving session). */
const QUANTIZED_KINDS = new Set(['q_proj', 'k_proj', 'v_proj', 'gate_proj', 'up_proj', 'down_proj']);

export type Device = 'cpu' | 'cuda';

export type SessionKind = 'serving' | 'research';

export type ServingFrom = 'cache' | 'cached' | 'built';

export interface DecoderSession {
  kind: SessionKind;
  session: ort.InferenceSession;
  inputs: ReadonlySet<string>;
  /** Plugin slots of the graph (1: none). */
  slots: number;
  /** Whether the graph holds a prepacked copy of the backbone's head (and takes `head_backbone`). */
  headCopy: boolean;
}

export interface SessionSource {
  spec: ModelSpec;
  /** Every parameter in graph layout. */
  weights: ReadonlyMap<string, Float32Array>;
  shapes: ReadonlyMap<string, number[]>;
  /** The parameter the head multiplies by (embed_tokens when tied). */
  headName: string;
  device: Device;
  options: EngineOptions;
  /** Told which of `weights` onnxruntime no longer needs from JS (it maps them from a file instead). */
  release?: (names: string[]) => void;
}

/**
 * Builds one session; `device` is where it actually runs ('cpu' after a CUDA fallback). With `save` (CPU only),
 * onnxruntime also writes the optimised model there, for `openCachedSession`.
 */
export async function createDecoderSession(c: SessionSource, kind: SessionKind, save?: PendingEntry): Promise<{ session: DecoderSession; device: Device }> {
  const inputs = new Set<string>();
  for (const name of c.shapes.keys()) {
    const p = parseName(name)!;
    if (kind === 'research' || PLUGGABLE_KINDS.includes(p.kind)) inputs.add(name);
  }
  const frozen = new Map([...c.weights].filter(([n]) => !inputs.has(n)));
  let quantized: Map<string, Int4Weight> | undefined;
  if (kind === 'serving' && c.options.quantize === 'int4') {
    quantized = new Map();
    for (const [name, data] of frozen) {
      const p = parseName(name)!;
      if (p.param !== 'weight' || !QUANTIZED_KINDS.has(p.kind)) continue;
      const [K, N] = graphShape(c.spec, name, c.shapes.get(name)!);
      quantized.set(name, quantizeInt4(data, K, N));
    }
  }
  const slots = kind === 'serving' ? PLUGIN_SLOTS : 1;
  let backboneHead = kind === 'serving' ? c.weights.get(c.headName) : undefined;
  // The head is the largest product of a decode step: views that keep the backbone's use an int4 copy of it.
  let backboneHeadInt4: Int4Weight | undefined;
  if (backboneHead && quantized) {
    backboneHeadInt4 = quantizeInt4(backboneHead, c.spec.hiddenSize, c.spec.vocabSize, 32, 'NK');
    backboneHead = undefined;
  }
  const graph = buildDecoderGraph(c.spec, { inputs, frozen, quantized, slots, backboneHead, backboneHeadInt4 });
  // Ours alone (the frozen float32 weights are the engine's): freed once onnxruntime has them.
  const int4Buffers = [...(quantized?.values() ?? []), ...(backboneHeadInt4 ? [backboneHeadInt4] : [])].flatMap((q) => [q.packed, q.scales]);
  const options = sessionOptions(c.options, kind);
  let session: ort.InferenceSession;
  let device = c.device;
  if (device === 'cuda') {
    try {
      // CPU stays listed: nodes the CUDA provider lacks kernels for run there.
      session = await ort.InferenceSession.create(graph.bytes, { ...options, externalData: graph.external, executionProviders: ['cuda', 'cpu'] });
    } catch (err) {
      device = 'cpu';
      (c.options.warn ?? console.warn)(`sfn: warning: the CUDA execution provider could not start (${(err as Error).message.split('\n')[0]}); running on the CPU`);
      session = await ort.InferenceSession.create(graph.bytes, { ...options, externalData: graph.external });
    }
  } else if (save) {
    // The model and its weights go to a file first, which onnxruntime maps rather than copying (in memory it copies
    // every initializer: 24 s at 1.5B, with both copies resident): the JS copies can go before it starts.
    const source = writeSourceModel(graph, save.tmp);
    c.release?.([...frozen.keys(), ...(kind === 'serving' ? [c.headName] : [])]);
    releaseBuffers(int4Buffers);
    // onnxruntime writes the optimised model as it builds the session: initializers of 1 KiB or more, and their
    // prepacked forms, go to one data file (page-aligned, so that a later load maps them).
    const extra = options.extra as { session: Record<string, unknown> };
    const saving = {
      ...options,
      optimizedModelFilePath: save.modelPath,
      // Its one warning is that the file holds CPU-specific optimisations: the cache's key names the CPU.
      logSeverityLevel: 3 as const,
      extra: {
        ...extra,
        session: {
          ...extra.session,
          optimized_model_external_initializers_file_name: save.dataName,
          optimized_model_external_initializers_min_size_in_bytes: '1024',
          // MatMulNBits' saved prepacked form reloads as NaNs (onnxruntime 1.30): int4 entries prepack at each load.
          save_external_prepacked_constant_initializers: quantized ? '0' : '1',
        },
      },
    };
    session = await ort.InferenceSession.create(source, saving);
  } else {
    session = await ort.InferenceSession.create(graph.bytes, { ...options, externalData: graph.external });
  }
  // onnxruntime copied the int4 initializers in (or mapped them from the file): free ours now rather than at some
  // later collection (a no-op where they already went).
  releaseBuffers(int4Buffers);
  // The graph's own inputs: an untied embedding is not one (the engine looks its rows up).
  return { device, session: { kind, session, inputs: new Set(graph.weightInputs), slots, headCopy: backboneHead !== undefined || backboneHeadInt4 !== undefined } };
}

/** onnxruntime's settings for a decoder session (the graph's weights and a cache's paths are added by the caller). */
function sessionOptions(o: EngineOptions, kind: SessionKind): ort.InferenceSession.SessionOptions {
  return {
    graphOptimizationLevel: 'all',
    intraOpNumThreads: o.threads ?? availableParallelism(),
    executionMode: 'sequential',
    // Threads that sleep between ops pay a wake-up per parallel op (hundreds per decode step); spinning without
    // force_spinning_stop went on after each run, taking a core from the rest of the process. MatmulTransposeFusion
    // would turn the head's (W x^T)^T into a slower transB product. Numbers: docs/benchmarks.md#design-measurements.
    extra: { session: { intra_op: { allow_spinning: o.spin === false ? '0' : '1' }, force_spinning_stop: '1' }, optimization: { disable_specified_optimizers: 'MatmulTransposeFusion' } },
    ...(o.profilePrefix ? { enableProfiling: true, profileFilePrefix: `${o.profilePrefix}-${kind}` } : {}),
  };
}

/**
 * The serving session from a cache entry that `createDecoderSession` saved: already optimised (so not again),
 * its initializers and their prepacked forms mapped from the entry's data file rather than copied.
 */
export async function openCachedSession(modelPath: string, shapes: ReadonlyMap<string, number[]>, options: EngineOptions): Promise<DecoderSession> {
  const session = await ort.InferenceSession.create(modelPath, { ...sessionOptions(options, 'serving'), graphOptimizationLevel: 'disabled' });
  return { kind: 'serving', session, inputs: new Set(session.inputNames.filter((n) => shapes.has(n))), slots: PLUGIN_SLOTS, headCopy: session.inputNames.includes('head_backbone') };
}

/** The source model for a session that is being cached: `source.onnx` and `source.data` in `dir`, which onnxruntime maps. */
function writeSourceModel(graph: DecoderGraph, dir: string): string {
  const { bytes, placed } = graph.withDataFile(SOURCE_DATA, 64 * 1024);
  const fd = openSync(join(dir, SOURCE_DATA), 'w');
  try {
    for (const p of placed) writeAll(fd, p.data, p.offset);
  } finally {
    closeSync(fd);
  }
  writeFileSync(join(dir, SOURCE_MODEL), bytes);
  return join(dir, SOURCE_MODEL);
}
