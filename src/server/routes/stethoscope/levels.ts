/**
 * `POST /v1/stethoscope/levels` (admin): levels I-IV for outputs produced anywhere (another server, a paper's
 * appendix, a hand-written example), judged exactly as probes and evaluations judge their own: NLL and PMI under
 * the scoring model (the backbone by default, or the view that `model` / `merge` / `destroy` describe).
 */
import { createRoute, type OpenAPIHono, z } from '@hono/zod-openapi';
import { DEFAULT_THRESHOLDS } from '../../../stethoscope/levels.ts';
import { judgeItems, LevelItem } from '../../../stethoscope/probe.ts';
import { DestroySpec, MergeSpec } from '../../../views/spec.ts';
import { asBadRequest } from '../../errors.ts';
import { errorResponses } from '../../schemas.ts';
import { Thresholds, type StethoscopeDeps, engineClient, VerdictSchema } from './shared.ts';
import { ready } from '../openai/shared.ts';

const LevelsBody = z
  .strictObject({
    items: z.array(LevelItem).min(1).max(1000).describe('Outputs to judge: {prompt | messages, output, answer?}.'),
    thresholds: Thresholds.optional(),
    model: z.string().optional().openapi({ description: 'The scoring model: the backbone (default) or `backbone:plugin-id`.' }),
    merge: MergeSpec.nullish().describe('Score under this merge of the scoring model instead.'),
    destroy: DestroySpec.nullish().describe('Score under this destruction of the scoring model instead.'),
  })
  .openapi('LevelsRequest');

const LevelsResponse = z
  .object({
    object: z.literal('stethoscope.levels'),
    scorer: z.object({ model: z.string(), view: z.string(), overlays: z.array(z.record(z.string(), z.unknown())) }),
    thresholds: z.record(z.string(), z.number()),
    results: z.array(VerdictSchema),
  })
  .openapi('LevelsResponse');

export function levelsRoutes(app: OpenAPIHono, deps: StethoscopeDeps): void {
  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/stethoscope/levels',
      summary: 'Levels I-IV for given outputs (admin), scored as probes and evaluations score their own.',
      request: { body: { content: { 'application/json': { schema: LevelsBody } }, required: true } },
      responses: { 200: { description: 'One verdict per item, in order.', content: { 'application/json': { schema: LevelsResponse } } }, ...errorResponses(400, 401, 403, 404, 429, 503) },
    }),
    async (c) => {
      const body = c.req.valid('json');
      const tok = ready(deps.serving);
      const model = body.model ?? deps.backboneName;
      const view = deps.resolveView(model, { merge: body.merge, destroy: body.destroy });
      const thresholds = { ...DEFAULT_THRESHOLDS, ...body.thresholds };
      let results;
      try {
        results = await judgeItems(engineClient(deps, c.req.raw.signal, { wait: false }), tok, view, body.items, thresholds);
      } catch (e) {
        throw asBadRequest(e);
      }
      return c.json({ object: 'stethoscope.levels' as const, scorer: { model, view: view.trace!.view, overlays: view.trace!.overlays }, thresholds: { ...thresholds }, results }, 200) as never;
    },
  );
}
