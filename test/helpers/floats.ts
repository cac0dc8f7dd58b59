import { fromFloat32, toFloat32 } from '../../src/model/dtype.ts';

/** Rounds through a 16-bit dtype and back. */
export const bf16 = (x: number) => toFloat32(fromFloat32(new Float32Array([x]), 'BF16'), 'BF16')[0];
export const f16 = (x: number) => toFloat32(fromFloat32(new Float32Array([x]), 'F16'), 'F16')[0];
