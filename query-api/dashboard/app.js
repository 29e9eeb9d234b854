// Tollgate's dashboard. Every view asks the query API for an aggregate or a page and
// draws it; the token stays in this tab's sessionStorage.
"use strict";

const state = {
  token: sessionStorage.getItem("tollgate.token"),
  name: sessionStorage.getItem("tollgate.name"),
  role: sessionStorage.getItem("tollgate.role"),
  charts: {},
  cursor: null,
  governanceCursor: null,
  interactions: [],
  governance: [],
  performance: null,
};

const $ = (selector) => document.querySelector(selector);
const seesContent = () => state.role === "auditor" || state.role === "admin";

function usd(nanos) {
  const value = Number(nanos) / 1e9;
  if (value !== 0 && Math.abs(value) < 0.01) return "$" + value.toFixed(6);
  return "$" + value.toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}

function time(micros) {
  return new Date(Number(micros) / 1000).toISOString().replace("T", " ").slice(0, 19);
}

function range() {
  const days = Number($("#range").value);
  const to = new Date(Date.now() + 60 * 1000);
  const from = new Date(to.getTime() - days * 86400 * 1000);
  return { from: from.toISOString(), to: to.toISOString(), days };
}

function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, value);
  }
  return search.toString();
}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: "Bearer " + state.token } });
  if (response.status === 401) {
    signOut("Your token was refused; sign in again.");
    throw new Error("unauthorized");
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const message = body && body.error ? body.error.message : String(body);
    throw new Error(message);
  }
  return body;
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (className) td.className = className;
  return td;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function row(cells, onClick) {
  const tr = document.createElement("tr");
  tr.append(...cells);
  if (onClick) {
    tr.className = "clickable";
    tr.addEventListener("click", onClick);
  }
  return tr;
}

function chart(id, config) {
  if (state.charts[id]) state.charts[id].destroy();
  state.charts[id] = new Chart($("#" + id), config);
  return state.charts[id];
}

function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  URL.revokeObjectURL(url);
}

// A cell that begins with =, +, -, @, a tab or a carriage return and is not a number gets
// a leading ' so a spreadsheet shows it instead of running it (the API's CSV follows the
// same rule, in query-api/src/export.rs).
function neutralized(text) {
  return /^[=+\-@\t\r]/.test(text) && !/^[+-]?\d+(\.\d+)?$/.test(text) ? "'" + text : text;
}

function csv(rows) {
  const quote = (value) => {
    const text = neutralized(value === undefined || value === null ? "" : String(value));
    return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  };
  return rows.map((line) => line.map(quote).join(",")).join("\n") + "\n";
}

function status(message) {
  $("#status").textContent = message || "";
}

function who(principal) {
  if (!principal) return "";
  return [principal.org_id, principal.team_id, principal.user_id].filter(Boolean).join(" / ");
}

function target(call) {
  if (!call) return "";
  if (call.kind === "tool_call") return call.server + "/" + (call.tool || call.method);
  return call.routed_model || call.request_model || "";
}

// --- Spend --------------------------------------------------------------------------

async function showSpend() {
  const { from, to, days } = range();
  const group = $("#spend-group").value;
  const bucket = days <= 2 ? "hour" : "day";
  const report = await api("/v1/reports/cost?" + query({ from, to, group_by: group, bucket }));
  const buckets = [...new Set(report.lines.map((line) => line.bucket_start))].sort();
  const groups = [...new Set(report.lines.map((line) => line[group] || "(none)"))].sort();
  const datasets = groups.map((name) => ({
    label: name,
    data: buckets.map((start) => {
      const line = report.lines.find((l) => l.bucket_start === start && (l[group] || "(none)") === name);
      return line ? Number(line.cost_nanos) / 1e9 : 0;
    }),
  }));
  chart("spend-chart", {
    type: "bar",
    data: { labels: buckets.map((start) => start.replace("T", " ").slice(0, bucket === "hour" ? 16 : 10)), datasets },
    options: {
      maintainAspectRatio: false,
      animation: false,
      scales: { x: { stacked: true }, y: { stacked: true, title: { display: true, text: "USD" } } },
    },
  });
  const interactions = report.lines.reduce((sum, line) => sum + Number(line.interactions), 0);
  const tokens = report.lines.reduce((sum, line) => sum + Number(line.output_tokens), 0);
  $("#spend-total").textContent = usd(report.total_cost_nanos);
  $("#spend-count").textContent = interactions.toLocaleString();
  $("#spend-tokens").textContent = tokens.toLocaleString();

  const people = await api("/v1/reports/cost?" + query({ from, to, group_by: "org,team,user" }));
  const top = people.lines.sort((a, b) => Number(b.cost_nanos) - Number(a.cost_nanos)).slice(0, 10);
  fill(
    $("#top-spenders tbody"),
    top.map((line) =>
      row([
        cell(line.user || "(no user)"),
        cell(line.team),
        cell(line.org),
        cell(Number(line.interactions).toLocaleString(), "num"),
        cell(line.cost_usd, "num"),
      ]),
    ),
  );
}

