/**
 * `POST /v1/stethoscope/destruction` (admin): destruction probes, sweeps and the destruction table (Table 3).
 */
import { createRoute, OpenAPIHono, z } from '@hono/zod-openapi';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DestroySpec } from '../../../views/spec.ts';
import { ApiError, badRequest } from '../../errors.ts';
import { renderSvg, sweepSpec } from '../../../stethoscope/plots.ts';
import { DEFAULT_THRESHOLDS, type LevelThresholds } from '../../../stethoscope/levels.ts';
import { ProbePrompt } from '../../../stethoscope/probe.ts';
import { destructionMarkdown, destructionRows, destructionTable, DestructionTableSpec, writeDestructionTable } from '../../../stethoscope/tables.ts';
import { serverLab } from '../../lab.ts';
import { errorResponses } from '../../schemas.ts';
import { compare, jobView, Thresholds, Scorer, JobSchema, type StethoscopeDeps } from './shared.ts';
import { ready } from '../openai/shared.ts';

const DestructionBody = z
  .strictObject({
    model: z.string().optional().openapi({ description: 'The backbone (default) or `backbone:plugin-id`: the intact view.' }),
    destroy: DestroySpec.optional(),
    prompts: z.array(ProbePrompt).min(1).max(64).optional(),
    max_tokens: z.number().int().min(1).max(4096).default(64),
    thresholds: Thresholds.optional(),
    scorer: Scorer,
    table: DestructionTableSpec.optional().describe(
      "Table mode (a job): the paper's Table 3. For every method x module kind, each prompt's greedy output over the destroyed layers, judged with levels; `remove` is one row.",
    ),
    sweep: z
      .strictObject({
        method: z.enum(['zero', 'reinit', 'remove']),
        modules: z.array(z.string()).default([]).openapi({ description: 'Module kinds (rows of the heatmap); ignored by remove.' }),
        window: z.number().int().min(1).default(4),
        stride: z.number().int().min(1).optional(),
        text: z.string().min(1).optional().openapi({ description: 'Reference text: the damage is measured on its next-token distributions.' }),
        ids: z.array(z.number().int().min(0)).min(2).max(512).optional().openapi({ description: 'Or the reference as token ids.' }),
        seed: z.number().int().min(0).default(0),
      })
      .optional()
      .openapi({ description: 'Sweep mode (a job): every module kind x layer window, damage = mean KL(intact || destroyed).' }),
  })
  .openapi('DestructionRequest');

