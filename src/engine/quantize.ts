/**
 * Block-wise int4 quantization of frozen linear weights, laid out for onnxruntime's com.microsoft
 * MatMulNBits: for each output column n, K is cut into blocks of `blockSize`; each block has one float
 * scale and 4-bit codes packed two per byte, low nibble first. Symmetric: no zero-point input, so the
 * kernel's default zero point 8 applies and a code c means (c - 8) * scale.
 */

export interface Int4Weight {
  /** [N, kBlocks, blockSize / 2] codes. */
  packed: Uint8Array;
  /** [N * kBlocks] scales. */
  scales: Float32Array;
  K: number;
  N: number;
  blockSize: number;
}

/**
 * Quantizes a weight held as [K, N] (graph layout: in x out), or as [N, K] with `layout` 'NK' (a head's [V, H]).
 * scale = max|w| / 7 per block, codes round(w / scale) + 8 in [1, 15]; a block of zeros gets scale 0. Padding
 * past K (when K is not a multiple of the block size) is code 8, i.e. zero.
 */
export function quantizeInt4(w: Float32Array, K: number, N: number, blockSize = 32, layout: 'KN' | 'NK' = 'KN'): Int4Weight {
  if (blockSize % 2 !== 0 || blockSize < 16) throw new Error(`block size ${blockSize}: an even number >= 16`);
  if (w.length !== K * N) throw new Error(`weight has ${w.length} values, expected ${K} x ${N}`);
  const kBlocks = Math.ceil(K / blockSize);
  const blob = blockSize / 2;
  const packed = new Uint8Array(N * kBlocks * blob);
  const scales = new Float32Array(N * kBlocks);
  const block = new Float32Array(blockSize);
  for (let n = 0; n < N; n++) {
    for (let b = 0; b < kBlocks; b++) {
      let absMax = 0;
      for (let i = 0; i < blockSize; i++) {
        const k = b * blockSize + i;
        const v = k < K ? w[layout === 'KN' ? k * N + n : n * K + k] : 0;
        block[i] = v;
        if (Math.abs(v) > absMax) absMax = Math.abs(v);
      }
      const scale = absMax / 7;
      scales[n * kBlocks + b] = scale;
      const inv = scale === 0 ? 0 : 1 / scale;
      const base = (n * kBlocks + b) * blob;
      for (let i = 0; i < blockSize; i += 2) {
        const lo = Math.min(15, Math.max(1, Math.round(block[i] * inv) + 8));
        const hi = Math.min(15, Math.max(1, Math.round(block[i + 1] * inv) + 8));
        packed[base + i / 2] = lo | (hi << 4);
      }
    }
  }
  return { packed, scales, K, N, blockSize };
}

/** The [K, N] weights an Int4Weight stands for (what the kernel multiplies by). */
export function dequantizeInt4(q: Int4Weight): Float32Array {
  const { K, N, blockSize } = q;
  const kBlocks = Math.ceil(K / blockSize);
  const blob = blockSize / 2;
  const w = new Float32Array(K * N);
  for (let n = 0; n < N; n++) {
    for (let b = 0; b < kBlocks; b++) {
      const scale = q.scales[n * kBlocks + b];
      const base = (n * kBlocks + b) * blob;
      for (let i = 0; i < blockSize; i++) {
        const k = b * blockSize + i;
        if (k >= K) break;
        const byte = q.packed[base + (i >> 1)];
        const code = i % 2 === 0 ? byte & 15 : byte >> 4;
        w[k * N + n] = (code - 8) * scale;
      }
    }
  }
  return w;
}
