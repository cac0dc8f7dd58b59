/**
 * `/v1/stethoscope/jobs` (admin): list, read, cancel jobs and download their files.
 */
import { createRoute, type OpenAPIHono, z } from '@hono/zod-openapi';
import { readFileSync } from 'node:fs';
import { extname, join } from 'node:path';
import { ApiError, notFound } from '../../errors.ts';
import { errorResponses } from '../../schemas.ts';
import { jobView, JobSchema, type StethoscopeDeps } from './shared.ts';

const CONTENT_TYPES: Record<string, string> = { '.json': 'application/json', '.csv': 'text/csv', '.svg': 'image/svg+xml', '.html': 'text/html; charset=utf-8', '.jsonl': 'application/x-ndjson' };

export function jobRoutes(app: OpenAPIHono, deps: StethoscopeDeps): void {
  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/stethoscope/jobs',
      summary: 'List stethoscope jobs (admin), newest first.',
      responses: { 200: { description: 'Jobs.', content: { 'application/json': { schema: z.object({ object: z.literal('list'), data: z.array(JobSchema) }) } } }, ...errorResponses(401, 403) },
    }),
    (c) => c.json({ object: 'list' as const, data: deps.jobs.list().map((j) => jobView(deps, j)) }, 200),
  );

  const JobParam = z.object({ id: z.string().openapi({ param: { name: 'id', in: 'path' } }) });
  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/stethoscope/jobs/{id}',
      summary: 'A job: status, progress, result, output files (admin).',
      request: { params: JobParam },
      responses: { 200: { description: 'The job.', content: { 'application/json': { schema: JobSchema } } }, ...errorResponses(401, 403, 404) },
    }),
    (c) => {
      const j = deps.jobs.get(c.req.valid('param').id);
      if (!j) throw notFound(`no job "${c.req.valid('param').id}"`, 'job_not_found');
      return c.json(jobView(deps, j), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/v1/stethoscope/jobs/{id}',
      summary: 'Cancel a queued or running job (admin); its record stays, with status "cancelled" once it has stopped.',
      request: { params: JobParam },
      responses: { 202: { description: 'Cancelling.', content: { 'application/json': { schema: JobSchema } } }, ...errorResponses(401, 403, 404, 409) },
    }),
    (c) => {
      const { id } = c.req.valid('param');
      const j = deps.jobs.get(id);
      if (!j) throw notFound(`no job "${id}"`, 'job_not_found');
      if (!deps.jobs.cancel(id)) throw new ApiError(409, `job "${id}" is not running (status ${j.status})`, 'invalid_request_error', 'job_not_running', 'id');
      return c.json(jobView(deps, j), 202);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/stethoscope/jobs/{id}/files/{name}',
      summary: 'One output file of a job (JSON, CSV, SVG, HTML) (admin).',
      request: { params: JobParam.extend({ name: z.string().openapi({ param: { name: 'name', in: 'path' } }) }) },
      responses: { 200: { description: 'The file.', content: { 'application/octet-stream': { schema: z.string().openapi({ format: 'binary' }) } } }, ...errorResponses(401, 403, 404) },
    }),
    (c) => {
      const { id, name } = c.req.valid('param');
      if (!deps.jobs.get(id) || !deps.jobs.files(id).includes(name)) throw notFound(`no file "${name}" in job "${id}"`, 'file_not_found');
      c.header('Content-Type', CONTENT_TYPES[extname(name)] ?? 'application/octet-stream');
      return c.body(readFileSync(join(deps.jobs.dir(id), name))) as never;
    },
  );
}
