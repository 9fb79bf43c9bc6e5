// picorl report: tabs, eval table and the group browser. No network, no libraries; model text is
// only ever set as textContent, never parsed as HTML.
"use strict";

const DATA = JSON.parse(document.getElementById("report-data").textContent);
const MAX_LISTED = 500; // rows in a group list; filters narrow the rest

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function num(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return typeof x === "number" ? x.toFixed(digits) : String(x);
}

function signed(x, digits = 3) {
  if (typeof x !== "number") return "–";
  return (x > 0 ? "+" : "") + x.toFixed(digits);
}

function answerText(counts) {
  if (counts === null || counts === undefined) return "none";
  const keys = Object.keys(counts);
  if (keys.length === 1) return String(counts[keys[0]]) + " " + keys[0];
  return keys.map((k) => k + ": " + counts[k]).join(", ");
}

function byValue(a, b) { // numbers in order, then labels (a writer may name a step, e.g. "base")
  if (typeof a === "number" && typeof b === "number") return a - b;
  if (typeof a === "number") return -1;
  if (typeof b === "number") return 1;
  return String(a).localeCompare(String(b));
}

// ---- tabs -------------------------------------------------------------------------------------
function showTab(name) {
  for (const b of document.querySelectorAll("nav button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== name;
}

// ---- eval table -------------------------------------------------------------------------------
function renderEvalTable() {
  const root = document.getElementById("eval-table");
  const table = DATA.eval_table;
  if (!table.rows.length) {
    root.append(el("p", { class: "empty", text: "No eval rows in metrics.jsonl yet." }));
    return;
  }
  const head = el("tr", {}, el("th", { text: "stage" }), el("th", { text: "step" }),
    table.tiers.map((t) => el("th", { text: "tier " + t + " accuracy [95% CI]" })));
  const body = table.rows.map((row) => el("tr", {},
    el("td", { text: row.stage || (row.step === 0 ? "start" : "update " + row.step) }),
    el("td", { class: "num", text: row.step === null || row.step === undefined ? "–" : String(row.step) }),
    table.tiers.map((t) => {
      const c = row.cells[String(t)];
      if (!c) return el("td", { text: "–" });
      return el("td", { class: "num" },
        el("b", { text: num(c.accuracy) }), " ",
        el("span", { class: "ci", text: "[" + num(c.low) + ", " + num(c.high) + "] n=" + num(c.n, 0) +
          (c.format !== null && c.format !== undefined ? " fmt " + num(c.format, 2) : "") }));
    })));
  root.append(el("table", {}, el("thead", {}, head), el("tbody", {}, body)));
}

// ---- group browser ----------------------------------------------------------------------------
function makeSelect(label, name, options) {
  const select = el("select", { name: name }, options.map(([value, text]) => el("option", { value: value, text: text })));
  return [el("label", {}, label, select), select];
}

function memberCard(m, index, isEval) {
  const ok = m.correct === true;
  const badges = el("div", { class: "badges" },
    el("span", { class: "badge" }, isEval ? "step " : "#", el("b", { text: isEval ? String(m.step) : String(index + 1) }),
      m.stage ? [" ", el("span", { class: "tag", text: m.stage })] : null),
    el("span", { class: "badge" }, "reward ", el("b", { text: num(m.reward) })),
    el("span", { class: "badge" }, "correct ", el("span", { class: ok ? "yes" : "no", text: ok ? "yes" : "no" })),
    isEval ? null : el("span", { class: "badge" }, "advantage ", el("b", { text: signed(m.advantage) })),
    el("span", { class: "badge" }, "length ", el("b", { text: num(m.completion_tokens, 0) }), " tokens"),
    el("span", { class: "badge" }, "finish ", el("b", { text: m.finish_reason || "–" })),
    el("span", { class: "badge" }, "answer ", el("b", { text: answerText(m.given) })));
  let diff = null;
  if (m.diff && m.diff.length) {
    diff = el("table", { class: "diff" },
      el("tr", {}, el("th", { text: "letter" }), el("th", { text: "expected" }), el("th", { text: "given" }), el("th", { text: "given − expected" })),
      m.diff.map((d) => el("tr", {},
        el("td", { text: d.letter }), el("td", { class: "num", text: d.expected === null ? "–" : String(d.expected) }),
        el("td", { class: "num", text: d.given === null || d.given === undefined ? "none" : String(d.given) }),
        el("td", { class: "num " + (d.delta === 0 ? "ok" : "off"), text: d.delta === null ? "–" : signed(d.delta, 0) }))));
  }
  return el("div", { class: "card member " + (ok ? "correct" : "incorrect") }, badges, diff,
    el("pre", { class: "completion", text: m.completion }));
}

function makeBrowser(rootId, groups, isEval) {
  const root = document.getElementById(rootId);
  if (!groups.length) {
    root.append(el("p", { class: "empty", text: isEval ? "No eval samples in this run yet." : "No rollouts in samples.jsonl yet (see --samples-every)." }));
    return;
  }
  const steps = [...new Set(groups.flatMap((g) => g.members.map((m) => m.step)))].sort(byValue);
  const tiers = [...new Set(groups.map((g) => g.tier).filter((t) => t !== null && t !== undefined))].sort(byValue);
  const [stepLabel, stepSelect] = makeSelect(isEval ? "step" : "update", "step",
    [["all", "all"], ...steps.map((s) => [String(s), String(s)])]);
  const [tierLabel, tierSelect] = makeSelect("tier", "tier", [["all", "all"], ...tiers.map((t) => [String(t), String(t)])]);
  const [okLabel, okSelect] = makeSelect("outcome", "outcome", [["any", "any"], ["some-correct", "has a correct one"],
    ["some-incorrect", "has an incorrect one"], ["all-correct", "all correct"], ["none-correct", "none correct"]]);
  const [zvLabel, zvSelect] = makeSelect("variance", "variance",
    [["any", "any"], ["zero", "zero-variance groups"], ["nonzero", "groups with variance"]]);
  const count = el("span", { class: "count" });
  const controls = el("div", { class: "controls" }, stepLabel, tierLabel, okLabel, isEval ? null : zvLabel, count);
  const list = el("div", { class: "group-list" });
  const detail = el("div", { class: "detail" }, el("p", { class: "empty", text: "Pick a group on the left to see its completions." }));
  root.append(controls, el("div", { class: "browser" }, list, detail));
  let selectedId = null;

  function visibleMembers(g) {
    const step = stepSelect.value;
    return step === "all" ? g.members : g.members.filter((m) => String(m.step) === step);
  }

  function keep(g, members) {
    if (!members.length) return false;
    if (tierSelect.value !== "all" && String(g.tier) !== tierSelect.value) return false;
    const nCorrect = members.filter((m) => m.correct === true).length;
    const o = okSelect.value;
    if (o === "some-correct" && nCorrect === 0) return false;
    if (o === "some-incorrect" && nCorrect === members.length) return false;
    if (o === "all-correct" && nCorrect !== members.length) return false;
    if (o === "none-correct" && nCorrect !== 0) return false;
    if (!isEval && zvSelect.value === "zero" && !g.zero_variance) return false;
    if (!isEval && zvSelect.value === "nonzero" && g.zero_variance) return false;
    return true;
  }

  function showGroup(g) {
    selectedId = g.id;
    for (const r of list.querySelectorAll("tr.group-row")) r.classList.toggle("selected", r.dataset.id === g.id);
    const members = visibleMembers(g);
    const title = isEval ? "Eval task: tier " + g.tier + ", task seed " + g.task_seed
      : "Update " + g.step + ", group " + g.group + (g.tier !== null && g.tier !== undefined ? " (tier " + g.tier + ")" : "");
    detail.replaceChildren(...[
      el("h2", { text: title }),
      el("div", { class: "badges" },
        el("span", {}, "expected answer ", el("b", { text: g.expected ? answerText(g.expected) : "unknown" })),
        isEval ? null : el("span", {}, "zero variance ", el("b", { text: g.zero_variance ? "yes" : "no" })),
        el("span", {}, "correct ", el("b", { text: members.filter((m) => m.correct === true).length + " / " + members.length }))),
      el("pre", { class: "prompt", text: g.prompt }),
      g.system ? el("details", {}, el("summary", { text: "system prompt" }), el("pre", { text: g.system })) : null,
      members.map((m, i) => memberCard(m, i, isEval))].flat().filter((x) => x !== null));
  }

  function refresh() {
    const shown = [];
    for (const g of groups) {
      const members = visibleMembers(g);
      if (keep(g, members)) shown.push([g, members]);
    }
    count.textContent = shown.length + " of " + groups.length + (isEval ? " tasks" : " groups");
    const head = el("tr", {}, isEval ? [el("th", { text: "tier" }), el("th", { text: "task seed" }), el("th", { text: "steps" })]
      : [el("th", { text: "update" }), el("th", { text: "group" }), el("th", { text: "tier" })],
      el("th", { text: "correct" }), el("th", { text: "mean reward" }), el("th", { text: "question" }));
    const rows = shown.slice(0, MAX_LISTED).map(([g, members]) => {
      const rewards = members.map((m) => m.reward).filter((r) => typeof r === "number");
      const mean = rewards.length ? rewards.reduce((a, b) => a + b, 0) / rewards.length : null;
      const nCorrect = members.filter((m) => m.correct === true).length;
      const first = isEval ? [el("td", { text: String(g.tier) }), el("td", { class: "num", text: String(g.task_seed) }), el("td", { class: "num", text: String(members.length) })]
        : [el("td", { class: "num", text: String(g.step) }), el("td", { class: "num", text: String(g.group) }), el("td", { text: g.tier === null || g.tier === undefined ? "–" : String(g.tier) })];
      const row = el("tr", { class: "group-row" + (g.id === selectedId ? " selected" : ""), "data-id": g.id, onclick: () => showGroup(g) },
        first, el("td", { class: "num", text: nCorrect + "/" + members.length }),
        el("td", { class: "num" }, num(mean), !isEval && g.zero_variance ? [" ", el("span", { class: "tag", text: "zero-var" })] : null),
        el("td", { class: "snippet", text: g.prompt.split("\n")[0] }));
      return row;
    });
    const table = el("table", {}, el("thead", {}, head), el("tbody", {}, rows));
    list.replaceChildren(table);
    if (shown.length > MAX_LISTED) list.append(el("p", { class: "empty", text: "Showing the first " + MAX_LISTED + "; narrow with the filters." }));
    if (!shown.length) list.append(el("p", { class: "empty", text: "No group matches these filters." }));
    const still = shown.find(([g]) => g.id === selectedId);
    if (still) showGroup(still[0]); // the step filter changes which members the open group shows
  }

  for (const s of [stepSelect, tierSelect, okSelect, zvSelect]) s.addEventListener("change", refresh);
  refresh();
}

for (const b of document.querySelectorAll("nav button")) b.addEventListener("click", () => showTab(b.dataset.tab));
renderEvalTable();
makeBrowser("rollout-browser", DATA.rollouts, false);
makeBrowser("eval-browser", DATA.evals, true);
showTab("overview");
