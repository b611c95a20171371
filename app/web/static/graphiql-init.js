// Mounts the vendored GraphiQL (UMD globals React, ReactDOM, GraphiQL) against this server.
// Queries and mutations go over HTTP POST; subscriptions over WebSocket with the
// graphql-transport-ws protocol (graphql-ws client bundled inside graphiql.min.js).
(function () {
  "use strict";

  var container = document.getElementById("graphiql");
  var path = container.getAttribute("data-graphql-path") || "/graphql";

  var httpUrl = new URL(path, window.location.href);
  var wsUrl = new URL(path, window.location.href);
  wsUrl.protocol = httpUrl.protocol === "https:" ? "wss:" : "ws:";

  var fetcher = GraphiQL.createFetcher({
    url: httpUrl.href,
    subscriptionUrl: wsUrl.href,
  });

  var defaultQuery = [
    "# Citadel GraphQL. Ctrl-Enter (or the run button) executes.",
    "# Also try: subscription { modelDownloadProgress { model state percent } }",
    "{",
    "  health {",
    "    status",
    "    dependencies { name ok latencyMs }",
    "  }",
    "}",
    "",
  ].join("\n");

  ReactDOM.createRoot(container).render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: defaultQuery,
      defaultEditorToolsVisibility: false,
      // Headers may hold credentials; do not keep them in localStorage.
      shouldPersistHeaders: false,
    })
  );
})();
