/* The dashboard's page scripts: draw a page's charts from its JSON data block, poll live pages
   for news without reloading (campaigns, runs still being written), and load the doctor's
   findings lazily. HTML that replaces part of a page comes rendered and escaped by the server. */
(function () {
  "use strict";
  const PALETTE = ["#3b6fd8", "#d9482b", "#2a9d4b", "#8e44ad", "#d9891a", "#17a2b8", "#5f6b7a", "#c2185b"];

  function pageData() {
    const el = document.getElementById("page-data");
    return el ? JSON.parse(el.textContent) : null;
  }

  async function getJSON(url) {
    const r = await fetch(url, {headers: {accept: "application/json"}, credentials: "same-origin"});
    if (!r.ok) throw new Error(url + ": HTTP " + r.status);
    return r.json();
  }

  // call fn every interval() ms while the tab is visible; a failed call waits for the next tick
  function poll(interval, fn) {
    const tick = async () => {
      let again = true;
      if (!document.hidden) {
        try { again = (await fn()) !== false; } catch (e) { again = true; }
      }
      if (again) setTimeout(tick, interval());
    };
    setTimeout(tick, interval());
  }

  function setText(id, text) { const el = document.getElementById(id); if (el) el.textContent = text; }

  // ---- a campaign: leaderboard, progress, slot timeline, all live ----------------------------------

  function campaignPage(d) {
    let xMode = "by_index", state = d, version = null;
    const progress = PL.chart(document.getElementById("progress"), {title: "val_bpb of finished runs", yLabel: "val_bpb",
      empty: "no run has finished yet"});
    const timeline = PL.chart(document.getElementById("timeline"), {title: "runs over wall time, packed into slots", lanes: 1,
      logToggle: false, empty: "no run has started yet"});
    const draw = () => {
      progress.opts.xLabel = xMode === "by_index" ? "run number (finish order)" : state.progress.time_unit + " since the campaign began";
      progress.opts.integerX = xMode === "by_index";
      progress.setData(state.progress[xMode]);
      timeline.opts.lanes = Math.max(1, state.timeline.lanes);
      timeline.opts.xLabel = state.timeline.unit + " since the first run started";
      timeline.setData([{kind: "bars", name: "runs", bars: state.timeline.bars}]);
    };
    document.querySelectorAll("[data-xmode]").forEach((b) => b.addEventListener("click", () => {
      xMode = b.dataset.xmode;
      document.querySelectorAll("[data-xmode]").forEach((o) => o.setAttribute("aria-pressed", String(o === b)));
      progress.zoom = null;
      draw();
    }));
    draw();
    const running = () => ["running", "stopping"].includes(state.status);
    let costMs = 0;  // what the last update cost the server: a large campaign is asked less often
    poll(() => Math.max(d.pollMs * (running() ? 1 : 5), costMs * (d.costFactor || 10)), async () => {
      const live = await getJSON(d.liveUrl);
      costMs = live.cost_ms || 0;
      if (live.version === version) return;
      version = live.version;
      document.getElementById("campaign-head").innerHTML = live.header;
      document.getElementById("board").innerHTML = live.board;
      document.getElementById("inflight").innerHTML = live.inflight;
      state = live;
      draw();
      document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
    });
  }

  // ---- runs: full-resolution curves, one run or several overlaid ----------------------------------

  const CURVES = [
    {id: "loss", title: "train loss", y: "nats/token", keys: [["loss", "loss"]], domains: true},
    {id: "lr", title: "learning rate", y: "lr", keys: [["lr", "lr"]]},
    {id: "grad", title: "gradient norm (before clipping)", y: "L2 norm", keys: [["grad_norm", "global"], ["max_layer_grad_norm", "largest layer"]]},
    {id: "speed", title: "throughput", y: "tokens/s", keys: [["tokens_per_s", "tokens/s"]]},
  ];

  function columns(train, xKey, yKey) {
    const xs = train[xKey] || [], ys = train[yKey] || [], out = [];
    for (let i = 0; i < xs.length; i++) if (xs[i] !== null) out.push([xs[i], ys[i]]);
    return out;
  }

  function runCharts(host, runs, xKey) {
    // runs: [{name, metrics}]; one chart per curve, one series per run (and per key)
    const charts = {};
    host.textContent = "";
    for (const c of CURVES.concat([{id: "eval", title: "val_bpb at evaluations", y: "bits per byte"}])) {
      const el = document.createElement("div");
      el.className = "chart-card";
      el.id = "chart-" + c.id;
      host.appendChild(el);
      const link = (range) => {  // one x range for all the curves
        for (const other of Object.values(charts)) if (other !== charts[c.id]) other.setXRange(range);
      };
      charts[c.id] = PL.chart(el, {title: c.title, yLabel: c.y, height: 230, onZoom: link,
        empty: c.id === "eval" ? "no evaluation yet" : "no step logged yet"});
    }
    const fill = (xKeyNow) => {
      const xLabel = xKeyNow === "tokens" ? "tokens" : "step";
      for (const c of CURVES) {
        const series = [];
        runs.forEach((r, ri) => {
          const single = runs.length === 1;
          c.keys.forEach(([key, label], ki) => {
            const pts = columns(r.metrics.train, xKeyNow, key);
            if (!pts.some((p) => p[1] !== null)) return;
            series.push({name: single ? label : r.name + (c.keys.length > 1 ? " " + label : ""), kind: "line", points: pts,
              color: PALETTE[(single ? ki : ri) % PALETTE.length], dash: !single && ki ? "4 3" : null});
          });
          if (c.domains && single) {
            Object.entries(r.metrics.train.domain_loss || {}).forEach(([dom, vals], di) => {
              const xs = r.metrics.train[xKeyNow] || [];
              series.push({name: "loss " + dom, kind: "line", width: 1, hidden: true, color: PALETTE[(di + 2) % PALETTE.length],
                points: xs.map((x, i) => [x, vals[i]]).filter((p) => p[0] !== null)});
            });
          }
        });
        charts[c.id].opts.xLabel = xLabel;
        charts[c.id].setData(series);
      }
      const evalSeries = [];
      runs.forEach((r, ri) => {
        const rows = r.metrics.eval.filter((e) => e[xKeyNow === "tokens" ? "tokens" : "step"] !== null);
        const x = (e) => (xKeyNow === "tokens" ? e.tokens : e.step);
        evalSeries.push({name: runs.length === 1 ? "overall" : r.name, kind: "line", markers: true, color: PALETTE[ri % PALETTE.length],
          points: rows.map((e) => [x(e), e.val_bpb])});
        if (runs.length === 1) {
          const doms = new Set();
          rows.forEach((e) => Object.keys(e.domains || {}).forEach((k) => doms.add(k)));
          [...doms].sort().forEach((dom, di) => evalSeries.push({name: dom, kind: "line", width: 1, markers: true, color: PALETTE[(di + 2) % PALETTE.length],
            points: rows.filter((e) => e.domains && e.domains[dom] !== undefined).map((e) => [x(e), e.domains[dom]])}));
        }
      });
      charts.eval.opts.xLabel = xKeyNow === "tokens" ? "tokens" : "step";
      charts.eval.setData(evalSeries);
    };
    fill(xKey);
    return {charts, fill};
  }

  function xToggle(onChange) {
    document.querySelectorAll("[data-xkey]").forEach((b) => b.addEventListener("click", () => {
      document.querySelectorAll("[data-xkey]").forEach((o) => o.setAttribute("aria-pressed", String(o === b)));
      onChange(b.dataset.xkey);
    }));
  }

  async function runPage(d) {
    const host = document.getElementById("curves");
    let metrics = await getJSON(d.metricsUrl), xKey = "step";
    const runs = [{name: d.runId, metrics}];
    const view = runCharts(host, runs, xKey);
    const describe = (m) => {
      const n = m.train.step.length;
      setText("curve-state", `${n.toLocaleString("en-US")} steps, ${m.eval.length} evaluations` +
        (m.torn ? "; the last line is being written" : "") + (m.skipped_lines ? `; ${m.skipped_lines} unreadable line(s) skipped` : "") +
        (!m.finished ? " · live" : d.live ? " · the run has ended: reload for its record" : ""));
    };
    describe(metrics);
    xToggle((k) => { xKey = k; Object.values(view.charts).forEach((c) => (c.zoom = null)); view.fill(xKey); });
    if (!metrics.finished) {
      poll(() => d.pollMs * 1.5, async () => {  // only the rows after the last ones drawn, train and eval apart
        // (the trainer logs step N's train row, then evaluates at step N: one "last step" would lose that eval)
        const steps = metrics.train.step, lastTrain = steps.length ? steps[steps.length - 1] : -1;
        const lastEval = metrics.eval.length ? metrics.eval[metrics.eval.length - 1].step : -1;
        const news = await getJSON(d.metricsUrl + "?after=" + lastTrain + "&after_eval=" + lastEval);
        metrics = append(metrics, news);
        runs[0].metrics = metrics;
        view.fill(xKey);
        describe(metrics);
        document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
        return !metrics.finished;
      });
    }
  }

  // a live run's new rows joined to the ones already drawn
  function append(m, news) {
    const n = m.train.step.length, k = news.train.step.length;
    for (const key of Object.keys(news.train)) if (key !== "domain_loss") m.train[key] = (m.train[key] || []).concat(news.train[key]);
    const doms = m.train.domain_loss;
    for (const [dom, vals] of Object.entries(news.train.domain_loss || {})) doms[dom] = (doms[dom] || new Array(n).fill(null)).concat(vals);
    for (const vals of Object.values(doms)) while (vals.length < n + k) vals.push(null);
    m.eval = m.eval.concat(news.eval);
    return Object.assign(m, {finished: news.finished, torn: news.torn, skipped_lines: news.skipped_lines});
  }

  async function comparePage(d) {
    const runs = await Promise.all(d.runs.map(async (id) => ({name: id, metrics: await getJSON("/runs/" + encodeURIComponent(id) + "/metrics.json")})));
    let xKey = "tokens";
    const view = runCharts(document.getElementById("curves"), runs, xKey);
    xToggle((k) => { xKey = k; Object.values(view.charts).forEach((c) => (c.zoom = null)); view.fill(xKey); });
  }

  // ---- the doctor's findings, loaded one run at a time after the page --------------------------------

  async function loadDoctor() {
    for (const el of document.querySelectorAll("[data-doctor]")) {
      try {
        const r = await fetch(el.dataset.doctor, {credentials: "same-origin"});
        el.innerHTML = await r.text();
      } catch (e) {
        el.textContent = "the doctor could not be reached";
      }
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const d = pageData();
    if (d && d.page === "campaign") campaignPage(d);
    if (d && d.page === "run") runPage(d);
    if (d && d.page === "compare") comparePage(d);
    document.querySelectorAll("form.autosubmit select").forEach((s) => s.addEventListener("change", () => s.form.submit()));
    loadDoctor();
  });
})();
