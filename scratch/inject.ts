import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Trainer } from '../src/engine/trainer.ts';
import { AdamW } from '../src/stethoscope/freeze.ts';
import { toFloat32 } from '../src/model/dtype.ts';
import { SafetensorsFile } from '../src/model/safetensors.ts';
function tensors(path: string) { const f = SafetensorsFile.open(path); try { return new Map(f.names.map((n) => [n, toFloat32(f.readBytes(n), f.info(n).dtype)])); } finally { f.close(); } }
const R = '/work/main/test/fixtures';
for (const [fx, model] of [['A_all4','A'],['A_oproj_norms','A'],['L_llama3_tied_oproj_norms_embed','L_llama3_tied']]) {
  const o = JSON.parse(readFileSync(join(R, 'freeze', fx, 'oracle.json'), 'utf8'));
  const tg = tensors(join(R, 'freeze', fx, 'grads.safetensors'));
  const tr = await Trainer.load(join(R, 'oracle', model), new Set(o.trainable_names), { threads: 1 });
  const opt = new AdamW(tr.params, { lr: o.lr, betas: [0.9, 0.999], eps: 1e-8, weightDecay: o.wd });
  const row = { ids: o.ids, targets: o.ids.map(() => true) };
  const losses: number[] = [];
  let swapped = 0;
  for (let s = 0; s < o.steps; s++) {
    const r = await tr.step([row]);
    if (s === 0) for (const [n, g] of r.grads) { const t = tg.get(n)!; const floor = 1e-6 * t.reduce((a, x) => Math.max(a, Math.abs(x)), 0); t.forEach((x, i) => { if (Math.abs(x) < floor) { g[i] = x; swapped++; } }); }
    if (s > 0) losses.push(r.loss);
    opt.update(r.grads);
  }
  losses.push((await tr.step([row])).loss);
  let max = 0, over = 0;
  for (const [n, w] of tensors(join(R, 'freeze', fx, 'step3.safetensors'))) { const p = tr.params.get(n)!; w.forEach((x, i) => { const d = Math.abs(x - p[i]); max = Math.max(max, d); if (d > 1e-5) over++; }); }
  console.log(fx, { swapped, max, over, lossdiff: Math.max(...losses.map((l, i) => Math.abs(l - o.losses[i]))) });
  await tr.release();
}
