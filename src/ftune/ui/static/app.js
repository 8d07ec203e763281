// ftune ui: the page's behaviour. Plain JavaScript, no framework, no CDN: each button calls one JSON endpoint of
// ftune.ui.app and shows what it answers (an error is the CLI's own one-line message).
"use strict";
const $ = (id) => document.getElementById(id);
const state = { columns: [], task: null, schema: [], polling: null };

async function call(path, body) {
  const response = await fetch(path, body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(answer.error || answer.detail || `${response.status}`);
  return answer;
}

function show(tab) {
  document.querySelectorAll(".tab").forEach((s) => s.classList.toggle("active", s.id === tab));
  document.querySelectorAll("nav button").forEach((b) => b.classList.toggle("active", b.dataset.tab === tab));
  if (tab === "runs" || tab === "train" || tab === "try") refreshRuns();
}

function options(select, values, chosen) {
  select.innerHTML = "";
  for (const v of values) {
    const o = document.createElement("option");
    o.value = v; o.textContent = v === "" ? "(default)" : v;
    if (v === chosen) o.selected = true;
    select.appendChild(o);
  }
}

function table(rows, columns) {
  const t = document.createElement("table");
  const head = t.insertRow();
  for (const c of columns) { const th = document.createElement("th"); th.textContent = c; head.appendChild(th); }
  for (const r of rows) {
    const tr = t.insertRow();
    for (const c of columns) tr.insertCell().textContent = r[c] === undefined || r[c] === null ? "" : String(r[c]);
  }
  return t;
}

// --- data -----------------------------------------------------------------------------------------------------------
function dataSettings() {
  const s = { "data.train": $("data-path").value.trim() };
  if ($("test-path").value.trim()) s["data.test"] = $("test-path").value.trim();
  if ($("text-column").value) s["data.text_column"] = $("text-column").value;
  if ($("label-column").value) s["data.label_column"] = $("label-column").value;
  if ($("task").value) s["task.name"] = $("task").value;
  s["model.name"] = $("model").value.trim() || "minilm";
  return s;
}

async function readData() {
  $("data-error").textContent = ""; $("data-warnings").innerHTML = ""; $("data-splits").innerHTML = "";
  try {
    const d = await call("/api/data", { settings: dataSettings() });
    if (JSON.stringify(d.columns) !== JSON.stringify(state.columns)) {
      state.columns = d.columns;
      options($("text-column"), ["", ...d.columns], $("text-column").value);
      options($("label-column"), ["", ...d.columns], $("label-column").value);
    }
    state.task = d.task;
    $("data-task").textContent = `task: ${d.task} (${d.task_reason}); ${d.total} rows`;
    $("data-preview").innerHTML = ""; $("data-preview").appendChild(table(d.rows, d.columns));
    if (d.error) { $("data-error").textContent = d.error; return; }
    const sizes = Object.entries(d.splits).map(([k, v]) => ({ split: k, rows: v }));
    $("data-splits").appendChild(table(sizes, ["split", "rows"]));
    for (const w of d.warnings) { const li = document.createElement("li"); li.textContent = w; $("data-warnings").appendChild(li); }
    if (!d.warnings.length) $("data-warnings").innerHTML = "<li class=muted>no warnings</li>";
    await loadSchema();
  } catch (e) { $("data-error").textContent = e.message; }
}

async function uploadFile() {
  const file = $("upload").files[0];
  if (!file) return;
  const response = await fetch(`/api/upload?name=${encodeURIComponent(file.name)}`, { method: "POST", body: file });
  const answer = await response.json();
  $("data-path").value = answer.path;
  await readData();
}

// --- configure --------------------------------------------------------------------------------------------------
async function loadSchema() {
  const task = state.task || $("task").value || "classification";
  const method = $("method").value || "full";
  const s = await call(`/api/schema?task=${encodeURIComponent(task)}&method=${encodeURIComponent(method)}`);
  const shown = new Set(["model.name", "task.name", "method.name", "data.train", "data.test", "data.text_column",
                         "data.label_column", "output_dir"]);  // set on the forms above (the run name: output_dir)
  const plain = (text) => text.replace(/`/g, "").replace(/\\\|/g, "|");  // the docs tables' markdown
  const form = $("form"); const kept = {};
  form.querySelectorAll("input").forEach((i) => { if (i.value) kept[i.dataset.key] = i.value; });
  form.innerHTML = "";
  for (const k of s.keys.filter((k) => !shown.has(k.key))) {
    const key = document.createElement("span"); key.className = "key"; key.textContent = k.key;
    const input = document.createElement("input"); input.dataset.key = k.key; input.placeholder = plain(k.default);
    input.value = kept[k.key] || ""; input.addEventListener("change", checkConfig);
    const help = document.createElement("span"); help.className = "help"; help.textContent = `${plain(k.type)}: ${plain(k.description)}`;
    form.append(key, input, help);
  }
}

function allSettings() {
  const s = dataSettings();
  if ($("method").value) s["method.name"] = $("method").value;
  $("form").querySelectorAll("input").forEach((i) => { if (i.value.trim()) s[i.dataset.key] = parse(i.value.trim()); });
  return s;
}

function parse(value) {  // numbers and booleans as YAML would read them; the config validates the rest
  if (/^(true|false)$/i.test(value)) return value.toLowerCase() === "true";
  if (/^-?\d+$/.test(value)) return parseInt(value, 10);
  if (/^-?(\d+\.?\d*|\.\d+)(e-?\d+)?$/i.test(value)) return parseFloat(value);
  return value;
}

async function checkConfig() {
  $("config-error").textContent = "";
  try {
    const c = await call("/api/config", { settings: allSettings(), name: $("run-name").value || null });
    $("yaml").textContent = c.yaml; $("command").textContent = c.command; $("memory").textContent = `memory: ${c.memory}`;
    $("download-yaml").href = URL.createObjectURL(new Blob([c.yaml], { type: "text/yaml" }));
    return true;
  } catch (e) { $("config-error").textContent = e.message; return false; }
}

async function startRun() {
  if (!(await checkConfig())) return;
  try {
    const r = await call("/api/runs", { settings: allSettings(), name: $("run-name").value || null });
    await refreshRuns(r.name);
    show("train");
    follow(r.name);
  } catch (e) { $("config-error").textContent = e.message; }
}

// --- train and runs ---------------------------------------------------------------------------------------------
async function refreshRuns(select) {
  const r = await call("/api/runs");
  const names = r.runs.map((x) => x.name);
  options($("train-run"), names, select || $("train-run").value || names[names.length - 1]);
  options($("try-run"), [...names, ...r.exports], select || $("try-run").value || names[names.length - 1]);
  const t = table(r.runs.map((x) => ({ ...x, tick: "" })), ["tick", "name", "status", "model", "method", "data",
                                                           "test score", "best validation", "train s"]);
  t.id = "runs-table";
  [...t.rows].slice(1).forEach((row, i) => {
    const box = document.createElement("input"); box.type = "checkbox"; box.value = r.runs[i].name;
    row.cells[0].appendChild(box);
    const link = document.createElement("a"); link.href = `/runs/${r.runs[i].name}/report.html`;
    link.target = "_blank"; link.textContent = r.runs[i].name; row.cells[1].textContent = ""; row.cells[1].appendChild(link);
  });
  $("runs-table").replaceWith(t);
}

function follow(name) {
  clearInterval(state.polling);
  const tick = async () => {
    const p = await call(`/api/runs/${name}/progress`);
    $("train-state").textContent = p.state; $("log").textContent = p.log;
    $("log").scrollTop = $("log").scrollHeight;
    $("report-link").href = `/runs/${name}/report.html`;
    draw($("curve"), [{ points: p.train, color: "#2f6fde" }, { points: p.eval.map(([s, v]) => [s, v.loss]), color: "#e8833a" }]);
    $("diagnosis").textContent = p.diagnosis ? `this run ${p.diagnosis.verdict}: ${p.diagnosis.findings.join("; ")}` : "";
    if (!["queued", "training"].includes(p.state)) { clearInterval(state.polling); refreshRuns(name); }
  };
  tick();
  state.polling = setInterval(tick, 1000);
}

function draw(svg, series) {  // lines on shared axes, steps across and the loss up
  const all = series.flatMap((s) => s.points).filter(([, v]) => Number.isFinite(v));
  svg.innerHTML = "";
  if (!all.length) return;
  const [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  const [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  const X = (x) => 50 + 570 * (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0));
  const Y = (y) => 230 - 210 * (y1 === y0 ? 0.5 : (y - y0) / (y1 - y0));
  const ns = "http://www.w3.org/2000/svg";
  const label = (x, y, text) => { const t = document.createElementNS(ns, "text"); t.setAttribute("x", x);
    t.setAttribute("y", y); t.setAttribute("font-size", "11"); t.textContent = text; svg.appendChild(t); };
  label(2, 24, y1.toPrecision(3)); label(2, 232, y0.toPrecision(3)); label(50, 252, `step ${x0}`); label(580, 252, `${x1}`);
  for (const s of series) {
    if (!s.points.length) continue;
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", s.points.map(([x, y]) => `${X(x)},${Y(y)}`).join(" "));
    line.setAttribute("fill", "none"); line.setAttribute("stroke", s.color); line.setAttribute("stroke-width", "2");
    line.dataset.points = String(s.points.length);
    svg.appendChild(line);
  }
}

async function compare() {
  const names = [...document.querySelectorAll("#runs-table input:checked")].map((b) => b.value);
  const colors = ["#2f6fde", "#e8833a", "#2e9e5b", "#b42318", "#7a5af8", "#667085"];
  const series = [];
  for (const [i, name] of names.entries()) {
    const p = await call(`/api/runs/${name}/progress`);
    series.push({ name, color: colors[i % colors.length], points: p.eval.map(([s, v]) => [s, v.loss]) });
  }
  draw($("compare-curve"), series);
  $("compare-legend").innerHTML = "";
  for (const s of series) {
    const item = document.createElement("span"); item.className = "legend"; item.style.color = s.color;
    item.textContent = `\u25A0 ${s.name}`; $("compare-legend").appendChild(item);
  }
}

// --- try and ship -----------------------------------------------------------------------------------------------
async function predict() {
  $("ship-error").textContent = "";
  const texts = $("try-texts").value.split("\n").map((t) => t.trim()).filter(Boolean);
  try {
    const r = await call("/api/predict", { source: $("try-run").value, texts });
    const rows = r.answers.map((a, i) => ({ text: texts[i], answer: a.label ?? a.tagged ?? a.value ?? a.score ??
      (a.labels ? a.labels.join(", ") : JSON.stringify(a)), score: typeof a.score === "number" && a.label ? a.score.toFixed(4) : "",
      scores: a.scores ? Object.entries(a.scores).map(([k, v]) => `${k} ${v.toFixed(3)}`).join(", ") : "" }));
    $("answers").innerHTML = ""; $("answers").appendChild(table(rows, ["text", "answer", "score", "scores"]));
  } catch (e) { $("ship-error").textContent = e.message; }
}

async function chat() {  // a decoder run's answer, shown as it is written
  $("ship-error").textContent = ""; $("chat-answer").textContent = "";
  const response = await fetch("/api/chat", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ source: $("try-run").value, texts: [$("try-texts").value.trim()] }) });
  if (!response.ok) { const e = await response.json().catch(() => ({})); $("ship-error").textContent = e.error || e.detail; return; }
  const reader = response.body.getReader(); const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    $("chat-answer").textContent += decoder.decode(value, { stream: true });
  }
}

async function ship(action) {
  $("ship-error").textContent = ""; $("ship-said").textContent = "working…";
  try {
    const run = $("try-run").value.split("/")[0];  // an export ships as its run does
    const r = await call(`/api/runs/${run}/${action}`, {});
    $("ship-said").textContent = r.said ? `${r.said}${r.url ? " at " + r.url : ""}` : `exported to ${r.folder}`;
    if (r.parity) {
      const metric = r.parity.metric;
      const rows = ["pytorch", "onnx-fp32", "onnx-int8"].filter((k) => r.parity[k]).map((k) => ({ model: k,
        [metric]: r.parity[k][metric].toFixed(4),
        "max |logit diff|": r.parity[k].max_abs_diff === undefined ? "" : r.parity[k].max_abs_diff.toPrecision(2),
        "size MB": r.parity[k].bytes ? (r.parity[k].bytes / 1e6).toFixed(1) : "" }));
      $("parity").innerHTML = ""; $("parity").appendChild(table(rows, ["model", metric, "max |logit diff|", "size MB"]));
    }
  } catch (e) { $("ship-error").textContent = e.message; $("ship-said").textContent = ""; }
}

// --- wiring -----------------------------------------------------------------------------------------------------
document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => show(b.dataset.tab)));
$("read-data").addEventListener("click", readData);
$("upload").addEventListener("change", uploadFile);
$("method").addEventListener("change", () => { loadSchema(); checkConfig(); });
$("check-config").addEventListener("click", checkConfig);
$("start-run").addEventListener("click", startRun);
$("train-run").addEventListener("change", () => follow($("train-run").value));
$("stop-run").addEventListener("click", () => call(`/api/runs/${$("train-run").value}/stop`, {}));
$("resume-run").addEventListener("click", async () => { await call(`/api/runs/${$("train-run").value}/resume`, {});
                                                        follow($("train-run").value); });
$("compare").addEventListener("click", compare);
$("predict").addEventListener("click", predict);
$("chat").addEventListener("click", chat);
$("export").addEventListener("click", () => ship("export"));
$("serve").addEventListener("click", () => ship("serve"));
$("unserve").addEventListener("click", () => ship("unserve"));

(async () => {
  const s = await call("/api/start");
  $("root").textContent = `runs: ${s.root}`;
  $("builtin").textContent = s.builtin.join(", ");
  options($("task"), ["", ...Object.keys(s.tasks)], "");
  options($("method"), ["", ...s.methods], "");
  for (const f of [...s.files, ...s.builtin]) { const o = document.createElement("option"); o.value = f; $("data-files").appendChild(o); }
  await loadSchema();
})();
