// Citadel dashboard, jobs: running and recent jobs (startIngestJob, ingestFiles) beside the downloads.
//
// Data: one `jobs` query over HTTP for the recent ones, then the `jobProgress` subscription (every
// job the key may read) over WebSocket through the vendored graphql-ws client: each event is a
// job's whole state, sent first as it stands and then on every change, from whichever replica runs
// it. An event older than what a row shows (updatedAt) is ignored.
//
// Keys: the same API key as the downloads (sessionStorage "citadel-api-key", asked for by
// dashboard.js); when that form is submitted this part connects again with the new key.
(function () {
  "use strict";

  var FIELDS =
    "id kind collection state documentsTotal documentsDone documentsFailed chunksDone bytesTotal bytesDone " +
    "percent documentsPerSecond message replica updatedAt finishedAt";
  var JOBS_QUERY = "query DashboardJobs { jobs(first: 20) { " + FIELDS + " } }";
  var JOBS_SUBSCRIPTION = "subscription DashboardJobProgress { jobProgress { " + FIELDS + " } }";
  var KEY_STORAGE = "citadel-api-key";
  var MAX_SHOWN = 20;

  var root = document.getElementById("dashboard");
  var list = document.getElementById("jobs");
  var empty = document.getElementById("jobs-empty");
  var keyForm = document.getElementById("key-form");
  if (!root || !list) return;

  var graphqlPath = root.getAttribute("data-graphql-path") || "/graphql";
  var httpUrl = new URL(graphqlPath, window.location.href);
  var wsUrl = new URL(graphqlPath, window.location.href);
  wsUrl.protocol = httpUrl.protocol === "https:" ? "wss:" : "ws:";

  var rows = new Map(); // job id -> { job, view }
  var client = null;
  var unsubscribe = null;

  function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  }

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function count(n) {
    return n === null || n === undefined ? "?" : Number(n).toLocaleString();
  }

  function fact(dl, label) {
    var wrap = element("div");
    wrap.appendChild(element("dt", "", label));
    var value = element("dd");
    wrap.appendChild(value);
    dl.appendChild(wrap);
    return value;
  }

  function createView(job) {
    var card = element("article", "job");
    card.setAttribute("data-job", job.id);
    var header = element("header", "model-header");
    var title = element("h2", "model-name", job.kind === "REINDEX" ? job.collection + " (reindex)" : job.collection);
    var id = element("span", "replica", job.id.slice(0, 8));
    id.title = job.id;
    var state = element("span", "state");
    header.appendChild(title);
    header.appendChild(id);
    header.appendChild(state);
    var progress = element("div", "progress");
    progress.setAttribute("role", "progressbar");
    progress.setAttribute("aria-valuemin", "0");
    progress.setAttribute("aria-valuemax", "100");
    progress.setAttribute("aria-label", "Documents of job " + job.id + " on " + job.collection);
    var fill = element("div", "progress-fill");
    progress.appendChild(fill);
    var facts = element("dl", "facts");
    var view = {
      card: card, state: state, progress: progress, fill: fill,
      documents: fact(facts, "Documents"), failed: fact(facts, "Failed"), chunks: fact(facts, "Vector points"),
      rate: fact(facts, "Rate"), replica: fact(facts, "Replica"), message: fact(facts, "Message"),
    };
    card.appendChild(header);
    card.appendChild(progress);
    card.appendChild(facts);
    return view;
  }

  function render(row) {
    var job = row.job;
    var view = row.view;
    view.card.setAttribute("data-state", job.state);
    view.state.setAttribute("data-state", job.state);
    view.state.textContent = job.state;
    var percent = job.percent;
    view.progress.classList.toggle("indeterminate", percent === null || percent === undefined);
    var shown = percent === null || percent === undefined ? 0 : Math.max(0, Math.min(100, percent));
    view.fill.style.width = shown + "%";
    view.progress.setAttribute("aria-valuenow", String(Math.round(shown)));
    view.documents.textContent = count(job.documentsDone) + " of " + count(job.documentsTotal) +
      (percent === null || percent === undefined ? "" : " (" + percent.toFixed(1) + "%)");
    view.failed.textContent = count(job.documentsFailed);
    view.chunks.textContent = count(job.chunksDone);
    view.rate.textContent = job.documentsPerSecond ? job.documentsPerSecond.toFixed(1) + " documents/s" : "–";
    view.replica.textContent = job.replica;
    view.message.textContent = job.message || "–";
  }

  function apply(job) {
    var row = rows.get(job.id);
    if (row && row.job.updatedAt > job.updatedAt) return; // an older event than what is shown
    if (!row) {
      row = { job: job, view: createView(job) };
      rows.set(job.id, row);
    }
    row.job = job;
    render(row);
    place();
  }

  // Newest first; running and queued ones above those that ended; at most MAX_SHOWN.
  function place() {
    var ordered = Array.from(rows.values()).sort(function (a, b) {
      var activeA = a.job.finishedAt ? 1 : 0;
      var activeB = b.job.finishedAt ? 1 : 0;
      if (activeA !== activeB) return activeA - activeB;
      return a.job.updatedAt < b.job.updatedAt ? 1 : -1;
    });
    ordered.slice(MAX_SHOWN).forEach(function (row) {
      rows.delete(row.job.id);
      row.view.card.remove();
    });
    ordered.slice(0, MAX_SHOWN).forEach(function (row) {
      list.appendChild(row.view.card); // appendChild moves an existing node into order
    });
    empty.hidden = rows.size > 0;
  }

  function load() {
    var headers = { "Content-Type": "application/json", Accept: "application/json" };
    if (apiKey()) headers.Authorization = "Bearer " + apiKey();
    return fetch(httpUrl.href, { method: "POST", headers: headers, body: JSON.stringify({ query: JOBS_QUERY }) })
      .then(function (response) { return response.json(); })
      .then(function (body) {
        if (body.data && body.data.jobs) body.data.jobs.forEach(apply);
      })
      .catch(function () { /* the downloads part shows connection problems */ });
  }

  function subscribe() {
    if (typeof graphqlWs === "undefined") return;
    client = graphqlWs.createClient({
      url: wsUrl.href,
      connectionParams: function () {
        return apiKey() ? { authorization: "Bearer " + apiKey() } : {};
      },
      keepAlive: 10000,
      retryAttempts: Infinity,
      shouldRetry: function () { return true; },
      retryWait: function (retries) {
        return new Promise(function (resolve) { setTimeout(resolve, Math.min(15000, 500 * Math.pow(2, retries))); });
      },
    });
    unsubscribe = client.subscribe(
      { query: JOBS_SUBSCRIPTION },
      {
        next: function (result) {
          if (result.data && result.data.jobProgress) apply(result.data.jobProgress);
        },
        error: function () {},
        complete: function () {},
      }
    );
  }

  function start() {
    if (unsubscribe) unsubscribe();
    if (client) client.dispose();
    client = null;
    unsubscribe = null;
    load().then(subscribe);
  }

  if (keyForm) keyForm.addEventListener("submit", function () { setTimeout(start, 0); });
  start();
})();
