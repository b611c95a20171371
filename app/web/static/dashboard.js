// Citadel model download dashboard: one row per model and replica of the cluster.
//
// Data: one `models` query over HTTP for the starting picture, then the
// `modelDownloadProgress` subscription over WebSocket (graphql-transport-ws, through the
// vendored graphql-ws client), which first replays every model's current state and then
// streams events. Events are authoritative: the query never overwrites what an event said.
//
// Event bytes: with `file` set, bytesDone/bytesTotal describe that file and the model bar uses
// modelBytesDone/modelBytesTotal if the subscription selects them, else the sum over the files
// seen so far; with `file` null they describe the whole model.
//
// Keys: when the server answers UNAUTHENTICATED (or closes the socket with 4401), a form asks
// for an API key; it is kept in sessionStorage (this tab only) and sent as a Bearer header on
// HTTP and in the connection_init payload on the WebSocket.
(function () {
  "use strict";

  var MODELS_QUERY =
    "query DashboardModels { models { name replica fallbackFor " +
    "replicas { replica state attempts maxAttempts bytesDone bytesTotal lastError } } }";
  var PROGRESS_SUBSCRIPTION =
    "subscription DashboardProgress { modelDownloadProgress { " +
    "model replica state attempt maxAttempts file bytesDone bytesTotal percent bytesPerSecond message at } }";

  var BACKOFF_FIRST_MS = 500;
  var BACKOFF_MAX_MS = 15000;
  var ERROR_STATES = { RETRYING: true, FAILED: true };
  var ACTIVE_STATES = { QUEUED: true, DOWNLOADING: true, RETRYING: true, VERIFYING: true, LOADING: true };

  var root = document.getElementById("dashboard");
  var list = document.getElementById("models");
  var empty = document.getElementById("empty");
  var loadError = document.getElementById("load-error");
  var connection = document.getElementById("connection");
  var connectionText = document.getElementById("connection-text");
  var keyForm = document.getElementById("key-form");
  var keyInput = document.getElementById("key-input");
  var keyMessage = document.getElementById("key-message");
  var KEY_STORAGE = "citadel-api-key";
  var apiKey = sessionStorage.getItem(KEY_STORAGE) || "";

  var graphqlPath = root.getAttribute("data-graphql-path") || "/graphql";
  var httpUrl = new URL(graphqlPath, window.location.href);
  var wsUrl = new URL(graphqlPath, window.location.href);
  wsUrl.protocol = httpUrl.protocol === "https:" ? "wss:" : "ws:";

  var models = new Map(); // model + "\n" + replica -> record (data + its DOM view)
  var nextId = 0;

  // ---------- formatting ----------

  function formatBytes(n) {
    if (n === null || n === undefined) return "?";
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return (i === 0 ? String(n) : n.toFixed(1)) + " " + units[i];
  }

  function formatDuration(seconds) {
    if (!isFinite(seconds) || seconds < 0) return "";
    if (seconds < 60) return Math.ceil(seconds) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.round(seconds % 60) + " s";
    return Math.floor(seconds / 3600) + " h " + Math.round((seconds % 3600) / 60) + " min";
  }

  function clampPercent(p) {
    return Math.max(0, Math.min(100, p));
  }

  // Bytes win over the server's `percent` when both are known; null means "size unknown".
  function percentOf(done, total, percent) {
    if (total) return clampPercent((100 * done) / total);
    if (percent !== null && percent !== undefined) return clampPercent(percent);
    return null;
  }

  // ---------- DOM building blocks ----------

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function progressBar(label) {
    var bar = el("div", "progress");
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-label", label);
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.appendChild(el("div", "progress-fill"));
    return bar;
  }

  function setProgress(bar, percent, valueText) {
    var fill = bar.firstChild;
    if (percent === null) {
      // Indeterminate: ARIA says leave aria-valuenow out.
      bar.removeAttribute("aria-valuenow");
      bar.classList.add("indeterminate");
      fill.style.width = "";
    } else {
      var rounded = Math.round(percent * 10) / 10;
      bar.setAttribute("aria-valuenow", String(rounded));
      bar.classList.remove("indeterminate");
      fill.style.width = rounded + "%";
    }
    bar.setAttribute("aria-valuetext", valueText);
  }

  function fact(dl, label, className) {
    var row = el("div", className);
    row.appendChild(el("dt", "", label));
    var value = el("dd");
    row.appendChild(value);
    row.hidden = true;
    dl.appendChild(row);
    return { row: row, value: value };
  }

  function setFact(f, text) {
    f.row.hidden = !text;
    f.value.textContent = text || "";
  }

  function createView(name, replica) {
    var id = "model-" + nextId++;
    var article = el("article", "model");
    article.setAttribute("data-model", name);
    article.setAttribute("data-replica", replica);
    article.setAttribute("aria-labelledby", id + "-name");

    var header = el("div", "model-header");
    var title = el("h2", "model-name", name);
    title.id = id + "-name";
    var where = el("span", "replica", replica ? "on " + replica : "");
    var state = el("span", "state");
    header.appendChild(title);
    header.appendChild(where);
    header.appendChild(state);

    var label = name + (replica ? " on " + replica : "");
    var bar = progressBar("Download progress of " + label);
    var facts = el("dl", "facts");
    var files = el("ul", "files");
    files.setAttribute("aria-label", "Files of " + name);
    files.hidden = true;

    article.appendChild(header);
    article.appendChild(bar);
    article.appendChild(facts);
    article.appendChild(files);
    // Rows of one model stay together, whatever order their replicas report in.
    var siblings = list.querySelectorAll("article.model");
    var after = null;
    siblings.forEach(function (node) {
      if (node.getAttribute("data-model") === name) after = node;
    });
    list.insertBefore(article, after ? after.nextSibling : null);
    empty.hidden = true;

    return {
      article: article,
      state: state,
      bar: bar,
      files: files,
      fileViews: new Map(),
      progress: fact(facts, "Progress", "fact-progress"),
      attempt: fact(facts, "Attempt", "fact-attempt"),
      speed: fact(facts, "Speed", "fact-speed"),
      eta: fact(facts, "Remaining", "fact-eta"),
      fallback: fact(facts, "Fallback for", "fact-fallback"),
      message: fact(facts, "Status", "fact-message"),
      lastError: fact(facts, "Last error", "last-error"),
    };
  }

  function createFileView(view, modelName, file) {
    var item = el("li", "file");
    item.setAttribute("data-file", file);
    var name = el("span", "file-name", file);
    name.title = file;
    var bar = progressBar("Progress of " + file + " (" + modelName + ")");
    var detail = el("span", "file-detail");
    item.appendChild(name);
    item.appendChild(bar);
    item.appendChild(detail);
    view.files.appendChild(item);
    view.files.hidden = false;
    return { item: item, bar: bar, detail: detail };
  }

  // ---------- model records ----------

  function record(name, replica) {
    replica = replica || "";
    var key = name + "\n" + replica;
    var m = models.get(key);
    if (!m) {
      m = {
        name: name,
        replica: replica,
        state: "NOT_DOWNLOADED",
        attempt: 0,
        maxAttempts: 0,
        bytesDone: 0,
        bytesTotal: null,
        percent: null,
        bytesPerSecond: null,
        message: null,
        lastError: null,
        fallbackFor: null,
        seenEvent: false,
        files: new Map(), // file -> {bytesDone, bytesTotal, percent, bytesPerSecond}
        view: createView(name, replica),
      };
      models.set(key, m);
    }
    return m;
  }

  function applyModelRow(row) {
    row.replicas.forEach(function (r) {
      var m = record(row.name, r.replica);
      if (!m.seenEvent) {
        m.state = r.state;
        m.attempt = r.attempts;
        m.maxAttempts = r.maxAttempts;
        m.bytesDone = r.bytesDone;
        m.bytesTotal = r.bytesTotal;
      }
      if (r.lastError) m.lastError = r.lastError;
      if (r.replica === row.replica) m.fallbackFor = row.fallbackFor; // known for the answering replica
      render(m);
    });
  }

  function applyEvent(ev) {
    var m = record(ev.model, ev.replica);
    // A new download after READY/FAILED starts from scratch: drop the old file bars.
    if (ev.state === "QUEUED" && m.state !== "QUEUED") clearFiles(m);
    m.seenEvent = true;
    m.state = ev.state;
    m.attempt = ev.attempt;
    m.maxAttempts = ev.maxAttempts;
    m.bytesPerSecond = ev.bytesPerSecond;
    m.message = ev.message;
    if (ev.message && ERROR_STATES[ev.state]) m.lastError = ev.message;

    if (ev.file) {
      m.files.set(ev.file, {
        bytesDone: ev.bytesDone,
        bytesTotal: ev.bytesTotal,
        percent: ev.percent,
        bytesPerSecond: ev.bytesPerSecond,
      });
      if (ev.modelBytesDone !== undefined) {
        // The server's own model totals, when the schema exposes them.
        m.bytesDone = ev.modelBytesDone;
        m.bytesTotal = ev.modelBytesTotal;
      } else {
        var done = 0;
        var total = 0;
        m.files.forEach(function (f) {
          done += f.bytesDone;
          total += f.bytesTotal || 0;
        });
        m.bytesDone = done;
        if (!m.bytesTotal || m.bytesTotal < total) m.bytesTotal = total || null;
      }
      m.percent = null;
    } else {
      m.bytesDone = ev.bytesDone;
      m.bytesTotal = ev.bytesTotal;
      m.percent = ev.percent;
    }
    render(m);
  }

  function clearFiles(m) {
    m.files.clear();
    m.view.fileViews.clear();
    m.view.files.textContent = "";
    m.view.files.hidden = true;
  }

  // ---------- rendering ----------

  function modelPercent(m) {
    if (m.state === "READY") return 100;
    var p = percentOf(m.bytesDone, m.bytesTotal, m.percent);
    if (p === null && !ACTIVE_STATES[m.state]) return 0;
    return p;
  }

  // Only where a download was attempted: a model bundled with Citadel or already on disk has
  // attempt 0, and "0/3" would read as three tries to come.
  function attemptText(m) {
    if (!m.maxAttempts || !(m.attempt > 0)) return "";
    var text = m.attempt + " of " + m.maxAttempts;
    if (m.state === "READY") return text + ", succeeded";
    if (m.state === "FAILED") return text + (m.attempt >= m.maxAttempts ? ", all failed" : ", failed");
    return text;
  }

  // An error state's message is the error itself, shown once under "Last error".
  function statusText(m) {
    return m.message && m.message !== m.lastError ? m.message : "";
  }

  function render(m) {
    var v = m.view;
    var active = !!ACTIVE_STATES[m.state];
    var percent = modelPercent(m);
    var sizes = m.bytesTotal ? formatBytes(m.bytesDone) + " of " + formatBytes(m.bytesTotal) : m.bytesDone ? formatBytes(m.bytesDone) : "";
    var progressText = (percent === null ? "size unknown" : Math.floor(percent) + "%") + (sizes ? " · " + sizes : "");

    v.article.setAttribute("data-state", m.state);
    v.state.setAttribute("data-state", m.state);
    v.state.textContent = m.state;
    setProgress(v.bar, percent, progressText);
    setFact(v.progress, progressText);
    setFact(v.attempt, attemptText(m));
    setFact(v.speed, active && m.bytesPerSecond ? formatBytes(m.bytesPerSecond) + "/s" : "");
    setFact(
      v.eta,
      active && m.bytesPerSecond && m.bytesTotal ? formatDuration((m.bytesTotal - m.bytesDone) / m.bytesPerSecond) : ""
    );
    setFact(v.fallback, m.fallbackFor || "");
    setFact(v.message, statusText(m));
    setFact(v.lastError, m.lastError || "");

    m.files.forEach(function (f, file) {
      var fv = v.fileViews.get(file);
      if (!fv) {
        fv = createFileView(v, m.name + (m.replica ? " on " + m.replica : ""), file);
        v.fileViews.set(file, fv);
      }
      var p = m.state === "READY" ? 100 : percentOf(f.bytesDone, f.bytesTotal, f.percent);
      var text = f.bytesTotal ? formatBytes(f.bytesDone) + " of " + formatBytes(f.bytesTotal) : formatBytes(f.bytesDone);
      if (active && f.bytesPerSecond) text += " · " + formatBytes(f.bytesPerSecond) + "/s";
      setProgress(fv.bar, p, (p === null ? "size unknown" : Math.floor(p) + "%") + ", " + text);
      fv.detail.textContent = text;
    });
  }

  // ---------- connection status ----------

  function showConnection(state, text) {
    connection.setAttribute("data-state", state);
    connectionText.textContent = text;
  }

  function showLoadError(text) {
    loadError.textContent = text;
    loadError.hidden = !text;
  }

  function backoffDelay(retries) {
    // Exponential with jitter, so many dashboards do not reconnect in lockstep.
    var ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * Math.pow(2, retries));
    return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
  }

  function sleep(ms) {
    return new Promise(function (resolve) {
      setTimeout(resolve, ms);
    });
  }

  function describeError(err) {
    if (Array.isArray(err)) return err.map(describeError).join("; ");
    if (err && typeof err.code === "number") return "closed with code " + err.code + (err.reason ? ": " + err.reason : "");
    if (err && err.message) return err.message;
    return String(err);
  }

  // ---------- data sources ----------

  // ---------- API key ----------

  function askForKey(message) {
    keyMessage.textContent = message;
    keyForm.hidden = false;
    showConnection("disconnected", "Needs an API key");
    keyInput.focus();
  }

  function isUnauthenticated(errors) {
    return (errors || []).some(function (e) {
      return e.extensions && e.extensions.code === "UNAUTHENTICATED";
    });
  }

  keyForm.addEventListener("submit", function (event) {
    event.preventDefault();
    apiKey = keyInput.value.trim();
    sessionStorage.setItem(KEY_STORAGE, apiKey);
    keyInput.value = "";
    keyForm.hidden = true;
    start();
  });

  // ---------- data sources ----------

  // Resolves to false when the server wants a (different) key.
  function loadModels() {
    var headers = { "Content-Type": "application/json", Accept: "application/json" };
    if (apiKey) headers.Authorization = "Bearer " + apiKey;
    return fetch(httpUrl.href, { method: "POST", headers: headers, body: JSON.stringify({ query: MODELS_QUERY }) })
      .then(function (response) {
        return response.json();
      })
      .then(function (body) {
        if (isUnauthenticated(body.errors)) {
          askForKey(apiKey ? "The server refused this key (" + describeError(body.errors) + ")." : "This server needs an API key.");
          return false;
        }
        if (body.errors && body.errors.length) throw new Error(describeError(body.errors));
        body.data.models.forEach(applyModelRow);
        showLoadError("");
        return true;
      })
      .catch(function (err) {
        showLoadError("Could not load the model list: " + describeError(err));
        return true; // not a key problem: the subscription still tries (and retries)
      });
  }

  var client = null;

  function createClient() {
    return graphqlWs.createClient({
      url: wsUrl.href,
      connectionParams: function () {
        return apiKey ? { authorization: "Bearer " + apiKey } : {};
      },
      keepAlive: 10000,
      retryAttempts: Infinity,
      shouldRetry: function () {
        return true;
      },
      retryWait: function (retries) {
        var delay = backoffDelay(retries);
        showConnection("reconnecting", "Disconnected; reconnecting in " + Math.ceil(delay / 1000) + " s (attempt " + (retries + 1) + ")…");
        return sleep(delay);
      },
      on: {
        connecting: function (isRetry) {
          showConnection(isRetry ? "reconnecting" : "connecting", isRetry ? "Reconnecting…" : "Connecting…");
        },
        connected: function (socket, payload, wasRetry) {
          showConnection("connected", "Live");
          // The subscription replays current state; the query refreshes lastError/fallbackFor too.
          if (wasRetry) loadModels();
        },
        closed: function (event) {
          if (event && event.code === 4401) {
            stopClient();
            askForKey("The server refused this key on the live connection.");
            return;
          }
          // Only a live connection dropping is news; a failed retry keeps the countdown shown.
          if (connection.getAttribute("data-state") === "connected") {
            showConnection("disconnected", "Disconnected (" + describeError(event) + ")");
          }
        },
      },
    });
  }

  function stopClient() {
    if (client) client.dispose();
    client = null;
  }

  function start() {
    loadModels().then(function (authorized) {
      if (authorized && !client) {
        client = createClient();
        subscribe();
      }
    });
  }

  var resubscribeAttempts = 0;

  // graphql-ws retries dropped connections itself; this covers what it gives up on
  // (a GraphQL error on subscribe, a fatal close code) by starting over after a backoff.
  function subscribe() {
    if (!client) return; // stopped: waiting for a key
    client.subscribe(
      { query: PROGRESS_SUBSCRIPTION },
      {
        next: function (result) {
          resubscribeAttempts = 0;
          if (result.errors && result.errors.length) showLoadError("Subscription error: " + describeError(result.errors));
          if (result.data && result.data.modelDownloadProgress) applyEvent(result.data.modelDownloadProgress);
        },
        error: function (err) {
          resubscribeLater("Subscription failed: " + describeError(err));
        },
        complete: function () {
          resubscribeLater("Subscription ended by the server");
        },
      }
    );
  }

  function resubscribeLater(reason) {
    var delay = backoffDelay(resubscribeAttempts++);
    showConnection("reconnecting", reason + "; retrying in " + Math.ceil(delay / 1000) + " s…");
    setTimeout(subscribe, delay);
  }

  window.addEventListener("pagehide", stopClient);

  start();
})();
