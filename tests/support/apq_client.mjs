// Apollo Client's PersistedQueryLink against live Citadel replicas (tests/e2e/test_frontend_graphql.py).
//
//   node apq_client.mjs '{"urls": [A, B], "key": "...", "query": "query Q { ... }"}'
//
// Runs the query through three fresh clients, each recording every HTTP exchange it makes:
//   first  (replica A, POST): hash only -> PersistedQueryNotFound -> retried with the text -> data
//   second (replica B, POST): a new client, the hash alone is enough (stored by A, shared)
//   get    (replica B, GET):  useGETForHashedQueries, the hash in the URL
// Prints one JSON line: {first: {data, errors, exchanges}, second: ..., get: ...}.
import { createHash } from "node:crypto";
import { ApolloClient, HttpLink, InMemoryCache, gql } from "@apollo/client/core/index.js";
import { createPersistedQueryLink } from "@apollo/client/link/persisted-queries/index.js";

const { urls, key, query } = JSON.parse(process.argv[2]);
const sha256 = (text) => createHash("sha256").update(text).digest("hex");

function recordingFetch(exchanges) {
  return async (url, options) => {
    const response = await fetch(url, options);
    const body = await response.clone().text();
    const sent = options.body ? JSON.parse(options.body) : Object.fromEntries(new URL(url).searchParams);
    exchanges.push({ method: options.method || "GET", sent, status: response.status, received: JSON.parse(body) });
    return response;
  };
}

async function run(url, useGET) {
  const exchanges = [];
  const headers = key ? { authorization: `Bearer ${key}` } : {};
  const link = createPersistedQueryLink({ sha256, useGETForHashedQueries: useGET }).concat(
    new HttpLink({ uri: url, headers, fetch: recordingFetch(exchanges) }),
  );
  const client = new ApolloClient({ link, cache: new InMemoryCache() });
  try {
    const result = await client.query({ query: gql(query), fetchPolicy: "network-only" });
    return { data: result.data, errors: result.errors ?? null, exchanges };
  } catch (error) {
    return { data: null, errors: [String(error.message)], exchanges };
  }
}

const first = await run(urls[0], false);
const second = await run(urls[1], false);
const get = await run(urls[1], true);
console.log(JSON.stringify({ first, second, get }));
