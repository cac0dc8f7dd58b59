/**
 * Saving a merge as a plugin: the merged tensors of pluggable kinds, from the donor (alpha 1) or mixed with
 * the backbone's own `(1-alpha)*A + alpha*B` (read from the backbone's checkpoint), written as a safetensors
 * file that records the backbone's fingerprint as its base.
 */
import { CheckpointReader } from '../model/checkpoint.ts';
import { writeSafetensors, type TensorToWrite } from '../model/safetensors.ts';
import { BASE_FINGERPRINT_KEY } from '../model/checkpoint.ts';
import { readDonor, type MergeOverlaySpec } from '../views/build.ts';

export function writeMergePlugin(spec: MergeOverlaySpec, backboneDir: string, out: string, baseFingerprint: string): number {
  const base = new CheckpointReader(backboneDir);
  const tensors = new Map<string, TensorToWrite>();
  try {
    for (const e of spec.entries) {
      for (const [name, b] of readDonor(e.donor, e.names)) {
        const a = base.read(name);
        if (a.shape.join() !== b.shape.join()) throw new Error(`the donor's "${name}" has shape [${b.shape}], the backbone's is [${a.shape}]`);
        const data = e.alpha === 1 ? b.data : a.data.map((x, i) => (1 - e.alpha) * x + e.alpha * b.data[i]);
        // Later entries win, as they do in a view.
        tensors.set(name, { name, dtype: 'F32', shape: a.shape, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) });
      }
    }
  } finally {
    base.close();
  }
  writeSafetensors(out, [...tensors.values()], { [BASE_FINGERPRINT_KEY]: baseFingerprint, 'sfn.merge': spec.id });
  return tensors.size;
}