async function exportCsv(kind) {
  const { from, to } = range();
  const group = $("#spend-group").value;
  const path =
    kind === "cost"
      ? "/v1/reports/cost?" + query({ from, to, group_by: group, bucket: "day", format: "csv" })
      : "/v1/reports/chargeback?" + query({ from, to });
  const text = await api(path);
  download(kind === "cost" ? "tollgate-cost.csv" : "tollgate-chargeback.csv", text, "text/csv");
}

// --- Budgets ------------------------------------------------------------------------

async function showBudgets() {
  const { budgets } = await api("/v1/budgets");
  chart("budget-chart", {
    type: "bar",
    data: {
      labels: budgets.map((budget) => budget.budget_id),
      datasets: [
        { label: "Spent", data: budgets.map((b) => Number(b.spent_nanos) / 1e9) },
        { label: "Projected at window end", data: budgets.map((b) => Number(b.forecast_nanos ?? b.spent_nanos) / 1e9) },
        { label: "Limit", data: budgets.map((b) => Number(b.budget_nanos) / 1e9) },
      ],
    },
    options: { maintainAspectRatio: false, animation: false, indexAxis: "y", scales: { x: { title: { display: true, text: "USD" } } } },
  });
  fill(
    $("#budgets tbody"),
    budgets.map((budget) =>
      row([
        cell(budget.budget_id),
        cell(budget.subject),
        cell(budget.window + (budget.hard ? ", hard" : ", soft")),
        cell(usd(budget.spent_nanos), "num"),
        cell(usd(budget.budget_nanos), "num"),
        cell(budget.forecast_nanos === null || budget.forecast_nanos === undefined ? "-" : usd(budget.forecast_nanos), "num"),
        cell(budget.state, "state-" + budget.state),
      ]),
    ),
  );
}

// --- Performance --------------------------------------------------------------------

function ms(micros) {
  return micros === null || micros === undefined ? "-" : (Number(micros) / 1000).toFixed(1) + " ms";
}

function percent(rate) {
  return (Number(rate) * 100).toFixed(1) + "%";
}

