// The docrerank dataset viewer: reads data/meta.js (funnel, filter values, per-shard counts) and loads one shard of
// pages at a time (data/shard-NNNNN.js, through <script> tags: browsers refuse fetch() of file:// URLs).
// Filters and the current shard live in the URL's #fragment, so a view can be bookmarked or shared.
"use strict";
(function () {
  const meta = window.docrerankMeta;
  const loaded = {};
  const waiting = {};
  const state = { attribute: "", verdict: "", status: "", shard: 0 };
  const $ = (id) => document.getElementById(id);

  window.docrerankShard = function (i, data) {
    loaded[i] = data;
    (waiting[i] || []).forEach((cb) => cb(data));
    delete waiting[i];
  };

  function showError(msg) {
    const e = $("error");
    e.textContent = msg;
    e.hidden = false;
  }

  function el(tag, attrs, children) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") n.textContent = v;
      else if (v !== undefined && v !== null) n.setAttribute(k, v);
    }
    for (const c of children || []) if (c) n.appendChild(c);
    return n;
  }

  function loadShard(i, cb) {
    if (loaded[i]) return cb(loaded[i]);
    if (waiting[i]) return waiting[i].push(cb);
    waiting[i] = [cb];
    const s = document.createElement("script");
    s.src = meta.shards[i].file;
    s.onerror = () => showError("could not load " + meta.shards[i].file);
    document.body.appendChild(s);
  }

  // --- filters --------------------------------------------------------------------------------------
  function negMatches(n) {
    if (state.attribute && n.attribute !== state.attribute) return false;
    if (state.verdict) {
      const [v, r] = state.verdict.split(":");
      if (n.verdict !== v) return false;
      if (r !== undefined && (n.reason || "") !== r) return false;
    }
    return true;
  }
  const negFilter = () => !!(state.attribute || state.verdict);

  function countMatches(counts) {
    let pages = state.status ? counts["status|" + state.status] || 0 : Infinity;
    if (!negFilter()) return pages;
    let negs = 0;
    for (const [k, c] of Object.entries(counts)) {
      if (!k.startsWith("neg|")) continue;
      const [, attribute, verdict, reason] = k.split("|");
      if (negMatches({ attribute, verdict, reason })) negs += c;
    }
    return pages > 0 ? negs : 0;
  }
  const shardMatches = (i) => countMatches(meta.shards[i].counts) > 0;

  function pageMatches(p) {
    if (state.status && p.status !== state.status) return false;
    if (!negFilter()) return true;
    return p.positives.some((q) => q.negatives.some(negMatches)) || p.orphans.some(negMatches);
  }

  function fillSelect(select, options, value) {
    select.replaceChildren(...options.map(([v, label]) => el("option", { value: v, text: label })));
    select.value = value;
  }

  function setupFilters() {
    const attrs = {}, verdicts = {}, statuses = {};
    for (const [k, c] of Object.entries(meta.totals)) {
      const parts = k.split("|");
      if (parts[0] === "status") statuses[parts[1]] = c;
      else {
        attrs[parts[1]] = (attrs[parts[1]] || 0) + c;
        verdicts[parts[2]] = (verdicts[parts[2]] || 0) + c;
        if (parts[2] !== "kept") verdicts[parts[2] + ":" + parts[3]] = (verdicts[parts[2] + ":" + parts[3]] || 0) + c;
      }
    }
    const opts = (o, unit) => Object.keys(o).sort().map((k) => [k, `${k.replace(":", ": ")} (${o[k]} ${unit})`]);
    fillSelect($("f-attribute"), [["", "all"], ...opts(attrs, "negatives")], state.attribute);
    fillSelect($("f-verdict"), [["", "all"], ...opts(verdicts, "negatives")], state.verdict);
    fillSelect($("f-status"), [["", "all"], ...opts(statuses, "pages")], state.status);
    for (const [id, key] of [["f-attribute", "attribute"], ["f-verdict", "verdict"], ["f-status", "status"]]) {
      $(id).addEventListener("change", (e) => {
        state[key] = e.target.value;
        state.shard = firstMatching(0, 1);
        update();
      });
    }
    $("prev").addEventListener("click", () => { state.shard = firstMatching(state.shard - 1, -1); update(); });
    $("next").addEventListener("click", () => { state.shard = firstMatching(state.shard + 1, 1); update(); });
  }

  // The next shard from ``i`` (in direction ``step``) that holds something the filters match, or ``i`` clamped.
  function firstMatching(i, step) {
    for (let j = i; j >= 0 && j < meta.shards.length; j += step) if (shardMatches(j)) return j;
    return Math.max(0, Math.min(state.shard, meta.shards.length - 1));
  }

  // --- the URL fragment -----------------------------------------------------------------------------
  function readHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    for (const k of ["attribute", "verdict", "status"]) state[k] = h.get(k) || "";
    state.shard = Math.max(0, Math.min(parseInt(h.get("shard") || "0", 10) || 0, meta.shards.length - 1));
  }
  function writeHash() {
    const h = new URLSearchParams();
    for (const k of ["attribute", "verdict", "status"]) if (state[k]) h.set(k, state[k]);
    if (state.shard) h.set("shard", String(state.shard));
    history.replaceState(null, "", "#" + h.toString());
  }

  // --- rendering ------------------------------------------------------------------------------------
  const score = (v) => (v === null || v === undefined ? "-" : v.toFixed(2));
  const PA = "p(answerable) by verifier prompt A", PB = "p(answerable) by verifier prompt B";

  function negativesTable(negs) {
    const head = el("tr", {}, [["negative candidate"], ["attribute"], ["p A", PA], ["p B", PB], ["verdict"], ["reason"]].map(
      ([h, title]) => el("th", { text: h, title })));
    const rows = negs.map((n) => el("tr", { class: n.verdict === "kept" ? "kept" : "rejected" }, [
      el("td", { class: "text", text: n.text }),
      el("td", { class: "attribute", text: n.attribute }),
      el("td", { class: "num", text: score(n.pa) }),
      el("td", { class: "num", text: score(n.pb) }),
      el("td", { class: "verdict", text: n.verdict }),
      el("td", { class: "reason", text: n.reason || "" }),
    ]));
    return el("table", { class: "negatives" }, [el("thead", {}, [head]), el("tbody", {}, rows)]);
  }

  function positiveBlock(q) {
    const negs = negFilter() ? q.negatives.filter(negMatches) : q.negatives;
    if (negFilter() && !negs.length) return null;
    const line = el("div", { class: "q" }, [
      el("span", { class: "text", text: q.text }),
      el("span", { class: "badge", text: q.origin }),
      el("span", { class: "badge", text: "p A " + score(q.pa), title: PA }),
      el("span", { class: "badge", text: "p B " + score(q.pb), title: PB }),
      el("span", { class: "badge verdict", text: q.verdict + (q.reason ? ": " + q.reason : "") }),
    ]);
    return el("div", { class: "positive" }, [
      line,
      q.answer ? el("div", { class: "answer", text: "answer: " + q.answer }) : null,
      negs.length ? negativesTable(negs) : el("div", { class: "empty", text: "no negative candidates" }),
    ]);
  }

  function pageCard(p) {
    const img = p.thumb
      ? el("img", { class: "thumb", src: p.thumb, loading: "lazy", alt: `${p.doc} page ${p.page}` })
      : el("div", { class: "nothumb", text: "no image" });
    const title = el("h3", {}, [
      el("span", { text: `${p.doc} \u2014 page ${p.page}${p.pages ? " of " + p.pages : ""}` }),
      el("span", { class: "status status-" + p.status, text: p.status }),
    ]);
    const blocks = p.positives.map(positiveBlock).filter(Boolean);
    if (!p.positives.length) blocks.push(el("div", { class: "empty", text: "no positive candidate for this page" }));
    const orphans = negFilter() ? p.orphans.filter(negMatches) : p.orphans;
    if (orphans.length) blocks.push(el("div", { class: "positive" }, [
      el("div", { class: "empty", text: "negatives whose positive is not on this page" }), negativesTable(orphans)]));
    return el("article", { class: "page", id: "page-" + p.id, "data-page-id": p.id },
      [img, el("div", { class: "body" }, [title, ...blocks])]);
  }

  function update() {
    writeHash();
    const i = state.shard;
    const s = meta.shards[i];
    const start = i * meta.pages_per_shard;
    $("position").textContent = `part ${i + 1} of ${meta.shards.length} (pages ${start + 1}\u2013${start + s.pages} of ${meta.pages})`;
    $("prev").disabled = firstMatching(i - 1, -1) >= i;
    $("next").disabled = firstMatching(i + 1, 1) <= i;
    for (const id of ["f-attribute", "f-verdict", "f-status"]) $(id).value = state[id.slice(2)];
    const total = negFilter() ? meta.shards.reduce((a, sh) => a + countMatches(sh.counts), 0) : 0;
    loadShard(i, (data) => {
      if (state.shard !== i) return;  // the user moved on while it loaded
      const pages = data.pages.filter(pageMatches);
      $("pages").replaceChildren(...pages.map(pageCard));
      const what = negFilter() ? `; ${total} matching negatives in the whole dataset` : "";
      $("shown").textContent = `${pages.length} of ${data.pages.length} pages of this part shown${what}`;
      document.body.setAttribute("data-ready", "shard-" + i);
    });
  }

  function overview() {
    $("title").textContent = meta.title;
    $("source").textContent = `${meta.source}: ${meta.pages} pages, ${meta.shards.length} parts of up to ${meta.pages_per_shard}`;
    $("funnel").replaceChildren(el("tr", {}, [el("th", { text: "funnel" }), el("th", { text: "count" })]),
      ...meta.funnel.map(([k, v]) => el("tr", {}, [el("td", { text: k }), el("td", { text: String(v) })])));
    const cols = ["candidates", "after_dedup", "verified", "kept"];
    $("attributes").replaceChildren(
      el("tr", {}, ["attribute", "candidates", "after dedup", "verified", "kept"].map((h) => el("th", { text: h }))),
      ...Object.entries(meta.by_attribute).map(([a, c]) =>
        el("tr", {}, [el("td", { text: a }), ...cols.map((k) => el("td", { text: String(c[k] || 0) }))])));
  }

  if (!meta) {
    showError("data/meta.js is missing: write the viewer with `docrerank view <build output>`");
    return;
  }
  overview();
  readHash();
  setupFilters();
  if (!meta.shards.length) {
    $("shown").textContent = "the build holds no finished page";
    return;
  }
  state.shard = shardMatches(state.shard) ? state.shard : firstMatching(0, 1);
  update();
})();
