// The admin page's script. It polls keyward's admin endpoint once a second while the page is
// visible, and nothing while it is hidden. keyward reports totals since it started; rates,
// latency percentiles and the charts' history are worked out here, from one answer to the
// next, so keyward keeps nothing for the page. Every text that comes from keyward (keys are
// whatever clients sent) is set as text, never as markup.
"use strict";

const POLL_MS = 1000;
/** Samples the charts keep: five minutes at one a second. */
const HISTORY = 300;
const PAGE_SIZE = 10;

const view = {
  hot: { window: null, by: "requests", list: "keys", offset: 0 },
  big: { offset: 0 },
  locks: { offset: 0 },
  /** The last overview and when it came, to turn totals into rates. */
  previous: null,
  history: { rate: [], p50: [], p99: [] },
  timer: null,
};

const byId = (id) => document.getElementById(id);

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

function formatCount(n) {
  return integer.format(n);
}

function formatBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let unit = 0;
  while (n >= 1024 && unit < units.length - 1) {
    n /= 1024;
    unit += 1;
  }
  return (unit === 0 ? integer : decimal).format(n) + " " + units[unit];
}

function formatSeconds(seconds) {
  if (seconds === null || !isFinite(seconds)) return "–";
  if (seconds < 0.001) return decimal.format(seconds * 1e6) + " µs";
  if (seconds < 1) return decimal.format(seconds * 1e3) + " ms";
  return decimal.format(seconds) + " s";
}

function formatDuration(seconds) {
  const parts = [];
  for (const [unit, length] of [["d", 86400], ["h", 3600], ["m", 60]]) {
    if (seconds >= length) {
      parts.push(Math.floor(seconds / length) + unit);
      seconds %= length;
    }
  }
  if (parts.length < 2) parts.push(Math.floor(seconds) + "s");
  return parts.slice(0, 2).join(" ");
}

function formatTime(epochSeconds, nowSeconds) {
  const at = new Date(epochSeconds * 1000).toLocaleString();
  return at + " (" + formatDuration(Math.max(0, nowSeconds - epochSeconds)) + " ago)";
}

function formatRatio(part, whole) {
  return whole > 0 ? decimal.format((100 * part) / whole) + "%" : "–";
}

/** Fills a `<dl>` with `[term, value, className?]` rows. */
function facts(list, rows) {
  list.replaceChildren();
  for (const [term, value, className] of rows) {
    list.append(element("dt", term), element("dd", value, className));
  }
}

/** Fills a table's body with rows, each a list of cells `[text, className?]`, named by
 * `data-name`; `empty` is shown when there are none. */
function fillTable(table, rows, empty) {
  const body = table.tBodies[0];
  body.replaceChildren();
  if (rows.length === 0) {
    const cell = element("td", empty, "empty");
    cell.colSpan = table.tHead.rows[0].cells.length;
    body.append(document.createElement("tr"));
    body.rows[0].append(cell);
    return;
  }
  for (const { name, cells } of rows) {
    const row = document.createElement("tr");
    row.dataset.name = name;
    for (const [content, className] of cells) {
      const cell = element("td", null, className);
      if (content instanceof Node) cell.append(content);
      else cell.textContent = content;
      if (className && className.includes("key")) cell.title = cell.textContent;
      row.append(cell);
    }
    body.append(row);
  }
}

/** A rule's name with a "shadow" tag when it only counts. */
function ruleName(name, mode, shadowMeaning) {
  const cell = document.createDocumentFragment();
  cell.append(name);
  if (mode === "shadow") {
    const tag = element("span", "shadow", "tag");
    tag.title = shadowMeaning;
    cell.append(tag);
  }
  return cell;
}

/** Previous / next buttons for a list read a page at a time. */
function pager(nav, position, more, onMove) {
  nav.replaceChildren();
  if (position.offset === 0 && !more) return;
  const previous = element("button", "‹ previous");
  previous.type = "button";
  previous.disabled = position.offset === 0;
  previous.onclick = () => onMove(Math.max(0, position.offset - PAGE_SIZE));
  const next = element("button", "next ›");
  next.type = "button";
  next.disabled = !more;
  next.onclick = () => onMove(position.offset + PAGE_SIZE);
  const where = element("span", "page " + (position.offset / PAGE_SIZE + 1), "muted");
  nav.append(previous, where, next);
}

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(path + ": " + (await response.text()).trim());
  return response.json();
}

