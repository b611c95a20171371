// The graphql-sse client (distinct connections mode) against a live Citadel (tests/e2e/test_frontend_graphql.py).
//
//   node sse_client.mjs '{"url": ..., "key": "..." or null, "query": "subscription { ... }", "variables": {...}}'
//
// Prints one JSON line: {"first": <the first result>} or {"error": <why the subscription failed>}.
import { createClient } from "graphql-sse";

const { url, key, query, variables } = JSON.parse(process.argv[2]);
const client = createClient({ url, headers: key ? { authorization: `Bearer ${key}` } : {}, retryAttempts: 0 });
const results = client.iterate({ query, variables: variables ?? {} });
try {
  const { value, done } = await results.next();
  console.log(JSON.stringify(done ? { error: "completed before any result" } : { first: value }));
} catch (error) {
  const detail = error instanceof Response ? `HTTP ${error.status}: ${await error.text()}` : String(error?.message ?? error);
  console.log(JSON.stringify({ error: detail }));
} finally {
  await results.return?.();
  client.dispose();
}
