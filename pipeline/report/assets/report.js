/* unhans report: vanilla JavaScript, no network, no framework.
 *
 * Every page embeds its data as JSON in <script type="application/json" id="unhans-data">;
 * classes.js (beside the pages) defines UNHANS_CLASSES = [[class_id, class_key, class_name], ...].
 * Data strings only ever reach the page through textContent / attribute values, never as HTML.
 *
 * Curator decisions (one per cluster: keep / drop / relabel / review) live in localStorage under
 * "unhans.decisions.<report id>", so they persist across the class pages of one report and can be
 * exported once, from any page, as the decisions file that `unhans clean --decisions` reads
 * (format: docs/decisions.md). window.unhans exposes the same functions to tests.
 */
(function () {
  "use strict";

  const DATA = JSON.parse(document.getElementById("unhans-data").textContent);
  const CLASSES = window.UNHANS_CLASSES || [];
  const CLASS_BY_ID = new Map(CLASSES.map((c) => [c[0], c]));
  const STATE_KEY = "unhans.decisions." + DATA.report_id;
  const WHO_KEY = "unhans.decided_by";
  const CHOICES = ["keep", "drop", "relabel", "review"];
  const FORMAT = "unhans-decisions";
  const VERSION = 1;

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

  let state = load(STATE_KEY, { decisions: {} });
  if (!state || typeof state.decisions !== "object" || state.decisions === null) state = { decisions: {} };

  function keyOf(classId, cluster) {
    return classId + "/" + cluster;
  }

  function getDecision(classId, cluster) {
    return state.decisions[keyOf(classId, cluster)] || null;
  }

  function setDecision(entry) {
    const k = keyOf(entry.class_id, entry.cluster);
    if (!entry.decision) delete state.decisions[k];
    else state.decisions[k] = entry;
    save(STATE_KEY, state);
    refresh();
  }

  function clearAll() {
    state = { decisions: {} };
    save(STATE_KEY, state);
    refresh();
  }

  function clusterOrder(c) {
    return c === "group" ? -1 : Number(c);
  }

  function sortedDecisions() {
    return Object.values(state.decisions).sort(
      (a, b) => a.class_id - b.class_id || clusterOrder(a.cluster) - clusterOrder(b.cluster)
    );
  }

  function decidedBy() {
    return String(load(WHO_KEY, "") || "");
  }

  function exportDoc() {
    return {
      format: FORMAT,
      version: VERSION,
      run: DATA.run,
      score_fingerprint: DATA.score_fingerprint,
      decided_by: decidedBy().trim(),
      exported: new Date().toISOString(),
      decisions: sortedDecisions().map((d) => ({
        class_id: d.class_id,
        class_name: d.class_name,
        cluster: d.cluster,
        decision: d.decision,
        relabel_to: d.decision === "relabel" ? d.relabel_to : null,
        note: d.note || "",
      })),
    };
  }

  function exportJSON() {
    return JSON.stringify(exportDoc(), null, 2) + "\n";
  }

  function fileName() {
    return "decisions-" + String(DATA.run).replace(/[^A-Za-z0-9._-]+/g, "_") + ".json";
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
      say("Choose the class to relabel to for class " + incomplete[0].class_id + ", cluster " + incomplete[0].cluster + ".", false);
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
      if (!d || typeof d.class_id !== "number" || CHOICES.indexOf(d.decision) < 0) continue;
      if (d.cluster !== "group" && typeof d.cluster !== "number") continue;
      state.decisions[keyOf(d.class_id, d.cluster)] = {
        class_id: d.class_id,
        class_name: d.class_name || className(d.class_id),
        cluster: d.cluster,
        decision: d.decision,
        relabel_to: typeof d.relabel_to === "number" ? d.relabel_to : null,
        note: typeof d.note === "string" ? d.note : "",
      };
      n += 1;
    }
    save(STATE_KEY, state);
    if (doc.decided_by && !decidedBy()) save(WHO_KEY, String(doc.decided_by));
    const other = doc.score_fingerprint && doc.score_fingerprint !== DATA.score_fingerprint;
    say("Imported " + n + " decisions" + (other ? " (made on another clustering: check them)" : "") + ".", !other);
    refresh();
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
      count.textContent = n + (n === 1 ? " decision" : " decisions") + (persistent ? "" : " (this page only: the browser blocks storage)");
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
        state = load(STATE_KEY, { decisions: {} });
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

  // ---- overview: the class table from DATA.rows ----------------------------------------------
  function initIndex() {
    const cols = DATA.columns;
    const at = Object.fromEntries(cols.map((c, i) => [c, i]));
    const pages = new Set(DATA.pages);
    const table = document.getElementById("classes");
    const head = table.tHead.rows[0];
    const body = table.tBodies[0];
    const search = document.getElementById("search");
    const flagged = document.getElementById("flagged");
    const shown = document.getElementById("shown");
    let sortCol = "rank" in at ? "rank" : cols[0];
    let ascending = true;
    const counts = new Map();

    const headers = cols.concat(["decisions"]);
    for (const c of headers) {
      const th = el("th", { scope: "col", "data-col": c });
      const b = el("button", { type: "button" }, c.replace(/_/g, "_\u200b")); // may wrap after "_"
      b.addEventListener("click", () => {
        ascending = sortCol === c ? !ascending : true;
        sortCol = c;
        render();
      });
      th.appendChild(b);
      head.appendChild(th);
    }

    function value(row, c) {
      return c === "decisions" ? counts.get(row[at.class_id]) || 0 : row[at[c]];
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
        const a = value(x, sortCol);
        const b = value(y, sortCol);
        let r;
        if (a === b) r = 0;
        else if (a === null || a === undefined) r = 1;
        else if (b === null || b === undefined) r = -1;
        else if (typeof a === "number" && typeof b === "number") r = a - b;
        else if (typeof a === "boolean" && typeof b === "boolean") r = (a ? 1 : 0) - (b ? 1 : 0);
        else r = String(a).localeCompare(String(b));
        return ascending ? r : -r;
      });
      for (const th of head.cells) {
        th.setAttribute("aria-sort", th.dataset.col === sortCol ? (ascending ? "ascending" : "descending") : "none");
      }
      const frag = document.createDocumentFragment();
      for (const r of rows) {
        const tr = el("tr");
        if (r[at.is_clever_hans]) tr.className = "flag";
        for (const c of headers) {
          const v = value(r, c);
          const td = el("td");
          if (typeof v === "number") td.className = "num";
          if (c === "class_name" && pages.has(r[at.class_id])) {
            td.appendChild(el("a", { href: "class-" + Number(r[at.class_id]) + ".html" }, fmt(v)));
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
    listeners.push(render, renderDecisionList);
    render();
    renderDecisionList();
  }

  function renderDecisionList() {
    const table = document.getElementById("decisions");
    if (!table) return;
    const body = table.tBodies[0];
    const frag = document.createDocumentFragment();
    for (const d of sortedDecisions()) {
      const tr = el("tr");
      const name = el("td");
      name.appendChild(el("a", { href: "class-" + Number(d.class_id) + ".html" }, d.class_name || className(d.class_id)));
      tr.appendChild(name);
      tr.appendChild(el("td", null, d.cluster === "group" ? "isolated group" : "cluster " + d.cluster));
      tr.appendChild(el("td", null, d.decision));
      tr.appendChild(el("td", null, d.decision === "relabel" && d.relabel_to !== null ? className(d.relabel_to) : ""));
      tr.appendChild(el("td", null, d.note || ""));
      const rm = el("button", { type: "button", class: "remove" }, "remove");
      rm.addEventListener("click", () => setDecision({ class_id: d.class_id, cluster: d.cluster, decision: "" }));
      const td = el("td");
      td.appendChild(rm);
      tr.appendChild(td);
      frag.appendChild(tr);
    }
    body.replaceChildren(frag);
    table.hidden = Object.keys(state.decisions).length === 0;
  }

  // ---- class page: decision controls and paged member grids ----------------------------------
  function initClass() {
    const T = DATA.thumb;
    const P = DATA.page_size;
    for (const block of DATA.blocks) {
      const root = document.getElementById("block-" + block.cluster);
      if (!root) continue;
      initDecision(root, block);
      initMembers(root, block, T, P);
    }
  }

  function initDecision(root, block) {
    const box = root.querySelector(".decide");
    const choice = box.querySelector("select.decision");
    const relabelBox = box.querySelector(".relabel");
    const target = box.querySelector("select.relabel-to");
    const note = box.querySelector("input.note");
    target.appendChild(el("option", { value: "" }, "choose a class"));
    for (const [id, key, name] of CLASSES) {
      if (id === DATA.class_id) continue;
      target.appendChild(el("option", { value: String(id) }, name + (key !== name ? " (" + key + ")" : "")));
    }

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
    listeners.push(show);
    show();
  }

  function initMembers(root, block, T, P) {
    const grid = root.querySelector(".members");
    const info = root.querySelector(".page-info");
    const prev = root.querySelector("button.prev");
    const next = root.querySelector("button.next");
    const pages = Math.max(1, Math.ceil(block.positions.length / P));
    let page = 0;

    function tile(pos, column, cls) {
      const sheet = Math.floor(pos / P);
      const row = pos % P;
      const d = el("div", { class: cls || "" });
      d.style.width = T + "px";
      d.style.height = T + "px";
      d.style.backgroundImage = "url(" + DATA.sprite_prefix + sheet + ".png)";
      d.style.backgroundPosition = -column * T + "px " + -row * T + "px";
      return d;
    }

    function member(pos) {
      const m = DATA.members[pos];
      const fig = el("figure", { class: "member", "data-index": String(m[0]) });
      fig.style.setProperty("--w", 3 * T + 4 + "px");
      fig.title = "sample " + m[0] + ": " + m[3] + "\nClever Hans score " + fmt(m[2]);
      const tiles = el("div", { class: "tiles" });
      const image = tile(pos, 0, "tile");
      image.title = "image";
      const heat = tile(pos, 1, "tile");
      heat.title = "relevance";
      const overlay = el("div", { class: "tile", title: "overlay" });
      overlay.style.width = T + "px";
      overlay.style.height = T + "px";
      overlay.appendChild(tile(pos, 0, "grey"));
      overlay.appendChild(tile(pos, 1, "heat"));
      tiles.append(image, heat, overlay);
      fig.appendChild(tiles);
      fig.appendChild(el("figcaption", null, "#" + m[0] + " " + m[1]));
      return fig;
    }

    function show(p) {
      page = Math.min(Math.max(p, 0), pages - 1);
      const frag = document.createDocumentFragment();
      for (const pos of block.positions.slice(page * P, (page + 1) * P)) frag.appendChild(member(pos));
      grid.replaceChildren(frag);
      info.textContent = "page " + (page + 1) + " of " + pages + " (" + block.positions.length + " members)";
      prev.disabled = page === 0;
      next.disabled = page >= pages - 1;
    }

    prev.addEventListener("click", () => show(page - 1));
    next.addEventListener("click", () => show(page + 1));
    show(0);
  }

  window.unhans = { exportJSON, exportDoc, importText, download, getDecision, setDecision, clearAll };

  initToolbar();
  if (DATA.page === "index") initIndex();
  else if (DATA.page === "class") initClass();
  refresh();
})();