export function destructionRoutes(app: OpenAPIHono, deps: StethoscopeDeps): void {
  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/stethoscope/destruction',
      summary: 'Destruction probe (admin): prompts through the intact and the destroyed view, both outputs with levels I-IV and their metrics; or a sweep job.',
      request: { body: { content: { 'application/json': { schema: DestructionBody } }, required: true } },
      responses: {
        200: { description: 'Outputs and levels.', content: { 'application/json': { schema: z.any() } } },
        202: { description: 'Sweep started: a job.', content: { 'application/json': { schema: JobSchema } } },
        ...errorResponses(400, 401, 403, 404, 429, 503),
      },
    }),
    async (c) => {
      const body = c.req.valid('json');
      const tok = ready(deps.serving);
      const model = body.model ?? deps.backboneName;
      const intact = deps.resolveView(model);
      const thresholds: LevelThresholds = { ...DEFAULT_THRESHOLDS, ...body.thresholds };

      if (body.sweep) {
        const sw = body.sweep;
        if ((sw.text === undefined) === (sw.ids === undefined)) throw badRequest('sweep: give exactly one of "text" and "ids"', 'sweep.text');
        const ids = sw.ids ?? tok.encodePrompt(sw.text!).slice(0, 512);
        if (ids.length < 2) throw badRequest('sweep.text: needs at least 2 tokens', 'sweep.text');
        const bad = ids.find((id) => id >= deps.serving.vocabSize());
        if (bad !== undefined) throw badRequest(`sweep.ids: token id ${bad} is outside the vocabulary`, 'sweep.ids');
        const L = deps.host.spec!.numLayers;
        const stride = sw.stride ?? sw.window;
        const windows: [number, number][] = [];
        for (let s0 = 0; s0 < L; s0 += stride) windows.push([s0, Math.min(L - 1, s0 + sw.window - 1)]);
        const rows = sw.method === 'remove' ? ['layers'] : sw.modules;
        if (!rows.length) throw badRequest('sweep.modules: name the module kinds to sweep', 'sweep.modules');
        // Resolve every view now, so a bad spec is a 400 rather than a failed job.
        const grid = rows.map((kind) =>
          windows.map(([a, b]) => deps.resolveView(model, { destroy: [{ method: sw.method, modules: sw.method === 'remove' ? [] : [kind], layers: `${a}-${b}`, seed: sw.seed }] })),
        );
        const job = deps.jobs.start('destruction-sweep', body, async (_job, dir, progress) => {
          const cells: { module: string; layers: string; start: number; kl: number }[] = [];
          for (let r = 0; r < rows.length; r++) {
            const kls = await deps.host.kl(ids, intact, grid[r]);
            kls.forEach((v, w) => cells.push({ module: rows[r], layers: `${windows[w][0]}-${windows[w][1]}`, start: windows[w][0], kl: v }));
            progress(r + 1, rows.length, rows[r]);
          }
          const result = { method: sw.method, window: sw.window, stride, tokens: ids.length, score: 'mean KL(intact || destroyed), nats', cells };
          writeFileSync(join(dir, 'sweep.json'), JSON.stringify(result, null, 1));
          writeFileSync(join(dir, 'sweep.svg'), await renderSvg(sweepSpec(result)));
          return result;
        });
        return c.json(jobView(deps, job), 202) as never;
      }

      if (body.table) {
        if (body.destroy || body.sweep || body.prompts) throw badRequest('"table" carries its own prompts and destructions; give it alone', 'table');
        const t = body.table;
        t.prompts.forEach((p, i) => {
          if ((p.prompt === undefined) === (p.messages === undefined)) throw badRequest(`table.prompts.${i}: give exactly one of "prompt" and "messages"`, `table.prompts.${i}`);
        });
        // Resolve every row's view now, so a bad spec is a 400 rather than a failed job.
        const rows = destructionRows(t).map((r) => {
          try {
            return deps.resolveView(model, { destroy: r.destroy });
          } catch (e) {
            if (e instanceof ApiError && e.param?.startsWith('destroy.0.')) throw badRequest(e.message.replace(/^destroy\.0\./, 'table.'), e.param.replace(/^destroy\.0\./, 'table.'));
            throw e;
          }
        });
        const job = deps.jobs.start('destruction-table', body, async (_job, dir, progress, signal) => {
          const table = await destructionTable(serverLab(deps.serving.runner, signal, { wait: true }), tok, t, { intact, rows }, { maxTokens: body.max_tokens, thresholds, scorer: body.scorer, progress });
          await writeDestructionTable(table, dir);
          return { markdown: destructionMarkdown(table), rows: table.rows.map((r) => ({ method: r.method, module: r.module, levels: r.outputs.map((o) => o.level) })), intact: table.intact.map((o) => o.level) };
        });
        return c.json(jobView(deps, job), 202) as never;
      }
      if (!body.destroy) throw badRequest('give "destroy" (or "sweep" or "table")', 'destroy');
      if (!body.prompts) throw badRequest('give "prompts"', 'prompts');
      const destroyed = deps.resolveView(model, { destroy: body.destroy });
      const results = await compare(deps, intact, destroyed, body.prompts, { maxTokens: body.max_tokens, thresholds, scorer: body.scorer, label: 'destroyed' }, c.req.raw.signal);
      return c.json({ object: 'stethoscope.destruction', model, destroy: body.destroy, thresholds, results }, 200) as never;
    },
  );

}
