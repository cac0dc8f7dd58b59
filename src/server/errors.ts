/**
 * OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with the right HTTP status. Every
 * failure the server reports goes through `ApiError`, so clients written for OpenAI read them unchanged.
 */
import { existsSync } from 'node:fs';
import { basename, relative, sep } from 'node:path';
import type { Context } from 'hono';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import type { z } from 'zod';

export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export class ApiError extends Error {
  readonly status: ContentfulStatusCode;
  readonly type: string;
  readonly code: string | null;
  readonly param: string | null;
  readonly headers: Record<string, string>;
  constructor(status: ContentfulStatusCode, message: string, type: string, code: string | null = null, param: string | null = null, headers: Record<string, string> = {}) {
    super(message);
    this.status = status;
    this.type = type;
    this.code = code;
    this.param = param;
    this.headers = headers;
  }

  body(): ErrorBody {
    return { error: { message: redactPaths(this.message), type: this.type, param: this.param, code: this.code } };
  }
}

/** Directories whose files errors name relative to them (model roots, the data dir), set by the server at start. */
let namedRoots: string[] = [];
export function setErrorRoots(dirs: string[]): void {
  // Longest first, so that a root inside another names its files from the inner one.
  namedRoots = dirs.map((d) => d.replace(/\/+$/, '')).sort((a, b) => b.length - a.length);
}

const topLevel = new Map<string, boolean>();
/** Whether `/x` exists on this machine: tells a file path from a URL path like /v1/completions. */
const onDisk = (segment: string) => {
  let v = topLevel.get(segment);
  if (v === undefined) topLevel.set(segment, (v = existsSync(`/${segment}`)));
  return v;
};

/**
 * A message with every absolute file path replaced by its name relative to the root it lies under (what a
 * request names), or by its base name: errors never tell a client where the server keeps its files.
 */
export function redactPaths(message: string): string {
  return message.replace(/(?<![\w.:/~-])\/[^\s"'`,;()<>]+/g, (path) => {
    const first = path.slice(1).split('/')[0];
    if (!first || !onDisk(first)) return path;
    const trimmed = path.replace(/[.:]+$/, '');
    const tail = path.slice(trimmed.length);
    for (const root of namedRoots) {
      if (trimmed === root) return `${basename(root)}${tail}`;
      if (trimmed.startsWith(root + sep)) return `${relative(root, trimmed)}${tail}`;
    }
    return `${basename(trimmed)}${tail}`;
  });
}

export const badRequest = (message: string, param: string | null = null, code: string | null = null) => new ApiError(400, message, 'invalid_request_error', code, param);
export const notFound = (message: string, code = 'not_found') => new ApiError(404, message, 'invalid_request_error', code);
export const modelNotFound = (model: string) => new ApiError(404, `The model \`${model}\` does not exist.`, 'invalid_request_error', 'model_not_found', 'model');
export const unauthorized = (message: string) => new ApiError(401, message, 'authentication_error', 'invalid_api_key', null, { 'WWW-Authenticate': 'Bearer' });
export const forbidden = (message: string) => new ApiError(403, message, 'permission_error', 'insufficient_scope');
export const tooMany = (message: string, retryAfter: number) => new ApiError(429, message, 'rate_limit_error', 'queue_full', null, { 'Retry-After': String(retryAfter) });
export const unavailable = (message: string, retryAfter = 5) => new ApiError(503, message, 'service_unavailable', 'model_loading', null, { 'Retry-After': String(retryAfter) });
export const tooLarge = (message: string) => new ApiError(413, message, 'invalid_request_error', 'payload_too_large');

export function errorResponse(c: Context, e: ApiError): Response {
  for (const [k, v] of Object.entries(e.headers)) c.header(k, v);
  return c.json(e.body(), e.status);
}

/** A zod failure as a 400 naming the first offending field by its path (e.g. `messages.0.role`). */
export function fromZod(error: z.ZodError): ApiError {
  // An unknown field first: a misspelt "layer" also leaves "layers" missing, and the typo is the cause.
  const issue = error.issues.find((i) => i.code === 'unrecognized_keys') ?? error.issues[0];
  if (issue.code === 'unrecognized_keys') {
    // A misspelt field would otherwise run another experiment than the one asked for: name it.
    const field = [...issue.path.map(String), issue.keys[0]].join('.');
    const more =
      issue.keys.length > 1
        ? ` (and ${issue.keys
            .slice(1)
            .map((k) => `"${k}"`)
            .join(', ')})`
        : '';
    return badRequest(`${field}: unknown field${more}`, field, 'unknown_field');
  }
  const path = issue.path.map(String).join('.');
  return badRequest(path ? `${path}: ${issue.message}` : issue.message, path || null);
}

/** An input error from the library layers (they name the offending field as `param`) as a 400; anything else as it is. */
export function asBadRequest(e: unknown): unknown {
  if (e instanceof ApiError) return e;
  if (e instanceof Error && 'param' in e && typeof e.param === 'string') return badRequest(e.message, e.param);
  return e;
}