async function showPerformance() {
  const { from, to, days } = range();
  const group = $("#performance-group").value;
  const bucket = days <= 2 ? "hour" : "day";
  const [series, totals, reliability, health] = await Promise.all([
    api("/v1/reports/latency?" + query({ from, to, group_by: group, bucket })),
    api("/v1/reports/latency?" + query({ from, to, group_by: group })),
    api("/v1/reports/reliability?" + query({ from, to, group_by: group })),
    api("/v1/reports/health?" + query({ from, to })),
  ]);
  showHealth(health, from, to);
  const buckets = [...new Set(series.lines.map((line) => line.bucket_start))].sort();
  const names = [...new Set(series.lines.map((line) => line[group] || "(none)"))].sort();
  chart("latency-chart", {
    type: "line",
    data: {
      labels: buckets.map((start) => start.replace("T", " ").slice(0, bucket === "hour" ? 16 : 10)),
      datasets: names.map((name) => ({
        label: name + " p95",
        data: buckets.map((start) => {
          const line = series.lines.find((l) => l.bucket_start === start && (l[group] || "(none)") === name);
          return line && line.duration_p95_us !== null ? Number(line.duration_p95_us) / 1000 : null;
        }),
        spanGaps: true,
      })),
    },
    options: { maintainAspectRatio: false, animation: false, scales: { y: { title: { display: true, text: "ms" } } } },
  });
  state.performance = { group, totals: totals.lines, reliability };
  fill(
    $("#latency tbody"),
    totals.lines.map((line) =>
      row([
        cell(line[group] || "(none)"),
        cell(line.requests, "num"),
        cell(ms(line.duration_p50_us), "num"),
        cell(ms(line.duration_p95_us), "num"),
        cell(ms(line.duration_p99_us), "num"),
        cell(ms(line.time_to_first_token_p50_us), "num"),
        cell(ms(line.time_to_first_token_p95_us), "num"),
        cell(ms(line.gateway_overhead_p95_us), "num"),
        cell(line.output_tokens_per_second ?? "-", "num"),
      ]),
    ),
  );
  const lines = reliability.lines;
  chart("reliability-chart", {
    type: "bar",
    data: {
      labels: lines.map((line) => line[group] || "(none)"),
      datasets: [
        { label: "error rate %", data: lines.map((line) => Number(line.error_rate) * 100), backgroundColor: "#d92d20" },
        { label: "retry rate %", data: lines.map((line) => Number(line.retry_rate) * 100), backgroundColor: "#f79009" },
        { label: "fallback rate %", data: lines.map((line) => Number(line.fallback_rate) * 100), backgroundColor: "#2f5bd3" },
      ],
    },
    options: { maintainAspectRatio: false, animation: false, scales: { y: { title: { display: true, text: "% of calls" } } } },
  });
  fill(
    $("#reliability tbody"),
    lines.map((line) =>
      row([
        cell(line[group] || "(none)"),
        cell(line.requests, "num"),
        cell(line.errors + " (" + percent(line.error_rate) + ")", "num"),
        cell(line.retried + " (" + percent(line.retry_rate) + ")", "num"),
        cell(line.fallbacks + " (" + percent(line.fallback_rate) + ")", "num"),
        cell(Object.entries(line.outcomes).map(([outcome, count]) => outcome + " " + count).join(", ")),
      ]),
    ),
  );
  fill(
    $("#fallbacks tbody"),
    reliability.fallback_targets.map((target) =>
      row([cell(target.model), cell(target.served_by_upstream), cell(target.served_by_model), cell(target.requests, "num")]),
    ),
  );
}

function seconds(value) {
  const total = Math.round(Number(value));
  if (total < 120) return total + " s";
  if (total < 7200) return Math.round(total / 60) + " min";
  return (total / 3600).toFixed(1) + " h";
}

// The provider health timeline: one row per upstream, a red bar per outage window.
function showHealth(health, from, to) {
  const timelines = health.upstreams;
  const windows = timelines.flatMap((timeline) => timeline.windows.map((window) => ({ timeline, window })));
  const start = Date.parse(from);
  const end = Math.min(Date.parse(to), Date.now());
  $("#health-summary").textContent = windows.length
    ? timelines.map((t) => `${t.upstream}: ${t.windows.length} outage window(s), open ${seconds(t.open_seconds)}`).join("; ") +
      (health.truncated ? " (only the latest windows are shown)" : "")
    : "No circuit breaker opened in this range: every upstream was healthy.";
  const labels = timelines.map((timeline) => timeline.upstream);
  chart("health-chart", {
    type: "bar",
    data: {
      labels,
      datasets: [
        {
          label: "breaker open",
          data: windows.map(({ timeline, window }) => ({
            y: timeline.upstream,
            x: [Date.parse(window.opened_at), window.closed_at ? Date.parse(window.closed_at) : end],
            window,
          })),
          backgroundColor: windows.map(({ window }) => (window.ongoing ? "#f79009" : "#d92d20")),
          grouped: false,
          minBarLength: 3,
        },
      ],
    },
    options: {
      indexAxis: "y",
      maintainAspectRatio: false,
      animation: false,
      scales: {
        x: {
          type: "linear",
          min: start,
          max: end,
          ticks: { callback: (value) => new Date(value).toISOString().replace("T", " ").slice(5, 16) },
        },
      },
      plugins: {
        legend: { display: false },
        tooltip: {
          callbacks: {
            label: (item) => {
              const window = item.raw.window;
              return `${window.gateway_instance}: open ${seconds(window.duration_seconds)}, ${window.moved.requests} calls moved`;
            },
          },
        },
      },
    },
  });
  fill(
    $("#health tbody"),
    windows
      .slice()
      .reverse()
      .map(({ timeline, window }) =>
        row([
          cell(timeline.upstream),
          cell(window.gateway_instance),
          cell(window.opened_at.replace("T", " ").slice(0, 19)),
          window.ongoing
            ? cell("still open", "outage")
            : cell(
                window.closed_at.replace("T", " ").slice(0, 19) +
                  (window.closed_by === "restart" ? " (gateway restarted)" : ""),
              ),
          cell(seconds(window.duration_seconds), "num"),
          cell(window.reason || ""),
          cell(window.moved.requests, "num"),
          cell(window.moved.served_elsewhere, "num"),
          cell(window.moved.failed, "num"),
          cell(window.moved.served_by.map((s) => (s.upstream || "(none)") + " " + s.requests).join(", ")),
        ]),
      ),
  );
}

