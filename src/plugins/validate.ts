/**
 * Validates a plugin file against the loaded backbone: the strict safetensors rules, names only from the
 * pluggable module kinds, each present in the backbone with the same shape, a float dtype, finite values,
 * and a declared base fingerprint (metadata `sfn.base_fingerprint`) that matches the backbone's when given.
 * Every failure names the tensor and the rule.
 */
import type { ModelSpec } from '../model/config.ts';
import { FLOAT_DTYPES, toFloat32 } from '../model/dtype.ts';
import { expectedParams, parseName, PLUGGABLE_KINDS, type ModuleKind } from '../model/names.ts';
import { SafetensorsError, SafetensorsFile } from '../model/safetensors.ts';
import { runInThread, ThreadTaskError } from '../util/thread-task.ts';

export { BASE_FINGERPRINT_KEY } from '../model/checkpoint.ts';
import { BASE_FINGERPRINT_KEY } from '../model/checkpoint.ts';

export class PluginError extends Error {
  readonly rule: string;
  readonly tensor?: string;
  constructor(message: string, rule: string, tensor?: string) {
    super(message);
    this.rule = rule;
    this.tensor = tensor;
    this.name = 'PluginError';
  }
}

export interface PluginSummary {
  modules: ModuleKind[];
  layers: number[];
  tensors: number;
  /** Float32 bytes once loaded. */
  tensorBytes: number;
  baseFingerprint: string | null;
  metadata: Record<string, string>;
}

export interface Backbone {
  spec: ModelSpec;
  fingerprint: string;
  /** The largest |value| of each pluggable parameter of the backbone; with maxScale, the bound on a plugin's. */
  maxAbs?: ReadonlyMap<string, number>;
  /** A plugin tensor may reach this many times its backbone tensor's largest |value| (0: no bound). */
  maxScale?: number;
}

export function validatePlugin(path: string, backbone: Backbone): PluginSummary {
  let f: SafetensorsFile;
  try {
    f = SafetensorsFile.open(path);
  } catch (e) {
    if (e instanceof SafetensorsError) throw new PluginError(`not a valid safetensors file: ${e.message}`, `safetensors.${e.rule}`, e.tensor);
    throw e;
  }
  try {
    const shapes = expectedParams(backbone.spec);
    const names = f.names;
    if (names.length === 0) throw new PluginError('the plugin holds no tensors', 'empty');
    const modules = new Set<ModuleKind>();
    const layers = new Set<number>();
    let tensorBytes = 0;
    for (const name of names) {
      const info = f.info(name);
      const p = parseName(name);
      if (!p) throw new PluginError(`"${name}" is not a Qwen2/Llama parameter name`, 'unknown_name', name);
      if (!PLUGGABLE_KINDS.includes(p.kind)) {
        throw new PluginError(`"${name}" is a ${p.kind} parameter, which is frozen in the backbone; plugins may carry ${PLUGGABLE_KINDS.join(', ')}`, 'frozen_module', name);
      }
      const shape = shapes.get(name);
      if (!shape) throw new PluginError(`"${name}" does not exist in the backbone`, 'not_in_backbone', name);
      if (info.shape.join(',') !== shape.join(',')) throw new PluginError(`"${name}" has shape [${info.shape}], the backbone's is [${shape}]`, 'shape', name);
      if (!(FLOAT_DTYPES as readonly string[]).includes(info.dtype)) throw new PluginError(`"${name}" has dtype ${info.dtype}; plugins hold F32, F16 or BF16`, 'dtype', name);
      modules.add(p.kind);
      if (p.layer !== null) layers.add(p.layer);
      tensorBytes += shape.reduce((a, b) => a * b, 1) * 4;
    }
    const base = f.header.metadata[BASE_FINGERPRINT_KEY] ?? null;
    if (base !== null && base !== backbone.fingerprint) {
      throw new PluginError(`the plugin was made for base model ${base}, but the backbone is ${backbone.fingerprint}`, 'base_mismatch');
    }
    // Values last: the only check that reads the data. Finite but absurd values (a norm of 1e30) overflow in
    // generation, so each tensor is also held within maxScale times its backbone tensor's largest |value|.
    for (const name of names) {
      const data = toFloat32(f.readBytes(name), f.info(name).dtype);
      let max = 0;
      for (let i = 0; i < data.length; i++) {
        if (!Number.isFinite(data[i])) throw new PluginError(`"${name}" holds a non-finite value (${data[i]}) at element ${i}`, 'non_finite', name);
        const a = Math.abs(data[i]);
        if (a > max) max = a;
      }
      const base = backbone.maxAbs?.get(name);
      if (backbone.maxScale && base !== undefined && max > backbone.maxScale * Math.max(base, 1e-6)) {
        throw new PluginError(
          `"${name}" reaches |x| = ${max.toPrecision(3)}, ${(max / Math.max(base, 1e-6)).toPrecision(3)} times the backbone's largest (${base.toPrecision(3)}); plugins are held within ${backbone.maxScale}x (--max-plugin-scale)`,
          'magnitude',
          name,
        );
      }
    }
    return {
      modules: [...modules].sort(),
      layers: [...layers].sort((a, b) => a - b),
      tensors: names.length,
      tensorBytes,
      baseFingerprint: base,
      metadata: f.header.metadata,
    };
  } finally {
    f.close();
  }
}

/**
 * validatePlugin in a worker thread: reading and checking every value of a large plugin takes seconds, which the
 * HTTP thread must not spend. A rule failure comes back as the same PluginError.
 */
export async function validatePluginInThread(path: string, backbone: Backbone): Promise<PluginSummary> {
  try {
    return await runInThread<PluginSummary>(new URL(import.meta.url), 'validatePlugin', [path, backbone]);
  } catch (e) {
    if (e instanceof ThreadTaskError && e.errorName === 'PluginError') throw new PluginError(e.message, e.fields.rule as string, e.fields.tensor as string | undefined);
    throw e;
  }
}
