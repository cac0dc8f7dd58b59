/**
 * A view is what a request runs: the frozen backbone plus an ordered list of overlays. It resolves to
 * "parameter name -> replacement tensor" (HF layout) plus per-layer gates, and has a stable fingerprint
 * (a hash of the backbone's and the overlays' ids) that batching and caches key on. Building a view copies
 * nothing: overlays point at tensors that already exist.
 */
import { createHash } from 'node:crypto';

export interface Tensor {
  /** The HF shape, whatever the layout of `data`. */
  shape: number[];
  data: Float32Array;
  /**
   * 'hf' (default): Hugging Face layout. 'graph': already in the engine's graph layout (the overlay loader
   * converts once at load, so a cached plugin is held once, not in both layouts).
   */
  layout?: 'hf' | 'graph';
}

/** Replaces named parameters (a plugin, a merge, a Zero or ReInit destruction). */
export interface TensorOverlay {
  type: 'tensors';
  /** Identifies the content: a plugin's sha256, a merge spec's hash. Equal ids must mean equal tensors. */
  id: string;
  tensors: ReadonlyMap<string, Tensor>;
}

/** Sets per-layer gates on the residual contributions (destruction "Remove": gate 0 skips a layer). */
export interface GateOverlay {
  type: 'gates';
  id: string;
  gates: ReadonlyMap<number, number>;
}

export type Overlay = TensorOverlay | GateOverlay;

export interface ResolvedView {
  tensors: Map<string, Tensor>;
  /** Per-layer gates that differ from 1. */
  gates: Map<number, number>;
}

/**
 * A view's fingerprint: the backbone's when nothing is overlaid, else a hash of it and the overlays' ids in order.
 * Built views and the specs the server sends its engine (which name overlays by the same kind of id) use it alike.
 */
export function viewFingerprint(backbone: string, overlays: readonly { type: string; id: string }[]): string {
  if (overlays.length === 0) return backbone;
  const h = createHash('sha256').update(backbone);
  for (const o of overlays) h.update(`\0${o.type}:${o.id}`);
  return h.digest('hex').slice(0, 32);
}

export class View {
  readonly fingerprint: string;

  /** The backbone's fingerprint. */
  readonly backbone: string;
  readonly overlays: readonly Overlay[];
  constructor(backbone: string, overlays: readonly Overlay[] = []) {
    this.backbone = backbone;
    this.overlays = overlays;
    this.fingerprint = viewFingerprint(backbone, overlays);
  }

  /** A view with one more overlay on top (later overlays win). */
  with(overlay: Overlay): View {
    return new View(this.backbone, [...this.overlays, overlay]);
  }

  resolve(): ResolvedView {
    const tensors = new Map<string, Tensor>();
    const gates = new Map<number, number>();
    for (const o of this.overlays) {
      if (o.type === 'tensors') for (const [k, t] of o.tensors) tensors.set(k, t);
      else for (const [l, g] of o.gates) gates.set(l, g);
    }
    for (const [l, g] of gates) if (g === 1) gates.delete(l);
    return { tensors, gates };
  }
}

/** A tensor overlay whose id is the hash of its content, for tensors that have no id of their own. */
export function tensorOverlay(tensors: ReadonlyMap<string, Tensor>, id?: string): TensorOverlay {
  if (id) return { type: 'tensors', id, tensors };
  const h = createHash('sha256');
  for (const name of [...tensors.keys()].sort()) {
    const t = tensors.get(name)!;
    h.update(`${name}[${t.shape}]`);
    h.update(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  }
  return { type: 'tensors', id: h.digest('hex'), tensors };
}