/** The latency under which a fraction `q` of the commands in `counts` were answered,
 * interpolated within its bucket as Prometheus's histogram_quantile does. */
function quantile(q, bounds, counts) {
  const total = counts.reduce((sum, n) => sum + n, 0);
  if (total === 0) return null;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < counts.length; i += 1) {
    if (seen + counts[i] >= rank && counts[i] > 0) {
      if (i >= bounds.length) return bounds[bounds.length - 1];
      const low = i === 0 ? 0 : bounds[i - 1];
      return low + (bounds[i] - low) * ((rank - seen) / counts[i]);
    }
    seen += counts[i];
  }
  return bounds[bounds.length - 1];
}

function remember(series, value) {
  series.push(value);
  if (series.length > HISTORY) series.shift();
}

/** Draws each series as a line ending at the chart's right edge, scaled to the largest value;
 * the chart spans a minute at first, and grows to the whole history. */
function drawChart(svg, seriesList) {
  const width = 300;
  const height = 60;
  const values = seriesList.flat().filter((v) => v !== null);
  const top = Math.max(...values, 0) || 1;
  const slots = Math.max(60, ...seriesList.map((series) => series.length));
  svg.replaceChildren();
  seriesList.forEach((series, index) => {
    const points = [];
    series.forEach((value, i) => {
      if (value === null) return;
      const x = (width * (i + slots - series.length)) / (slots - 1);
      const y = height - 2 - ((height - 4) * value) / top;
      points.push(x.toFixed(1) + "," + y.toFixed(1));
    });
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("class", "series-" + index);
    svg.append(line);
  });
}

function renderHeader(overview) {
  const { info } = overview;
  byId("version").textContent = info.version;
  const pill = byId("upstream-pill");
  pill.textContent = info.upstream.up ? "Redis up" : "Redis down";
  pill.className = "pill " + (info.upstream.up ? "up" : "down");
}

function renderUpstream(upstream) {
  const rows = [
    ["address", upstream.address],
    upstream.up ? ["state", "up"] : ["state", "down: " + (upstream.down_because || "unknown"), "bad"],
    ["Redis version", upstream.redis_version || "–"],
    ["pooled connections", upstream.pooled_connections_up + " up of " + upstream.pooled_connections],
    ["invalidations", upstream.invalidations, upstream.invalidations === "down" ? "bad" : ""],
  ];
  if (upstream.last_error) rows.push(["last error", upstream.last_error, "bad"]);
  facts(byId("upstream-facts"), rows);
}

function renderClients(info) {
  facts(byId("client-facts"), [
    ["connected", formatCount(info.clients) + " of " + formatCount(info.max_clients)],
    ["received since start", formatCount(info.connections_received)],
    ["uptime", formatDuration(info.uptime_seconds)],
  ]);
  const meter = byId("client-meter");
  const share = info.max_clients > 0 ? info.clients / info.max_clients : 0;
  meter.style.width = Math.min(100, 100 * share).toFixed(1) + "%";
  meter.className = share > 0.9 ? "high" : "";
}

/** Rates and percentiles between the previous overview and this one. */
function renderTraffic(overview, seconds) {
  const { commands } = overview;
  const before = view.previous && view.previous.overview.commands;
  const previousCount = new Map(before ? before.received : []);
  const rates = commands.received.map(([name, total]) => ({
    name,
    total,
    rate: before ? Math.max(0, total - (previousCount.get(name) || 0)) / seconds : null,
  }));
  if (before) {
    const counts = commands.latency_counts.map((n, i) => Math.max(0, n - before.latency_counts[i]));
    const rate = rates.reduce((sum, command) => sum + command.rate, 0);
    const p50 = quantile(0.5, commands.latency_bounds, counts);
    const p99 = quantile(0.99, commands.latency_bounds, counts);
    remember(view.history.rate, rate);
    remember(view.history.p50, p50);
    remember(view.history.p99, p99);
    byId("rate-now").textContent = decimal.format(rate);
    byId("p50-now").textContent = formatSeconds(p50);
    byId("p99-now").textContent = formatSeconds(p99);
  }
  drawChart(byId("rate-chart"), [view.history.rate]);
  drawChart(byId("latency-chart"), [view.history.p50, view.history.p99]);
  rates.sort((a, b) => (b.rate || 0) - (a.rate || 0) || b.total - a.total);
  fillTable(
    byId("command-table"),
    rates.slice(0, 8).map(({ name, total, rate }) => ({
      name,
      cells: [[name, "key"], [rate === null ? "–" : decimal.format(rate), "num"], [formatCount(total), "num"]],
    })),
    "no command yet",
  );
}