function performanceCsv() {
  const data = state.performance;
  if (!data) return;
  const lines = [["group", "calls", "duration_p50_us", "duration_p95_us", "duration_p99_us", "ttft_p50_us", "ttft_p95_us", "overhead_p50_us", "overhead_p95_us", "output_tokens_per_second", "errors", "retried", "fallbacks"]];
  for (const line of data.totals) {
    const name = line[data.group];
    const reliability = data.reliability.lines.find((r) => r[data.group] === name) || {};
    lines.push([
      name,
      line.requests,
      line.duration_p50_us,
      line.duration_p95_us,
      line.duration_p99_us,
      line.time_to_first_token_p50_us,
      line.time_to_first_token_p95_us,
      line.gateway_overhead_p50_us,
      line.gateway_overhead_p95_us,
      line.output_tokens_per_second,
      reliability.errors,
      reliability.retried,
      reliability.fallbacks,
    ]);
  }
  download("tollgate-performance.csv", csv(lines), "text/csv");
}

// --- Violations ---------------------------------------------------------------------

const SEVERITIES = ["critical", "high", "medium", "low"];
const SEVERITY_COLOURS = { critical: "#7a271a", high: "#d92d20", medium: "#f79009", low: "#12b76a" };

async function showViolations() {
  const { from, to } = range();
  const report = await api("/v1/reports/violations?" + query({ from, to }));
  const rules = [...new Set(report.counts.map((count) => count.rule_id))];
  chart("violation-chart", {
    type: "bar",
    data: {
      labels: rules,
      datasets: SEVERITIES.map((severity) => ({
        label: severity,
        backgroundColor: SEVERITY_COLOURS[severity],
        data: rules.map((rule) => {
          const found = report.counts.find((count) => count.rule_id === rule && count.severity === severity);
          return found ? Number(found.violations) : 0;
        }),
      })),
    },
    options: { maintainAspectRatio: false, animation: false, scales: { x: { stacked: true }, y: { stacked: true } } },
  });
  fill(
    $("#violation-counts tbody"),
    report.counts.map((count) =>
      row(
        [
          cell(count.rule_id),
          cell(count.severity, "severity-" + count.severity),
          cell(count.violations, "num"),
          cell("show"),
        ],
        () => drillViolations(count.rule_id, count.severity),
      ),
    ),
  );
}

async function drillViolations(rule, severity) {
  const { from, to } = range();
  const page = await api("/v1/violations?" + query({ from, to, rule, severity, limit: 100 }));
  $("#violation-drill-title").textContent = rule + " (" + severity + ")";
  fill(
    $("#violation-list tbody"),
    page.items.map((violation) =>
      row(
        [
          cell(time(violation.time_unix_micros)),
          cell(violation.severity, "severity-" + violation.severity),
          cell(who(violation.principal)),
          cell(violation.summary),
          cell(violation.interaction_id),
        ],
        () => {
          location.hash = "#/interactions/" + violation.interaction_id;
        },
      ),
    ),
  );
  $("#violation-drill").hidden = false;
}

// --- Interactions -------------------------------------------------------------------

function searchParams() {
  const form = new FormData($("#search"));
  const { from, to } = range();
  const params = { from, to, limit: 50 };
  for (const name of ["team", "user", "model", "outcome", "text"]) {
    const value = (form.get(name) || "").trim();
    if (value && (name !== "text" || seesContent())) params[name] = value;
  }
  return params;
}

async function showInteractions(more) {
  const params = searchParams();
  if (more && state.cursor) params.cursor = state.cursor;
  const page = await api("/v1/interactions?" + query(params));
  state.interactions = more ? state.interactions.concat(page.interactions) : page.interactions;
  state.cursor = page.next_cursor || null;
  $("#more").hidden = !state.cursor;
  fill(
    $("#interactions tbody"),
    state.interactions.map((priced) => {
      const interaction = priced.interaction;
      const usage = interaction.usage || {};
      return row(
        [
          cell(time(interaction.time_unix_micros)),
          cell(who(interaction.principal)),
          cell(target(interaction.call)),
          cell(interaction.outcome.status),
          cell((usage.input_tokens ?? 0) + " / " + (usage.output_tokens ?? 0), "num"),
          cell(usd(priced.cost.total), "num"),
        ],
        () => {
          location.hash = "#/interactions/" + interaction.id;
        },
      );
    }),
  );
}

