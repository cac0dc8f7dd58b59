/**
 * The HTTP application: one OpenAPIHono app with the OpenAI routes, health, readiness, metrics and the
 * OpenAPI document, and the error handling that turns every failure into OpenAI's error body.
 */
import { createRoute, OpenAPIHono, z } from '@hono/zod-openapi';
import { bodyLimit } from 'hono/body-limit';
import { cors } from 'hono/cors';
import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { JobQueueFullError } from '../stethoscope/jobs.ts';
import { ApiError, errorResponse, fromZod, tooLarge, tooMany } from './errors.ts';
import type { Metrics } from './metrics.ts';
import { openaiRoutes, type ServingContext } from './routes/openai/index.ts';
import { pluginRoutes, type PluginDeps } from './routes/plugins.ts';
import { stethoscopeAuth, stethoscopeRoutes, type StethoscopeDeps } from './routes/stethoscope/index.ts';
import { USER_SCOPED, type AuthConfig } from './auth.ts';

export interface AppDeps {
  serving: ServingContext;
  plugins: PluginDeps;
  stethoscope: StethoscopeDeps;
  auth: AuthConfig;
  metrics: Metrics;
  maxBodyBytes: number;
  /** Origins allowed by CORS (`*` for any); none: no CORS. */
  corsOrigins?: string[];
  /** 'loading' | 'ready' | 'failed' | 'closed', for /ready. */
  state: () => string;
  version: string;
}

export const OPENAPI_INFO = {
  openapi: '3.1.0',
  info: {
    title: 'sfn',
    version: '0.1.0',
    description: 'OpenAI-compatible serving of decoder LLMs with per-request module views (plugins, merges, destruction). Errors use OpenAI\'s body: {"error": {"message", "type", "param", "code"}}.',
    license: { name: 'Apache-2.0', identifier: 'Apache-2.0' },
  },
};

export function createApp(deps: AppDeps): OpenAPIHono {
  const app = new OpenAPIHono({
    // A request that fails its schema is a 400 naming the field, in OpenAI's error body.
    defaultHook: (result, c) => {
      if (!result.success) return errorResponse(c, fromZod(result.error));
    },
  });

  app.use('*', async (c, next) => {
    await next();
    deps.metrics.httpRequests.inc({ route: c.req.routePath, status: String(c.res.status) });
  });
  // Browsers' preflights are answered before any key check (--cors-origin; none: no CORS headers at all).
  if (deps.corsOrigins?.length) {
    app.use(
      '*',
      cors({
        origin: deps.corsOrigins.includes('*') ? '*' : deps.corsOrigins,
        allowHeaders: ['Authorization', 'Content-Type'],
        allowMethods: ['GET', 'POST', 'DELETE', 'OPTIONS'],
        exposeHeaders: ['Retry-After'],
        maxAge: 600,
      }),
    );
  }
  // JSON bodies are bounded here; plugin uploads stream to disk under their own limit.
  const jsonLimit = bodyLimit({ maxSize: deps.maxBodyBytes, onError: (c) => errorResponse(c, tooLarge(`The request body exceeds ${deps.maxBodyBytes} bytes.`)) });
  for (const path of ['/v1/completions', '/v1/chat/completions', '/v1/plugins/extract', '/v1/stethoscope/*', '/tokenize', '/detokenize']) app.use(path, jsonLimit);

  openaiRoutes(app, deps.serving, deps.auth, deps.version);
  stethoscopeAuth(app, deps.auth);
  pluginRoutes(app, deps.plugins, deps.auth);
  stethoscopeRoutes(app, deps.stethoscope);

  const Status = z.object({ status: z.string() });
  app.openapi(
    createRoute({
      method: 'get',
      path: '/health',
      summary: 'Liveness: 200 while the process runs.',
      responses: { 200: { description: 'Alive.', content: { 'application/json': { schema: Status } } } },
    }),
    (c) => c.json({ status: 'ok' }, 200),
  );
  app.openapi(
    createRoute({
      method: 'get',
      path: '/ready',
      summary: 'Readiness: 200 once the backbone is loaded.',
      responses: {
        200: { description: 'Ready.', content: { 'application/json': { schema: Status } } },
        503: { description: 'Loading (or failed).', content: { 'application/json': { schema: Status } } },
      },
    }),
    (c) => {
      const state = deps.state();
      return state === 'ready' ? c.json({ status: state }, 200) : c.json({ status: state }, 503);
    },
  );
  app.openapi(
    createRoute({
      method: 'get',
      path: '/metrics',
      summary: 'Prometheus metrics (vLLM-compatible names; see docs/metrics.md).',
      responses: { 200: { description: 'Prometheus text format.', content: { 'text/plain': { schema: z.string() } } } },
    }),
    async (c) => {
      c.header('Content-Type', deps.metrics.registry.contentType);
      return c.body(await deps.metrics.registry.metrics()) as never;
    },
  );
  let document: unknown = null;
  app.get('/openapi.json', (c) => c.json((document ??= openapiDocument(app)) as object));

  app.notFound((c) => {
    // A path that exists under other methods is a 405 with Allow, as HTTP says, rather than a 404.
    const allowed = [...new Set(app.routes.filter((r) => r.method !== 'ALL' && routePattern(r.path).test(c.req.path)).map((r) => r.method))];
    if (allowed.length)
      return errorResponse(
        c,
        new ApiError(405, `${c.req.method} is not allowed on ${c.req.path}; use ${allowed.join(', ')}.`, 'invalid_request_error', 'method_not_allowed', null, { Allow: allowed.join(', ') }),
      );
    return errorResponse(c, new ApiError(404, `No route for ${c.req.method} ${c.req.path}.`, 'invalid_request_error', 'not_found'));
  });
  app.onError((err, c) => {
    if (err instanceof ApiError) return errorResponse(c, err);
    if (err instanceof JobQueueFullError) return errorResponse(c, tooMany(`no room for another job: ${err.message}`, 5));
    if (err instanceof HTTPException) {
      const status = err.status as ContentfulStatusCode;
      // hono's own wording ("Malformed JSON in request body", "Unsupported Media Type") in OpenAI's terms.
      if (status === 400 && /JSON/i.test(err.message)) return errorResponse(c, new ApiError(400, 'The request body is not valid JSON.', 'invalid_request_error', 'invalid_json'));
      if (status === 415) return errorResponse(c, new ApiError(415, 'The request body must be JSON, sent with `Content-Type: application/json`.', 'invalid_request_error', 'unsupported_media_type'));
      return errorResponse(c, new ApiError(status, err.message, status >= 500 ? 'server_error' : 'invalid_request_error'));
    }
    console.error('sfn: unhandled error', err);
    return errorResponse(c, new ApiError(500, 'Internal server error.', 'server_error'));
  });
  return app;
}

