/** Checks a response body against the schema the OpenAPI document gives for that operation and status. */
import assert from 'node:assert/strict';
import { Ajv2020 } from 'ajv/dist/2020.js';

type Doc = { paths: Record<string, Record<string, { responses: Record<string, { content?: Record<string, { schema: unknown }> }> }>>; components: unknown };

/** `check(method, path, status, body)`: fails naming the operation and the first schema errors. */
export function responseChecker(doc: Doc) {
  const ajv = new Ajv2020({ allErrors: true, strict: false });
  // Component references resolve against the document itself.
  ajv.addSchema({ $id: 'sfn-openapi', components: doc.components });
  const rebase = (s: unknown): unknown =>
    Array.isArray(s)
      ? s.map(rebase)
      : s && typeof s === 'object'
        ? Object.fromEntries(Object.entries(s).map(([k, v]) => [k, k === '$ref' && typeof v === 'string' && v.startsWith('#/') ? `sfn-openapi${v}` : rebase(v)]))
        : s;
  return (method: string, path: string, status: number, body: unknown) => {
    const schema = doc.paths[path]?.[method]?.responses[String(status)]?.content?.['application/json']?.schema;
    assert.ok(schema, `the document has no JSON response ${status} for ${method.toUpperCase()} ${path}`);
    const validate = ajv.compile(rebase(schema) as object);
    assert.ok(validate(body), `${method.toUpperCase()} ${path} ${status} does not match its documented schema: ${ajv.errorsText(validate.errors)}`);
  };
}