function interactionsCsv() {
  const lines = [["time", "org", "team", "user", "key", "model_or_tool", "outcome", "input_tokens", "output_tokens", "cost_nanos", "id"]];
  for (const priced of state.interactions) {
    const interaction = priced.interaction;
    const principal = interaction.principal;
    const usage = interaction.usage || {};
    lines.push([
      time(interaction.time_unix_micros),
      principal.org_id,
      principal.team_id,
      principal.user_id,
      principal.key_id,
      target(interaction.call),
      interaction.outcome.status,
      usage.input_tokens ?? "",
      usage.output_tokens ?? "",
      priced.cost.total,
      interaction.id,
    ]);
  }
  download("tollgate-interactions.csv", csv(lines), "text/csv");
}

function contentBlock(label, text) {
  const wrapper = document.createElement("div");
  const heading = document.createElement("p");
  heading.textContent = label;
  const pre = document.createElement("pre");
  pre.className = "content";
  pre.textContent = text;
  wrapper.append(heading, pre);
  return wrapper;
}

async function showDetail(id) {
  const detail = await api("/v1/interactions/" + encodeURIComponent(id));
  const priced = detail.interaction;
  const interaction = priced.interaction;
  $("#detail-id").textContent = interaction.id;
  const fields = [
    ["Time", time(interaction.time_unix_micros)],
    ["Who", who(interaction.principal) + " (key " + interaction.principal.key_id + ")"],
    ["Call", interaction.call.kind + ": " + target(interaction.call)],
    ["Provider", interaction.call.provider || ""],
    ["Outcome", interaction.outcome.status + (interaction.outcome.http_status ? " (HTTP " + interaction.outcome.http_status + ")" : "")],
    ["Attempts", interaction.outcome.attempts ?? ""],
    ["Duration", interaction.timing ? (interaction.timing.duration_micros / 1000).toFixed(1) + " ms" : ""],
    ["Cost", usd(priced.cost.total) + " (catalog " + priced.price_catalog_version + ")"],
  ];
  const list = $("#detail-fields");
  list.replaceChildren();
  for (const [name, value] of fields) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = String(value);
    list.append(dt, dd);
  }
  const content = $("#detail-content");
  content.replaceChildren();
  const captured = interaction.content && interaction.content.captured;
  if (captured && (captured.request || captured.response)) {
    if (captured.request) content.append(contentBlock("Request", captured.request));
    if (captured.response) content.append(contentBlock("Response", captured.response));
  } else {
    const note = document.createElement("p");
    note.className = "hint";
    note.id = "content-withheld";
    note.textContent = seesContent()
      ? "No content was captured for this call (only sizes and digests)."
      : "Content is shown to auditors only.";
    content.append(note);
  }
  const proof = detail.inclusion_proof;
  $("#detail-proof").textContent = proof
    ? proof.status +
      (proof.status === "included" ? " at leaf " + proof.leaf_index + " of " + proof.tree_size + " in partition " + proof.partition : "") +
      (proof.verified === true ? "; signature and path verified" : proof.verified === false ? "; VERIFICATION FAILED" : "")
    : "no proof";
  const violations = $("#detail-violations");
  violations.replaceChildren(
    ...(detail.violations || []).map((violation) => {
      const item = document.createElement("li");
      item.textContent = violation.severity + ": " + violation.rule_id + ": " + violation.summary;
      return item;
    }),
  );
  if (!violations.children.length) {
    const item = document.createElement("li");
    item.textContent = "none";
    violations.append(item);
  }
  $("#detail").hidden = false;
  $("#detail").scrollIntoView();
}

// --- Governance ---------------------------------------------------------------------

async function showGovernance(more) {
  const { from, to } = range();
  const params = { from, to, limit: 100 };
  if (more && state.governanceCursor) params.cursor = state.governanceCursor;
  const page = await api("/v1/governance?" + query(params));
  state.governance = more ? state.governance.concat(page.items) : page.items;
  state.governanceCursor = page.next_cursor || null;
  $("#governance-more").hidden = !state.governanceCursor;
  fill(
    $("#governance tbody"),
    state.governance.map((change) =>
      row([
        cell(time(change.time_unix_micros)),
        cell(change.actor.kind + ": " + change.actor.id),
        cell(change.target.kind + " " + change.target.id),
        cell(change.action),
        cell(change.reason || ""),
      ]),
    ),
  );
}