/** A hono route path (`/v1/models/:id`, `/v1/plugins/*`) as a regular expression over request paths. */
function routePattern(path: string): RegExp {
  const segment = (x: string) => (x === '*' ? '.*' : x.startsWith(':') ? '[^/]+' : x.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  return new RegExp(`^${path.split('/').map(segment).join('/')}$`);
}

/** Paths anyone may call; everything else takes a bearer key when keys are configured. */
const OPEN_PATHS = new Set(['/health', '/ready', '/metrics', '/openapi.json', '/version']);

/** The key scope an operation needs, as the routes' middleware enforces it. */
function scopeOf(method: string, path: string): 'none' | 'user' | 'admin' {
  if (OPEN_PATHS.has(path)) return 'none';
  if (path.startsWith('/v1/stethoscope/')) return USER_SCOPED.has(`${method.toUpperCase()} ${path}`) ? 'user' : 'admin';
  if (path.startsWith('/v1/plugins')) return method === 'get' ? 'user' : 'admin';
  return 'user';
}

/**
 * The OpenAPI document as the running server serves it (also written to openapi/openapi.json), with bearer
 * security per operation (and the scope it needs as `x-sfn-scope`), an operationId for every operation, and the
 * server it describes.
 */
export function openapiDocument(app: OpenAPIHono): unknown {
  const doc = app.getOpenAPI31Document(OPENAPI_INFO) as unknown as { paths: Record<string, Record<string, Record<string, unknown>>>; components?: Record<string, unknown>; servers?: unknown };
  doc.servers = [{ url: '/', description: 'The sfn server that serves this document.' }];
  doc.components = {
    ...doc.components,
    securitySchemes: {
      bearerAuth: {
        type: 'http',
        scheme: 'bearer',
        description: 'An API key (--api-key, --admin-key). A user key generates and reads; an admin key also writes plugins and runs stethoscopes. With no keys configured, none is checked.',
      },
    },
  };
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const scope = scopeOf(method, path);
      // e.g. post /v1/stethoscope/jobs/{id} -> postV1StethoscopeJobsById
      op.operationId ??=
        method +
        path
          .split('/')
          .filter(Boolean)
          .map((s) => (s.startsWith('{') ? `By${s[1].toUpperCase()}${s.slice(2, -1)}` : s.replace(/(^|[-_.])(\w)/g, (_m, _p, c: string) => c.toUpperCase())))
          .join('');
      op.security = scope === 'none' ? [] : [{ bearerAuth: [] }];
      op['x-sfn-scope'] = scope;
    }
  }
  return doc;
}
