// Live jobs table (anywidget front end). The kernel keeps the counts and one window of rows
// (a few hundred); scrolling past it, a status chip, the filter or a column's sort ask for another.
// Patches carry only the window's rows that changed; only the rows in view are in the DOM, so a
// million-job task costs the browser what a hundred does.
// The chart of job states over time (and the rate jobs end at) is drawn from the counts each
// patch already carries: it costs no message of its own.
const ROW = 24, COLS = ["id", "name", "status", "host", "attempts", "runtime", "used", "params", "result", "reason"];
const ENDED = ["SUCCEEDED", "FAILED", "CANCELLED", "LOST"];
const STACK = ["SUCCEEDED", "FAILED", "CANCELLED", "LOST", "RUNNING", "STARTING", "RUNNABLE", "HELD", "SUBMITTED", "WAITING"];
const COLOR = { SUCCEEDED: "#4caf50", FAILED: "#e53935", CANCELLED: "#9e9e9e", LOST: "#b71c1c", RUNNING: "#1e88e5",
                STARTING: "#64b5f6", RUNNABLE: "#bbdefb", HELD: "#ffb74d", SUBMITTED: "#e0e0e0",
                WAITING: "#d1c4e9" };
const SAMPLES = 300;  // points kept for the chart (older ones thinned out by half)

// The chart: counts of each state over time, stacked (SVG polygons), and jobs ended per second.
// Seen only once (every job ended before the first look), the counts are one band and the rate
// comes from the jobs' own end times (`ends`: seconds).
function chart(history, ends) {
  if (history.length === 0) return { svg: "", rate: "" };
  if (history.length === 1) {
    const drawn = chart([history[0], { ...history[0], t: history[0].t + 1 }], ends);
    const last = Math.max(...ends), first = Math.min(...ends.filter((e) => e >= last - 10));
    return { svg: drawn.svg, rate: ends.length > 1 && last > first
      ? `${((ends.filter((e) => e >= first).length - 1) / (last - first)).toFixed(1)} jobs/s ended (last ${(last - first).toFixed(0)} s)`
      : "" };
  }
  const W = 400, H = 48, t0 = history[0].t, span = Math.max(1, history[history.length - 1].t - t0);
  const total = (h) => STACK.reduce((a, s) => a + (h.c[s] || 0), 0);
  const most = Math.max(1, ...history.map(total));
  const x = (h) => ((h.t - t0) / span * W).toFixed(1);
  let below = history.map(() => 0), shapes = "";
  for (const s of STACK) {
    if (!history.some((h) => h.c[s])) continue;
    const above = history.map((h, i) => below[i] + (h.c[s] || 0));
    const top = history.map((h, i) => `${x(h)},${(H - above[i] / most * H).toFixed(1)}`);
    const bottom = history.map((h, i) => `${x(h)},${(H - below[i] / most * H).toFixed(1)}`).reverse();
    shapes += `<polygon data-state="${s}" fill="${COLOR[s]}" points="${top.concat(bottom).join(" ")}"><title>${s}</title></polygon>`;
    below = above;
  }
  const last = history[history.length - 1], back = history.find((h) => h.t >= last.t - 10_000) || history[0];
  const ended = (h) => ENDED.reduce((a, s) => a + (h.c[s] || 0), 0);
  const secs = (last.t - back.t) / 1000;
  return { svg: `<svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" width="100%" height="${H}">${shapes}</svg>`,
           rate: secs > 0 ? `${((ended(last) - ended(back)) / secs).toFixed(1)} jobs/s ended (last ${secs.toFixed(0)} s)` : "" };
}