function governanceCsv() {
  const lines = [["time", "actor_kind", "actor", "target_kind", "target", "action", "reason", "id"]];
  for (const change of state.governance) {
    lines.push([
      time(change.time_unix_micros),
      change.actor.kind,
      change.actor.id,
      change.target.kind,
      change.target.id,
      change.action,
      change.reason || "",
      change.id,
    ]);
  }
  download("tollgate-governance.csv", csv(lines), "text/csv");
}

// --- Routing and session ------------------------------------------------------------

function allowed(page) {
  const link = document.querySelector('nav a[data-page="' + page + '"]');
  return link && (link.dataset.role !== "auditor" || seesContent());
}

async function route() {
  status("");
  for (const section of document.querySelectorAll(".page")) section.hidden = true;
  if (!state.token) {
    $("#sign-in").hidden = false;
    $("#nav").hidden = true;
    $("#session").hidden = true;
    return;
  }
  $("#nav").hidden = false;
  $("#session").hidden = false;
  $("#who").textContent = state.name + " (" + state.role + ")";
  for (const element of document.querySelectorAll('[data-role="auditor"]')) element.hidden = !seesContent();
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  const page = parts[0] || "spend";
  const id = parts[1];
  const name = allowed(page) ? page : "spend";
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.page === name);
  $("#page-" + name).hidden = false;
  document.body.dataset.page = name;
  try {
    if (name === "spend") await showSpend();
    if (name === "budgets") await showBudgets();
    if (name === "performance") await showPerformance();
    if (name === "violations") await showViolations();
    if (name === "interactions") {
      $("#detail").hidden = true;
      await showInteractions(false);
      if (id) await showDetail(decodeURIComponent(id));
    }
    if (name === "governance") await showGovernance(false);
    document.body.dataset.loaded = name;
  } catch (error) {
    if (error.message !== "unauthorized") status("Could not load this page: " + error.message);
  }
}

async function signIn(event) {
  event.preventDefault();
  const token = $("#token").value.trim();
  state.token = token;
  try {
    const me = await api("/v1/whoami");
    state.name = me.name;
    state.role = me.role;
    sessionStorage.setItem("tollgate.token", token);
    sessionStorage.setItem("tollgate.name", me.name);
    sessionStorage.setItem("tollgate.role", me.role);
    $("#token").value = "";
    $("#sign-in-error").textContent = "";
    if (!location.hash) location.hash = "#/spend";
    else route();
  } catch (error) {
    state.token = null;
    $("#sign-in-error").textContent = "Sign-in failed: " + error.message;
  }
}

function signOut(message) {
  sessionStorage.clear();
  state.token = state.name = state.role = null;
  route();
  if (message) $("#sign-in-error").textContent = message;
}

function start() {
  $("#sign-in-form").addEventListener("submit", signIn);
  $("#sign-out").addEventListener("click", () => signOut());
  $("#range").addEventListener("change", route);
  $("#spend-group").addEventListener("change", () => showSpend().catch((error) => status(error.message)));
  for (const button of document.querySelectorAll("[data-csv]")) {
    button.addEventListener("click", () => exportCsv(button.dataset.csv).catch((error) => status(error.message)));
  }
  $("#search").addEventListener("submit", (event) => {
    event.preventDefault();
    $("#detail").hidden = true;
    showInteractions(false).catch((error) => status(error.message));
  });
  $("#more").addEventListener("click", () => showInteractions(true).catch((error) => status(error.message)));
  $("#search-csv").addEventListener("click", interactionsCsv);
  $("#performance-group").addEventListener("change", () => showPerformance().catch((error) => status(error.message)));
  $("#performance-csv").addEventListener("click", performanceCsv);
  $("#governance-more").addEventListener("click", () => showGovernance(true).catch((error) => status(error.message)));
  $("#governance-csv").addEventListener("click", governanceCsv);
  window.addEventListener("hashchange", route);
  Chart.defaults.font.family = getComputedStyle(document.documentElement).fontFamily;
  route();
}

document.addEventListener("DOMContentLoaded", start);