function renderCaches(overview) {
  const state = overview.info.upstream.invalidations;
  byId("cache-note").textContent =
    state === "up" ? "" : "invalidation connection " + state + ": the cache is bypassed until it is back";
  fillTable(
    byId("cache-table"),
    overview.caches.map((rule) => ({
      name: rule.name,
      cells: [
        [ruleName(rule.name, rule.mode, "shadow: hits are counted, never served")],
        [formatCount(rule.hits), "num"],
        [formatCount(rule.misses), "num"],
        [formatRatio(rule.hits, rule.hits + rule.misses), "num ratio"],
        [formatBytes(rule.bytes) + " of " + formatBytes(rule.max_memory), "num"],
        [formatCount(rule.entries), "num"],
      ],
    })),
    "no [[cache]] rule",
  );
}

function renderRateLimits(overview, seconds) {
  const before = new Map(
    view.previous ? view.previous.overview.rate_limits.map((rule) => [rule.name, rule.limited]) : [],
  );
  fillTable(
    byId("ratelimit-table"),
    overview.rate_limits.map((rule) => {
      const previous = before.get(rule.name);
      const perSecond = previous === undefined ? "–" : decimal.format(Math.max(0, rule.limited - previous) / seconds);
      return {
        name: rule.name,
        cells: [
          [ruleName(rule.name, rule.mode, "shadow: 'limited' counts what the rule would have limited")],
          [rule.limit + " / " + rule.period + " per " + rule.bucket + ", " + rule.action],
          [formatCount(rule.allowed), "num"],
          [formatCount(rule.limited) + (rule.mode === "shadow" ? " (would)" : ""), "num"],
          [perSecond, "num"],
        ],
      };
    }),
    "no [[rate_limit]] rule",
  );
}

function renderConfig(overview) {
  const { config, now } = overview;
  const alert = byId("config-error");
  alert.hidden = !config.last_reload_failed;
  if (config.last_reload_failed) {
    alert.textContent =
      "The file was rejected " + formatTime(config.last_error_at, now) +
      "; the version loaded before keeps running.\n" + config.last_error;
  }
  const rows = [
    ["file", config.path || "none (defaults)"],
    ["SHA-256", config.hash],
    ["loaded", formatTime(config.loaded_at, now)],
    ["reloads", config.reloads_ok + " applied, " + config.reloads_error + " rejected"],
  ];
  if (config.needs_restart.length > 0) {
    rows.push(["needs a restart", config.needs_restart.join(", "), "bad"]);
  }
  if (config.last_error && !config.last_reload_failed) {
    rows.push(["earlier error", formatTime(config.last_error_at, now) + ": " + config.last_error]);
  }
  facts(byId("config-facts"), rows);
}

function renderHotKeys(report) {
  const byBytes = report.by === "bytes";
  const table = byId("hot-table");
  table.classList.toggle("by-bytes", byBytes);
  byId("hot-count-title").textContent = report.by;
  const entries = view.hot.list === "keys" ? report.keys : report.patterns;
  const more = view.hot.list === "keys" ? report.more_keys : report.more_patterns;
  const count = byBytes ? formatBytes : formatCount;
  byId("hot-note").textContent =
    "last " + report.window + ": " + count(report.total) + " counted; each count may exceed the truth by at most " +
    count(report.error_bound);
  fillTable(
    table,
    entries.map((entry) => ({
      name: entry.key,
      cells: [
        [entry.key, "key"],
        [count(entry.count), "num"],
        [count(entry.error), "num"],
        [formatCount(entry.reads), "num"],
        [formatCount(entry.writes), "num"],
        [byBytes ? formatBytes(entry.bytes_in) : "", "num bytes-only"],
        [byBytes ? formatBytes(entry.bytes_out) : "", "num bytes-only"],
      ],
    })),
    "no key in this window",
  );
  pager(byId("hot-pager"), view.hot, more, (offset) => {
    view.hot.offset = offset;
    refresh();
  });
}