function render({ model, el }) {
  let states = model.get("states"), hosts = [], names = [], t0 = 0, totals = {}, synced = false;
  // the kernel holds the counts and sends one window of rows (`ids` from `offset` of `matching`)
  let ids = [], offset = 0, matching = 0, pending = null;
  const rows = new Map(), stat = new Map(), selected = new Set(), history = [];
  const view = { status: "", text: "", sort: "id", descending: false };

  el.classList.add("htc-table");
  el.innerHTML = `
    <div class="htc-head">
      <div class="htc-progress"><div class="htc-bar"></div><span class="htc-count"></span></div>
      <div class="htc-chart"><div class="htc-plot"></div><span class="htc-rate"></span></div>
      <div class="htc-chips"></div>
      <div class="htc-tools">
        <input class="htc-filter" placeholder="filter: text in name, parameters, host or reason">
        <button class="htc-retry-failed">Retry failed</button>
        <button class="htc-cancel-sel">Cancel selected</button>
        <button class="htc-retry-sel">Retry selected</button>
        <button class="htc-cancel-all">Cancel all</button>
      </div>
    </div>
    <div class="htc-grid-head">${COLS.map(c => `<span data-col="${c}">${c}</span>`).join("")}</div>
    <div class="htc-scroll"><div class="htc-spacer"></div><div class="htc-rows"></div></div>
    <pre class="htc-detail">click a row to see its log and error</pre>`;
  const $ = (s) => el.querySelector(s);
  const scroll = $(".htc-scroll"), spacer = $(".htc-spacer"), body = $(".htc-rows"), detail = $(".htc-detail");

  const fmt = (r) => {
    const s = stat.get(r[0]) || [r[0], 0, ""];
    const runtime = r[5] != null ? (r[5] / 10).toFixed(1) + "s"
      : r[4] != null ? ((Date.now() / 1000 - t0) - r[4] / 10).toFixed(0) + "s…" : "";
    return { id: r[0], name: names[s[1]] ?? "", status: states[r[1]], host: r[2] >= 0 ? hosts[r[2]] : "",
             attempts: r[3], runtime, used: r[8] ?? "", params: s[2] ?? "", result: r[7] ?? "", reason: r[6] ?? "" };
  };
  const ask = (changes) => {  // another window (or filter, or order) from the kernel
    Object.assign(view, changes);
    pending = changes.offset ?? 0;
    model.send({ t: "view", ...view, offset: pending, limit: PAGE });
  };
  // Browsers cap an element's height: past MAX_PX the scroll bar maps to rows proportionally.
  const MAX_PX = 8_000_000, PAGE = 200;
  const paint = () => {
    const visible = Math.ceil(scroll.clientHeight / ROW) + 1;
    const height = Math.min(matching * ROW, MAX_PX);
    spacer.style.height = `${height}px`;
    const scaled = matching * ROW > MAX_PX;
    const room = Math.max(1, height - scroll.clientHeight);
    const first = Math.min(Math.max(0, matching - visible + 1), scaled
      ? Math.round(scroll.scrollTop / room * Math.max(0, matching - visible + 1))
      : Math.floor(scroll.scrollTop / ROW));
    const last = Math.min(matching, first + visible);
    body.style.transform = `translateY(${scaled ? scroll.scrollTop : first * ROW}px)`;
    let html = "";
    for (let i = first; i < last; i++) {
      const id = ids[i - offset], r = id != null ? rows.get(id) : null;
      if (!r) { html += `<div class="htc-row htc-loading">${COLS.map(() => "<span>…</span>").join("")}</div>`; continue; }
      const f = fmt(r);
      html += `<div class="htc-row st-${f.status} ${selected.has(id) ? "sel" : ""}" data-id="${id}">` +
        COLS.map((c) => `<span title="${String(f[c]).replace(/"/g, "&quot;")}">${String(f[c])
          .replace(/&/g, "&amp;").replace(/</g, "&lt;")}</span>`).join("") + "</div>";
    }
    body.innerHTML = html;
    // rows in view that the window does not hold: ask for a window around them (one request at a time)
    const held = first >= offset && last <= offset + ids.length;
    if (!held && pending === null && synced) ask({ offset: Math.max(0, first - Math.floor((PAGE - visible) / 2)) });
    const total = Object.values(totals).reduce((a, b) => a + b, 0);
    const ended = ENDED.reduce((a, s) => a + (totals[s] || 0), 0);
    const drawn = chart(history, history.length === 1 ? [...rows.values()]
      .filter((r) => r[4] != null && r[5] != null).map((r) => (r[4] + r[5]) / 10) : []);
    $(".htc-plot").innerHTML = drawn.svg;
    $(".htc-rate").textContent = drawn.rate;
    $(".htc-bar").style.width = total ? `${(100 * ended) / total}%` : "0";
    $(".htc-count").textContent = `${ended} / ${total} ended`;
    $(".htc-chips").innerHTML = states.filter((s) => totals[s]).map((s) =>
      `<span class="chip st-${s} ${view.status === s ? "on" : ""}" data-state="${s}">${s} ${totals[s]}</span>`).join("");
    for (const h of el.querySelectorAll(".htc-grid-head span"))
      h.className = h.dataset.col === view.sort ? (view.descending ? "sorted desc" : "sorted") : "";
  };
  let queued = false;
  const schedule = () => { if (!queued) { queued = true; requestAnimationFrame(() => { queued = false; paint(); }); } };

  const receive = (msg) => {
    if (msg.t === "reset") {
      rows.clear(); stat.clear(); states = msg.states; t0 = msg.t0; hosts = msg.hosts; names = msg.names;
      Object.assign(view, { status: msg.view.status, text: msg.view.text, sort: msg.view.sort,
                            descending: msg.view.descending });
      synced = true;
    }
    if (msg.t === "patch" && !synced) return;  // everything comes with the reset this view asked for
    if (msg.t === "reset" || msg.t === "patch") {
      if (msg.t === "patch") { hosts.push(...msg.hosts); names.push(...msg.names); }
      if (msg.ids) {
        ids = msg.ids;
        const keep = new Set(ids);
        for (const id of [...rows.keys()]) if (!keep.has(id)) { rows.delete(id); stat.delete(id); }
        if (pending !== null && msg.offset === pending) pending = null;
      }
      offset = msg.offset; matching = msg.matching;
      for (const s of msg.new) stat.set(s[0], s);
      for (const r of msg.rows) rows.set(r[0], r);
      totals = msg.totals;
      const prev = history[history.length - 1];
      if (!prev || JSON.stringify(prev.c) !== JSON.stringify(totals)) {
        history.push({ t: Date.now(), c: { ...totals } });
        if (history.length > SAMPLES) history.splice(0, history.length, ...history.filter((_, i) => i % 2 === 0));
      }
      schedule();
    } else if (msg.t === "detail" || msg.t === "notice") {
      detail.textContent = msg.text;
      if (msg.t === "notice") pending = null;
    }
  };
  model.on("msg:custom", receive);
  // the window as the kernel last saw it (kept in a saved notebook): shown until a kernel answers "ready"
  const saved = model.get("saved");
  if (saved && saved.t === "reset") receive(saved);
  scroll.addEventListener("scroll", schedule);
  body.addEventListener("click", (e) => {
    const row = e.target.closest(".htc-row"); if (!row || !row.dataset.id) return;
    const id = Number(row.dataset.id);
    if (e.ctrlKey || e.metaKey || e.shiftKey) { selected.has(id) ? selected.delete(id) : selected.add(id); }
    else { selected.clear(); selected.add(id); }
    model.send({ t: "detail", id }); schedule();
  });
  const restart = (changes) => { scroll.scrollTop = 0; ask({ ...changes, offset: 0 }); };
  $(".htc-chips").addEventListener("click", (e) => {
    const s = e.target.dataset.state; if (!s) return;
    restart({ status: view.status === s ? "" : s });
  });
  $(".htc-grid-head").addEventListener("click", (e) => {
    const c = e.target.dataset.col; if (!c) return;
    const col = { params: "id", result: "id", used: "id" }[c] || c;  // columns the ledger cannot order by: by id
    restart({ sort: col, descending: view.sort === col ? !view.descending : false });
  });
  let typing = null;
  $(".htc-filter").addEventListener("input", (e) => {
    clearTimeout(typing);
    typing = setTimeout(() => restart({ text: e.target.value }), 300);
  });
  $(".htc-retry-failed").addEventListener("click", () => model.send({ t: "retry", ids: "failed" }));
  $(".htc-cancel-all").addEventListener("click", () => model.send({ t: "cancel", ids: "all" }));
  $(".htc-cancel-sel").addEventListener("click", () => model.send({ t: "cancel", ids: [...selected] }));
  $(".htc-retry-sel").addEventListener("click", () => model.send({ t: "retry", ids: [...selected] }));
  const timer = setInterval(() => { if (totals.RUNNING) schedule(); }, 1000);  // running times tick
  model.send({ t: "ready" });
  return () => { clearInterval(timer); clearTimeout(typing); };
}
export default { render };
