/* unhans report: vanilla JavaScript, no network, no framework.
 *
 * Every page embeds its data as JSON in <script type="application/json" id="unhans-data">;
 * classes.js (beside the pages) defines UNHANS_CLASSES = [[class_id, class_key, class_name], ...]
 * and UNHANS_OVERLAPS = {class_id: [[cluster, members of the isolated group in it], ...]}.
 * Data strings only ever reach the page through textContent / attribute values, never as HTML.
 *
 * Curator decisions (keep / drop / relabel / review) are made per block (a cluster, or the class's
 * isolated group) or per image; an image's own decision wins over its blocks'. Where the isolated
 * group and a cluster overlap and are decided differently, the curator says per class which wins
 * ("prefer": "group" or "clusters"); a file is not exported while such a conflict is open. The
 * decisions live in localStorage under "unhans.decisions.<report id>", so they persist across the
 * pages of one report and are exported once, from any page, as the decisions file (version 2) that
 * `unhans clean --decisions` reads (docs/decisions.md). window.unhans exposes the same functions.
 */
(function () {
  "use strict";

  const DATA = JSON.parse(document.getElementById("unhans-data").textContent);
  const CLASSES = window.UNHANS_CLASSES || [];
  const OVERLAPS = window.UNHANS_OVERLAPS || {};
  const CLASS_BY_ID = new Map(CLASSES.map((c) => [c[0], c]));
  const STATE_KEY = "unhans.decisions." + DATA.report_id;
  const WHO_KEY = "unhans.decided_by";
  const CHOICES = ["keep", "drop", "relabel", "review"];
  const FORMAT = "unhans-decisions";
  const VERSION = 2;
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf"];

  // ---- storage: localStorage, or this page's memory when the browser refuses it ----------------
  const memory = {};
  let persistent = true;

  function load(key, fallback) {
    try {
      const text = window.localStorage.getItem(key);
      return text === null ? fallback : JSON.parse(text);
    } catch (e) {
      persistent = false;
      return key in memory ? memory[key] : fallback;
    }
  }

  function save(key, value) {
    memory[key] = value;
    try {
      window.localStorage.setItem(key, JSON.stringify(value));
    } catch (e) {
      persistent = false;
    }
  }

  function loadState() {
    const s = load(STATE_KEY, null);
    const ok = s && typeof s.decisions === "object" && s.decisions !== null;
    return {
      decisions: ok ? s.decisions : {},
      prefer: ok && s.prefer && typeof s.prefer === "object" ? s.prefer : {},
    };
  }

  let state = loadState();

  function keyOf(entry) {
    return entry.index !== undefined && entry.index !== null
      ? entry.class_id + "/i" + entry.index
      : entry.class_id + "/" + entry.cluster;
  }

  function getDecision(classId, cluster) {
    return state.decisions[keyOf({ class_id: classId, cluster: cluster })] || null;
  }

  function getImage(classId, index) {
    return state.decisions[keyOf({ class_id: classId, index: index })] || null;
  }

  function put(entry) {
    const k = keyOf(entry);
    if (!entry.decision) delete state.decisions[k];
    else state.decisions[k] = entry;
  }

  function commit() {
    save(STATE_KEY, state);
    refresh();
  }

  /** One decision on a block ({class_id, cluster, ...}) or an image ({class_id, index, ...});
   * decision "" removes it. */
  function setDecision(entry) {
    put(entry);
    commit();
  }

  function setPrefer(classId, which) {
    if (which) state.prefer[classId] = which;
    else delete state.prefer[classId];
    commit();
  }

  function clearAll() {
    state = { decisions: {}, prefer: {} };
    commit();
  }

  function same(a, b) {
    return a.decision === b.decision && (a.decision !== "relabel" || a.relabel_to === b.relabel_to);
  }

  /** Open and resolved overlaps: a class's group and a cluster it shares members with, decided differently. */
  function conflicts() {
    const out = [];
    for (const d of Object.values(state.decisions)) {
      if (d.cluster !== "group") continue;
      for (const [j, n] of OVERLAPS[d.class_id] || []) {
        const other = getDecision(d.class_id, j);
        if (other && !same(d, other)) {
          out.push({ class_id: d.class_id, cluster: j, shared: n, group: d, other: other,
            prefer: state.prefer[d.class_id] || null });
        }
      }
    }
    return out.sort((a, b) => a.class_id - b.class_id || a.cluster - b.cluster);
  }

  function blockOrder(d) {
    if (d.index !== undefined && d.index !== null) return [1, d.class_id, d.index];
    return [0, d.class_id, d.cluster === "group" ? -1 : Number(d.cluster)];
  }

  function sortedDecisions() {
    return Object.values(state.decisions).sort((a, b) => {
      const x = blockOrder(a);
      const y = blockOrder(b);
      return x[0] - y[0] || x[1] - y[1] || x[2] - y[2];
    });
  }

  function decidedBy() {
    return String(load(WHO_KEY, "") || "");
  }

  function exportDoc() {
    const entries = sortedDecisions().map((d) => {
      const e = { class_id: d.class_id, class_name: d.class_name };
      if (d.index !== undefined && d.index !== null) e.index = d.index;
      else e.cluster = d.cluster;
      e.decision = d.decision;
      e.relabel_to = d.decision === "relabel" ? d.relabel_to : null;
      e.note = d.note || "";
      return e;
    });
    const resolved = new Set(conflicts().filter((c) => c.prefer).map((c) => c.class_id));
    for (const c of [...resolved].sort((a, b) => a - b)) entries.push({ class_id: c, prefer: state.prefer[c] });
    return {
      format: FORMAT,
      version: VERSION,
      run: DATA.run,
      score_fingerprint: DATA.score_fingerprint,
      decided_by: decidedBy().trim(),
      exported: new Date().toISOString(),
      decisions: entries,
    };
  }

  function exportJSON() {
    return JSON.stringify(exportDoc(), null, 2) + "\n";
  }

  function fileName() {
    return "decisions-" + String(DATA.run).replace(/[^A-Za-z0-9._-]+/g, "_") + ".json";
  }

  function what(d) {
    if (d.index !== undefined && d.index !== null) return "image #" + d.index;
    return d.cluster === "group" ? "isolated group" : "cluster " + d.cluster;
  }

  function download() {
    if (!decidedBy().trim()) {
      say("Enter your name under 'decided by' first: the manifest records who decided.", false);
      const input = document.getElementById("decided-by");
      if (input) input.focus();
      return false;
    }
    const incomplete = sortedDecisions().filter((d) => d.decision === "relabel" && d.relabel_to === null);
    if (incomplete.length) {
      say("Choose the class to relabel to for class " + incomplete[0].class_id + ", " + what(incomplete[0]) + ".", false);
      return false;
    }
    const open = conflicts().filter((c) => !c.prefer);
    if (open.length) {
      const c = open[0];
      say("Class " + className(c.class_id) + ": its isolated group (" + c.group.decision + ") and cluster " + c.cluster +
        " (" + c.other.decision + ") share " + c.shared + " images; choose which wins on the class page first.", false);
      return false;
    }
    const blob = new Blob([exportJSON()], { type: "application/json" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = fileName();
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 60000);
    say("Exported " + Object.keys(state.decisions).length + " decisions as " + fileName() + ".", true);
    return true;
  }

  function importText(text) {
    let doc;
    try {
      doc = JSON.parse(text);
    } catch (e) {
      say("Not a decisions file (not valid JSON).", false);
      return 0;
    }
    if (!doc || !Array.isArray(doc.decisions)) {
      say("Not a decisions file (no 'decisions' list).", false);
      return 0;
    }
    let n = 0;
    for (const d of doc.decisions) {
      if (!d || typeof d.class_id !== "number") continue;
      if (d.prefer === "group" || d.prefer === "clusters") {
        state.prefer[d.class_id] = d.prefer;
        continue;
      }
      if (CHOICES.indexOf(d.decision) < 0) continue;
      const entry = {
        class_id: d.class_id,
        class_name: d.class_name || className(d.class_id),
        decision: d.decision,
        relabel_to: typeof d.relabel_to === "number" ? d.relabel_to : null,
        note: typeof d.note === "string" ? d.note : "",
      };
      if (typeof d.index === "number") entry.index = d.index;
      else if (d.cluster === "group" || typeof d.cluster === "number") entry.cluster = d.cluster;
      else continue;
      put(entry);
      n += 1;
    }
    if (doc.version === 1) {
      // version 1 applied entries in file order: where group and cluster overlap, the later one won
      const seen = new Map();
      doc.decisions.forEach((d, i) => d && seen.set(d.class_id + "/" + d.cluster, i));
      for (const c of conflicts()) {
        if (c.prefer) continue;
        const g = seen.get(c.class_id + "/group");
        state.prefer[c.class_id] = g > seen.get(c.class_id + "/" + c.cluster) ? "group" : "clusters";
      }
    }
    if (doc.decided_by && !decidedBy()) save(WHO_KEY, String(doc.decided_by));
    const other = doc.score_fingerprint && doc.score_fingerprint !== DATA.score_fingerprint;
    commit();
    say("Imported " + n + " decisions" + (other ? " (made on another clustering: check them)" : "") + ".", !other);
    return n;
  }

  function className(id) {
    const c = CLASS_BY_ID.get(id);
    return c ? c[2] : String(id);
  }

  function say(text, ok) {
    const el = document.getElementById("message");
    if (!el) return;
    el.textContent = text;
    el.className = "message" + (ok ? " ok" : "");
  }

  // ---- the toolbar on every page --------------------------------------------------------------
  const listeners = [];

  function refresh() {
    const n = Object.keys(state.decisions).length;
    const count = document.getElementById("decision-count");
    if (count) {
      const open = conflicts().filter((c) => !c.prefer).length;
      count.textContent = n + (n === 1 ? " decision" : " decisions") +
        (open ? ", " + open + (open === 1 ? " conflict" : " conflicts") + " to resolve" : "") +
        (persistent ? "" : " (this page only: the browser blocks storage)");
    }
    for (const fn of listeners) fn();
  }

  function initToolbar() {
    const who = document.getElementById("decided-by");
    if (who) {
      who.value = decidedBy();
      who.addEventListener("input", () => save(WHO_KEY, who.value));
    }
    const exp = document.getElementById("export");
    if (exp) exp.addEventListener("click", download);
    const imp = document.getElementById("import");
    if (imp) {
      imp.addEventListener("change", () => {
        const f = imp.files && imp.files[0];
        if (!f) return;
        const reader = new FileReader();
        reader.onload = () => importText(String(reader.result));
        reader.readAsText(f);
        imp.value = "";
      });
    }
    const clear = document.getElementById("clear");
    if (clear) {
      clear.addEventListener("click", () => {
        if (window.confirm("Forget all decisions of this report?")) clearAll();
      });
    }
    // another tab (a class page) changed the decisions: show them here too
    window.addEventListener("storage", (ev) => {
      if (ev.key === STATE_KEY) {
        state = loadState();
        refresh();
      } else if (ev.key === WHO_KEY && who) {
        who.value = decidedBy();
      }
    });
  }

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    if (attrs) for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function fmt(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(3);
    return String(v);
  }

  function relabelOptions(select, exclude) {
    select.appendChild(el("option", { value: "" }, "choose a class"));
    for (const [id, key, name] of CLASSES) {
      if (id === exclude) continue;
      select.appendChild(el("option", { value: String(id) }, name + (key !== name ? " (" + key + ")" : "")));
    }
  }

  // ---- overview: the class table from DATA.rows ----------------------------------------------
  function initIndex() {
    const cols = DATA.columns;
    const at = Object.fromEntries(cols.map((c, i) => [c, i]));
    const pages = new Set(DATA.pages);
    const strips = new Set(DATA.strips || []);
    const onlyAbove = new Set(DATA.meaningful_above_threshold || []);
    const table = document.getElementById("classes");
    const head = table.tHead.rows[0];
    const body = table.tBodies[0];
    const search = document.getElementById("search");
    const flagged = document.getElementById("flagged");
    const technical = document.getElementById("technical");
    const shown = document.getElementById("shown");
    let sortCol = "rank" in at ? "rank" : cols[0];
    let ascending = true;
    const counts = new Map();
    const headers = { ...DATA.headers };
    headers.group_look = { label: "what its group looks like", help: "the most central images of the class's " +
      "most isolated group, above their relevance heatmaps", technical: false };
    headers.decisions = { label: "decisions", help: "curator decisions on this class (blocks and images)", technical: false };
    const after = cols.indexOf("class_name") + 1;
    const all = cols.slice(0, after).concat(["group_look"], cols.slice(after), ["decisions"]);

    function visible() {
      return all.filter((c) => technical.checked || !headers[c] || !headers[c].technical);
    }

    function header() {
      head.replaceChildren();
      for (const c of visible()) {
        const h = headers[c] || { label: c, help: "" };
        const th = el("th", { scope: "col", "data-col": c, title: h.help });
        if (c === "group_look") th.appendChild(el("span", null, h.label));
        else {
          const b = el("button", { type: "button", title: h.help }, h.label);
          b.addEventListener("click", () => {
            ascending = sortCol === c ? !ascending : true;
            sortCol = c;
            render();
          });
          th.appendChild(b);
        }
        head.appendChild(th);
      }
    }

    function value(row, c) {
      return c === "decisions" ? counts.get(row[at.class_id]) || 0 : row[at[c]];
    }

    function meaningful(row, c) {
      return !onlyAbove.has(c) || ("clever_hans_score" in at && row[at.clever_hans_score] >= DATA.threshold);
    }

    function render() {
      counts.clear();
      for (const d of Object.values(state.decisions)) counts.set(d.class_id, (counts.get(d.class_id) || 0) + 1);
      const q = search.value.trim().toLowerCase();
      const onlyFlagged = flagged.checked;
      let rows = DATA.rows.filter((r) => {
        if (onlyFlagged && !r[at.is_clever_hans]) return false;
        if (!q) return true;
        return (
          String(r[at.class_name]).toLowerCase().includes(q) || String(r[at.class_key]).toLowerCase().includes(q)
        );
      });
      rows = rows.slice().sort((x, y) => {
        const a = meaningful(x, sortCol) ? value(x, sortCol) : null;
        const b = meaningful(y, sortCol) ? value(y, sortCol) : null;
        let r;
        if (a === b) r = 0;
        else if (a === null || a === undefined) return 1; // blanks last either way
        else if (b === null || b === undefined) return -1;
        else if (typeof a === "number" && typeof b === "number") r = a - b;
        else if (typeof a === "boolean" && typeof b === "boolean") r = (a ? 1 : 0) - (b ? 1 : 0);
        else r = String(a).localeCompare(String(b));
        return ascending ? r : -r;
      });
      for (const th of head.cells) {
        th.setAttribute("aria-sort", th.dataset.col === sortCol ? (ascending ? "ascending" : "descending") : "none");
      }
      const shownCols = visible();
      const frag = document.createDocumentFragment();
      for (const r of rows) {
        const tr = el("tr");
        const id = r[at.class_id];
        if (r[at.is_clever_hans]) tr.className = "flag";
        for (const c of shownCols) {
          const td = el("td");
          if (c === "group_look") {
            if (strips.has(id)) {
              // "loading" before "src": an image whose src is set first starts loading at once
              const img = el("img", { loading: "lazy", alt: "", height: "64", class: "strip",
                src: "class-" + Number(id) + "/group.png" });
              td.appendChild(img);
            }
            tr.appendChild(td);
            continue;
          }
          const v = value(r, c);
          if (typeof v === "number") td.className = "num";
          if (!meaningful(r, c)) {
            td.title = "only read where the score reaches " + DATA.threshold;
          } else if (c === "class_name" && pages.has(id)) {
            td.appendChild(el("a", { href: "class-" + Number(id) + ".html" }, fmt(v)));
          } else {
            td.textContent = c === "decisions" && !v ? "" : fmt(v);
          }
          tr.appendChild(td);
        }
        frag.appendChild(tr);
      }
      body.replaceChildren(frag);
      shown.textContent = rows.length + " of " + DATA.rows.length + " classes";
    }

    search.addEventListener("input", render);
    flagged.addEventListener("change", render);
    technical.addEventListener("change", () => {
      header();
      render();
    });
    listeners.push(render, renderDecisionList);
    header();
    render();
    renderDecisionList();
  }

  function renderDecisionList() {
    const table = document.getElementById("decisions");
    if (!table) return;
    const body = table.tBodies[0];
    const open = new Set();
    for (const c of conflicts().filter((c) => !c.prefer)) open.add(c.class_id + "/" + c.cluster).add(c.class_id + "/group");
    const frag = document.createDocumentFragment();
    for (const d of sortedDecisions()) {
      const tr = el("tr");
      const name = el("td");
      name.appendChild(el("a", { href: "class-" + Number(d.class_id) + ".html" }, d.class_name || className(d.class_id)));
      tr.appendChild(name);
      const w = el("td", null, what(d));
      if (open.has(d.class_id + "/" + d.cluster)) {
        w.appendChild(el("span", { class: "badge conflict", title: "overlaps a block decided differently: choose which wins on the class page" }, "conflict"));
      }
      tr.appendChild(w);
      tr.appendChild(el("td", null, d.decision));
      tr.appendChild(el("td", null, d.decision === "relabel" && d.relabel_to !== null ? className(d.relabel_to) : ""));
      tr.appendChild(el("td", null, d.note || ""));
      const rm = el("button", { type: "button", class: "remove" }, "remove");
      rm.addEventListener("click", () => setDecision({ ...d, decision: "" }));
      const td = el("td");
      td.appendChild(rm);
      tr.appendChild(td);
      frag.appendChild(tr);
    }
    body.replaceChildren(frag);
    table.hidden = Object.keys(state.decisions).length === 0;
  }

  // ---- class page ------------------------------------------------------------------------------
  const selected = new Set(); // member positions (rows of DATA.members)
  let MEMBERS = [];

  function effective(m) {
    const c = DATA.class_id;
    const img = getImage(c, m.index);
    if (img) return { d: img, by: "image" };
    const g = m.group ? getDecision(c, "group") : null;
    const cl = getDecision(c, m.cluster);
    if (g && cl && !same(g, cl)) {
      const p = state.prefer[c];
      if (!p) return { d: null, by: "conflict" };
      return p === "group" ? { d: g, by: "group" } : { d: cl, by: "cluster " + m.cluster };
    }
    if (g) return { d: g, by: "group" };
    if (cl) return { d: cl, by: "cluster " + m.cluster };
    return { d: { decision: m.flag ? DATA.flagged_decision : "keep" }, by: "automatic" };
  }

  function initClass() {
    const fields = DATA.fields;
    MEMBERS = DATA.members.map((row, pos) => {
      const m = { pos: pos };
      fields.forEach((f, i) => (m[f] = row[i]));
      return m;
    });
    for (const block of DATA.blocks) {
      const root = document.getElementById("block-" + block.cluster);
      if (!root) continue;
      initDecision(root, block);
    }
    const grid = initMembers();
    initSelection(grid);
    initEmbedding(grid);
    initConflicts();
  }

  function initDecision(root, block) {
    const box = root.querySelector(".decide");
    const choice = box.querySelector("select.decision");
    const relabelBox = box.querySelector(".relabel");
    const target = box.querySelector("select.relabel-to");
    const note = box.querySelector("input.note");
    relabelOptions(target, DATA.class_id);

    function show() {
      const d = getDecision(DATA.class_id, block.cluster);
      choice.value = d ? d.decision : "";
      if (d) {
        target.value = d.relabel_to !== null && d.relabel_to !== undefined ? String(d.relabel_to) : "";
        if (note.value !== (d.note || "")) note.value = d.note || ""; // keeps the caret while typing
      }
      relabelBox.hidden = choice.value !== "relabel";
      box.classList.toggle("set", !!d);
    }

    function store() {
      const decision = choice.value;
      setDecision({
        class_id: DATA.class_id,
        class_name: DATA.class_name,
        cluster: block.cluster,
        decision: decision,
        relabel_to: decision === "relabel" && target.value !== "" ? Number(target.value) : null,
        note: note.value,
      });
    }

    choice.addEventListener("change", store);
    target.addEventListener("change", store);
    note.addEventListener("input", () => {
      if (choice.value) store(); // a note typed before the decision is kept until one is chosen
    });
    const showMembers = root.querySelector("button.show-members");
    if (showMembers) {
      showMembers.addEventListener("click", () => {
        const f = document.getElementById("filter-block");
        f.value = String(block.cluster);
        f.dispatchEvent(new Event("change"));
        document.getElementById("members").scrollIntoView();
      });
    }
    listeners.push(show);
    show();
  }

  /** A tile cut from the sprite sheet holding member `pos`: column 0 the image, 1 the heatmap. The
   *  sheet's tiles may be smaller than the display size (small images are stored at their own size);
   *  the sheet is scaled to two display tiles wide. */
  function spriteTile(pos, column, cls) {
    const T = DATA.thumb;
    const P = DATA.page_size;
    const d = el("div", { class: cls || "" });
    d.style.width = T + "px";
    d.style.height = T + "px";
    d.style.backgroundImage = "url(" + DATA.sprite_prefix + Math.floor(pos / P) + ".png)";
    d.style.backgroundSize = 2 * T + "px auto";
    d.style.imageRendering = "pixelated";
    d.style.backgroundPosition = -column * T + "px " + -(pos % P) * T + "px";
    return d;
  }

  function badge(text, cls, title) {
    return el("span", { class: "badge " + cls, title: title || "" }, text);
  }

  function initMembers() {
    const T = DATA.thumb;
    const P = DATA.page_size;
    const root = document.getElementById("members");
    const grid = root.querySelector(".members");
    const info = root.querySelector(".page-info");
    const prev = root.querySelector("button.prev");
    const next = root.querySelector("button.next");
    const shown = document.getElementById("members-shown");
    const sort = document.getElementById("sort");
    const fBlock = document.getElementById("filter-block");
    const fFlag = document.getElementById("filter-flag");
    const fScore = document.getElementById("filter-score");
    const fDecided = document.getElementById("filter-decided");
    let page = 0;
    let rows = [];

    function filtered() {
      const min = fScore.value === "" ? null : Number(fScore.value);
      const out = MEMBERS.filter((m) => {
        if (fBlock.value === "group" && !m.group) return false;
        if (fBlock.value !== "" && fBlock.value !== "group" && m.cluster !== Number(fBlock.value)) return false;
        if (fFlag.value !== "" && m.flag !== Number(fFlag.value)) return false;
        if (min !== null && !(m.score >= min)) return false;
        if (fDecided.value === "image" && !getImage(DATA.class_id, m.index)) return false;
        if (fDecided.value === "none" && effective(m).by !== "automatic") return false;
        if (fDecided.value === "selected" && !selected.has(m.pos)) return false;
        return true;
      });
      const by = sort.value;
      if (by === "score-asc") out.sort((a, b) => a.score - b.score || a.pos - b.pos);
      else if (by === "cluster") out.sort((a, b) => a.cluster - b.cluster || a.central - b.central);
      else if (by === "index") out.sort((a, b) => a.index - b.index);
      return out; // members are stored by falling score: that order needs no sort
    }

    function member(m) {
      const fig = el("figure", { class: "member" + (m.flag ? " flagged" : ""), "data-index": String(m.index),
        "data-pos": String(m.pos) });
      fig.style.setProperty("--w", 3 * T + 4 + "px");
      fig.title = "sample " + m.index + ": " + m.source;
      const tiles = el("div", { class: "tiles" });
      const image = spriteTile(m.pos, 0, "tile");
      const heat = spriteTile(m.pos, 1, "tile");
      const overlay = el("div", { class: "tile" });
      overlay.style.width = T + "px";
      overlay.style.height = T + "px";
      overlay.appendChild(spriteTile(m.pos, 0, "grey"));
      overlay.appendChild(spriteTile(m.pos, 1, "heat"));
      tiles.append(image, heat, overlay);
      fig.appendChild(tiles);
      const meta = el("div", { class: "meta" });
      const pick = el("input", { type: "checkbox", class: "pick", "aria-label": "select sample " + m.index });
      pick.checked = selected.has(m.pos);
      meta.appendChild(pick);
      meta.appendChild(el("span", { class: "swatch", style: "background:" + PALETTE[m.cluster % PALETTE.length],
        title: "cluster " + m.cluster }));
      meta.appendChild(el("span", { class: "score", title: "sample score" }, m.score.toFixed(2)));
      if (m.flag) meta.appendChild(badge("flagged", "flag", "flagged: dropped automatically unless decided otherwise"));
      if (m.group) meta.appendChild(badge("group", "group", "in the class's most isolated group"));
      const e = effective(m);
      const text = e.d ? e.d.decision + (e.d.decision === "relabel" && e.d.relabel_to !== null ? " \u2192 " +
        className(e.d.relabel_to) : "") : "?";
      meta.appendChild(badge(text + " \u00b7 " + e.by, "decision " + (e.by === "automatic" ? "auto" : e.by === "conflict" ? "conflict" : "set"),
        e.by === "conflict" ? "its group and its cluster are decided differently: choose which wins above" : "decision and who made it"));
      fig.appendChild(meta);
      fig.appendChild(el("figcaption", null, "#" + m.index + " " + m.name));
      fig.classList.toggle("selected", selected.has(m.pos));
      return fig;
    }

    function render() {
      const pages = Math.max(1, Math.ceil(rows.length / P));
      page = Math.min(Math.max(page, 0), pages - 1);
      const frag = document.createDocumentFragment();
      for (const m of rows.slice(page * P, (page + 1) * P)) frag.appendChild(member(m));
      grid.replaceChildren(frag);
      info.textContent = "page " + (page + 1) + " of " + pages + " (" + rows.length + " members)";
      prev.disabled = page === 0;
      next.disabled = page >= pages - 1;
      shown.textContent = rows.length + " of " + MEMBERS.length + " members shown";
    }

    function update() {
      rows = filtered();
      render();
    }

    function again() {
      page = 0;
      update();
    }

    grid.addEventListener("click", (ev) => {
      const fig = ev.target.closest("figure.member");
      if (!fig) return;
      const pos = Number(fig.dataset.pos);
      const on = ev.target.classList.contains("pick") ? ev.target.checked : !selected.has(pos);
      if (on) selected.add(pos);
      else selected.delete(pos);
      selectionChanged();
    });
    prev.addEventListener("click", () => {
      page -= 1;
      render();
    });
    next.addEventListener("click", () => {
      page += 1;
      render();
    });
    for (const c of [sort, fBlock, fFlag, fDecided]) c.addEventListener("change", again);
    fScore.addEventListener("input", again);
    listeners.push(update);
    update();
    /** The selection changed: mark the tiles in place (or refilter when showing the selection only). */
    function markSelection() {
      if (fDecided.value === "selected") return update();
      for (const fig of grid.children) {
        const on = selected.has(Number(fig.dataset.pos));
        fig.classList.toggle("selected", on);
        fig.querySelector("input.pick").checked = on;
      }
    }

    return {
      pageMembers: () => rows.slice(page * P, (page + 1) * P),
      shownMembers: () => rows,
      markSelection: markSelection,
    };
  }

  const selectionListeners = [];

  function selectionChanged() {
    for (const fn of selectionListeners) fn();
  }

  function select(positions, add) {
    if (!add) selected.clear();
    for (const p of positions) selected.add(p);
    selectionChanged();
  }

  function decideSelected(decision, relabelTo, note) {
    const n = selected.size;
    for (const pos of selected) {
      const m = MEMBERS[pos];
      put({ class_id: DATA.class_id, class_name: DATA.class_name, index: m.index, decision: decision,
        relabel_to: decision === "relabel" ? relabelTo : null, note: note || "" });
    }
    commit();
    return n;
  }

  function initSelection(grid) {
    const count = document.getElementById("selected-count");
    const choice = document.getElementById("selection-decision");
    const target = document.getElementById("selection-relabel");
    const note = document.getElementById("selection-note");
    relabelOptions(target, DATA.class_id);
    choice.addEventListener("change", () => {
      target.closest("label").hidden = choice.value !== "relabel";
    });
    document.getElementById("select-page").addEventListener("click", () =>
      select(grid.pageMembers().map((m) => m.pos), true));
    document.getElementById("select-shown").addEventListener("click", () =>
      select(grid.shownMembers().map((m) => m.pos), true));
    document.getElementById("select-none").addEventListener("click", () => select([], false));
    document.getElementById("selection-apply").addEventListener("click", () => {
      if (!selected.size) return say("Select images first: click them, or drag a box in the embedding.", false);
      if (!choice.value) return say("Choose the decision for the selected images.", false);
      if (choice.value === "relabel" && target.value === "") return say("Choose the class to relabel them to.", false);
      const n = decideSelected(choice.value, target.value === "" ? null : Number(target.value), note.value);
      say("Decided " + choice.value + " for " + n + (n === 1 ? " image." : " images."), true);
    });
    document.getElementById("selection-undo").addEventListener("click", () => {
      let n = 0;
      for (const pos of selected) {
        const m = MEMBERS[pos];
        if (getImage(DATA.class_id, m.index)) n += 1;
        put({ class_id: DATA.class_id, index: m.index, decision: "" });
      }
      commit();
      say("Removed the image decisions of " + n + (n === 1 ? " image." : " images."), true);
    });
    selectionListeners.push(() => {
      count.textContent = selected.size + (selected.size === 1 ? " image selected" : " images selected");
      grid.markSelection();
    });
    selectionChanged();
  }

  function scoreColour(s, lo, hi) {
    const t = hi > lo ? Math.min(Math.max((s - lo) / (hi - lo), 0), 1) : 0;
    const c = (a, b) => Math.round(a + t * (b - a));
    return "rgb(" + c(230, 200) + "," + c(230, 20) + "," + c(230, 20) + ")";
  }

  function initEmbedding() {
    const holder = document.getElementById("embedding");
    const legend = document.getElementById("embedding-legend");
    const colourBy = document.getElementById("colour-by");
    const NS = "http://www.w3.org/2000/svg";
    const S = 340;
    const pad = 10;
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("width", S);
    svg.setAttribute("height", S);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "2-D embedding of the explanations");
    const box = document.createElementNS(NS, "rect");
    box.setAttribute("class", "box");
    box.setAttribute("visibility", "hidden");
    const xy = (m) => [pad + m.x * (S - 2 * pad), S - pad - m.y * (S - 2 * pad)];
    const dots = MEMBERS.map((m) => {
      const c = document.createElementNS(NS, "circle");
      const [x, y] = xy(m);
      c.setAttribute("cx", x.toFixed(1));
      c.setAttribute("cy", y.toFixed(1));
      c.setAttribute("r", m.group ? 4 : 2.5);
      c.setAttribute("class", m.group ? "ringed" : "");
      c.dataset.pos = String(m.pos);
      svg.appendChild(c);
      return c;
    });
    svg.appendChild(box);
    holder.appendChild(svg);
    const hover = el("div", { class: "hover", hidden: "" });
    document.body.appendChild(hover);
    const scores = MEMBERS.map((m) => m.score);
    const lo = Math.min(...scores);
    const hi = Math.max(...scores);

    function colour() {
      const by = colourBy.value;
      for (const m of MEMBERS) {
        const f = by === "score" ? scoreColour(m.score, lo, hi) : PALETTE[m[by] % PALETTE.length];
        dots[m.pos].setAttribute("fill", f);
      }
      legend.replaceChildren();
      if (by === "score") {
        legend.appendChild(el("span", null, "sample score " + lo.toFixed(2) + " "));
        legend.appendChild(el("span", { class: "score-ramp" }));
        legend.appendChild(el("span", null, " " + hi.toFixed(2)));
        return;
      }
      const labels = [...new Set(MEMBERS.map((m) => m[by]))].sort((a, b) => a - b);
      const inGroup = MEMBERS.find((m) => m.group);
      for (const j of labels) {
        const s = el("span");
        s.appendChild(el("span", { class: "swatch", style: "background:" + PALETTE[j % PALETTE.length] }));
        const isGroup = by === "scored" && inGroup && inGroup.scored === j;
        s.appendChild(document.createTextNode("cluster " + j + (isGroup ? " (the isolated group)" : "")));
        legend.appendChild(s);
      }
    }

    function marks() {
      for (const m of MEMBERS) dots[m.pos].classList.toggle("sel", selected.has(m.pos));
    }

    svg.addEventListener("mouseover", (ev) => {
      const pos = ev.target.dataset ? ev.target.dataset.pos : undefined;
      if (pos === undefined) return;
      const m = MEMBERS[Number(pos)];
      const tiles = el("div", { class: "tiles" });
      tiles.append(spriteTile(m.pos, 0, "tile"), spriteTile(m.pos, 1, "tile"));
      hover.replaceChildren(tiles, el("div", null, "#" + m.index + " " + m.name),
        el("div", null, "score " + m.score.toFixed(2) + (m.flag ? ", flagged" : "") + (m.group ? ", in the group" : "") +
          ", cluster " + m.cluster));
      const r = ev.target.getBoundingClientRect();
      hover.style.left = window.scrollX + r.right + 8 + "px";
      hover.style.top = window.scrollY + r.top + 8 + "px";
      hover.hidden = false;
    });
    svg.addEventListener("mouseout", (ev) => {
      if (ev.target.dataset && ev.target.dataset.pos !== undefined) hover.hidden = true;
    });

    let start = null;
    let startDot;
    function point(ev) {
      const r = svg.getBoundingClientRect();
      return [ev.clientX - r.left, ev.clientY - r.top];
    }
    function rect(a, b) {
      return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.abs(a[0] - b[0]), Math.abs(a[1] - b[1])];
    }
    svg.addEventListener("pointerdown", (ev) => {
      start = point(ev);
      startDot = ev.target.dataset ? ev.target.dataset.pos : undefined;
      svg.setPointerCapture(ev.pointerId);
      ev.preventDefault();
    });
    svg.addEventListener("pointermove", (ev) => {
      if (!start) return;
      const [x, y, w, h] = rect(start, point(ev));
      box.setAttribute("x", x);
      box.setAttribute("y", y);
      box.setAttribute("width", w);
      box.setAttribute("height", h);
      box.setAttribute("visibility", "visible");
    });
    svg.addEventListener("pointerup", (ev) => {
      if (!start) return;
      const [x, y, w, h] = rect(start, point(ev));
      start = null;
      box.setAttribute("visibility", "hidden");
      if (w < 3 && h < 3) {
        if (startDot === undefined) return;
        const p = Number(startDot);
        if (selected.has(p)) selected.delete(p);
        else selected.add(p);
        selectionChanged();
        return;
      }
      const inside = MEMBERS.filter((m) => {
        const [px, py] = xy(m);
        return px >= x && px <= x + w && py >= y && py <= y + h;
      }).map((m) => m.pos);
      select(inside, ev.shiftKey);
      say(inside.length + " images selected in the embedding: decide for them in the bar above.", true);
    });
    colourBy.addEventListener("change", colour);
    selectionListeners.push(marks);
    colour();
    marks();
  }

  function initConflicts() {
    const panel = document.getElementById("conflicts");

    function show() {
      const mine = conflicts().filter((c) => c.class_id === DATA.class_id);
      panel.hidden = mine.length === 0;
      if (!mine.length) return;
      const prefer = state.prefer[DATA.class_id] || null;
      const items = el("ul");
      for (const c of mine) {
        items.appendChild(el("li", null, "the isolated group is decided " + c.group.decision + ", cluster " + c.cluster +
          " " + c.other.decision + ": " + c.shared + (c.shared === 1 ? " image is" : " images are") + " in both"));
      }
      const head = el("p");
      head.appendChild(el("b", null, prefer ? "Overlap resolved: " : "Conflict to resolve: "));
      head.appendChild(document.createTextNode(prefer === "group" ? "the group's decision wins for the images in both."
        : prefer === "clusters" ? "the clusters' decisions win for the images in both."
          : "which decision wins for the images in both? (Decisions on single images win over both.)"));
      const buttons = el("p");
      for (const [v, label] of [["group", "the group wins"], ["clusters", "the clusters win"]]) {
        const b = el("button", { type: "button", "data-prefer": v, "aria-pressed": String(prefer === v) }, label);
        b.addEventListener("click", () => setPrefer(DATA.class_id, v));
        buttons.appendChild(b);
      }
      panel.classList.toggle("open", !prefer);
      panel.replaceChildren(head, items, buttons);
    }

    listeners.push(show);
    show();
  }

  window.unhans = { exportJSON, exportDoc, importText, download, getDecision, getImage, setDecision, setPrefer,
    clearAll, conflicts, select, decideSelected, selected: () => [...selected].map((p) => MEMBERS[p].index) };

  initToolbar();
  if (DATA.page === "index") initIndex();
  else if (DATA.page === "class") initClass();
  refresh();
})();