function hotKeysDisabled() {
  byId("hot-note").textContent = "hot keys are off: [hotkeys] enabled = false";
  byId("big-note").textContent = "big keys are found with hot keys, which are off";
  fillTable(byId("hot-table"), [], "–");
  fillTable(byId("big-table"), [], "–");
}

function renderBigKeys(report) {
  byId("big-note").textContent = "replies or written values over " + formatBytes(report.threshold_bytes);
  fillTable(
    byId("big-table"),
    report.keys.map((big) => ({
      name: big.key,
      cells: [[big.key, "key"], [big.command], [big.side], [formatBytes(big.bytes), "num"], [formatCount(big.times), "num"]],
    })),
    "no big key seen",
  );
  pager(byId("big-pager"), view.big, report.more, (offset) => {
    view.big.offset = offset;
    refresh();
  });
}

function renderLocks(report) {
  fillTable(
    byId("lock-table"),
    report.locks.map((lock) => ({
      name: lock.key,
      cells: [
        [lock.key, "key"],
        [lock.rule],
        [formatCount(lock.waiters), "num"],
        [formatSeconds(lock.oldest_wait_ms / 1000), "num"],
        [lock.holder_redacted ? "hidden (needs the admin token)" : lock.holder === null ? "–" : lock.holder, "key"],
      ],
    })),
    "no lock is contended",
  );
  pager(byId("lock-pager"), view.locks, report.more, (offset) => {
    view.locks.offset = offset;
    refresh();
  });
}

/** Keeps the window list in step with the config, which a reload may change. */
function offerWindows(windows) {
  const select = byId("hot-window");
  const current = Array.from(select.options, (option) => option.value);
  if (current.join() !== windows.join()) {
    select.replaceChildren(...windows.map((window) => element("option", window)));
  }
  if (!windows.includes(view.hot.window)) view.hot.window = windows[0];
  select.value = view.hot.window;
}

function listQuery(position, extra) {
  const query = new URLSearchParams(extra);
  query.set("offset", position.offset);
  query.set("limit", PAGE_SIZE);
  return query.toString();
}

async function poll() {
  const overview = await getJson("overview");
  const windows = overview.hotkey_windows;
  const hot = windows
    ? (offerWindows(windows),
      getJson("hotkeys?" + listQuery(view.hot, { window: view.hot.window, by: view.hot.by })))
    : null;
  const big = windows ? getJson("bigkeys?" + listQuery(view.big)) : null;
  const locks = getJson("locks?" + listQuery(view.locks));
  const lists = await Promise.all([hot, big, locks]);
  const now = performance.now();
  const seconds = view.previous ? Math.max(0.001, (now - view.previous.at) / 1000) : 1;
  renderHeader(overview);
  renderUpstream(overview.info.upstream);
  renderClients(overview.info);
  renderTraffic(overview, seconds);
  renderCaches(overview);
  renderRateLimits(overview, seconds);
  renderConfig(overview);
  if (windows) {
    renderHotKeys(lists[0]);
    renderBigKeys(lists[1]);
  } else {
    hotKeysDisabled();
  }
  renderLocks(lists[2]);
  view.previous = { overview, at: now };
}

/** Polls now, then again a second after each answer, while the page is visible. */
async function refresh() {
  clearTimeout(view.timer);
  view.timer = null;
  if (document.hidden) return;
  const freshness = byId("freshness");
  try {
    await poll();
    freshness.textContent = "updated " + new Date().toLocaleTimeString();
    freshness.className = "muted";
  } catch (error) {
    freshness.textContent = "cannot reach keyward: " + error.message;
    freshness.className = "bad";
  }
  if (!document.hidden && view.timer === null) view.timer = setTimeout(refresh, POLL_MS);
}

function wireControls() {
  byId("hot-window").onchange = (event) => {
    view.hot.window = event.target.value;
    view.hot.offset = 0;
    refresh();
  };
  byId("hot-by").onchange = (event) => {
    view.hot.by = event.target.value;
    view.hot.offset = 0;
    refresh();
  };
  for (const list of ["keys", "patterns"]) {
    byId("hot-tab-" + list).onclick = () => {
      view.hot.list = list;
      view.hot.offset = 0;
      byId("hot-tab-keys").classList.toggle("selected", list === "keys");
      byId("hot-tab-patterns").classList.toggle("selected", list === "patterns");
      refresh();
    };
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refresh();
  });
}

wireControls();
refresh();
