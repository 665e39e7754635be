/* pretrainlab's charts: SVG line, step, point and bar series on shared axes, with
   drag-to-zoom (a wide drag zooms x, a box zooms x and y), double-click or "reset" to zoom
   out, log axes, a legend that hides series, and a hover read-out. No dependencies.
   opts.onZoom(range or null) is called when the reader zooms, so pages can link charts.

     const c = PL.chart(element, {title: "loss", xLabel: "step", yLabel: "nats/token", logX: false});
     c.setData([{name: "run a", color: "#3b6fd8", kind: "line", points: [[1, 5.5], [2, 5.1]]}]);

   kind: "line" (null y breaks the line; markers: true dots a sparse one), "step", "points" (optional labels[] and links[] per
   point), or "bars" (bars: [{lane, x0, x1, label, color, href}], with opts.lanes). Every text
   is set with textContent, never parsed as HTML. Lines are drawn at full resolution: when more
   points fall in view than there are pixels, each pixel column keeps its first, lowest,
   highest and last point, so a one-step spike never disappears. */
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";
  const MARGIN = {top: 8, right: 12, bottom: 34, left: 62};
  let uid = 0;

  function svgEl(tag, attrs, parent) {
    const e = document.createElementNS(NS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function htmlEl(tag, cls, parent, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }

  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    const a = Math.abs(v);
    if (a === 0) return "0";
    if (a >= 1e7 || a < 1e-3) return v.toExponential(2).replace("e+", "e");
    if (a >= 1e4) return +(v / 1e3).toPrecision(4) + "k";
    return String(+v.toPrecision(5));
  }

  function linearTicks(lo, hi, n) {
    const span = hi - lo;
    if (!(span > 0)) return [lo];
    const raw = span / n, mag = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / mag;
    const step = (f > 5 ? 10 : f > 2 ? 5 : f > 1 ? 2 : 1) * mag;
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Math.abs(t) < step * 1e-9 ? 0 : t);
    return out;
  }
  function logTicks(lo, hi) {
    const out = [], a = Math.floor(Math.log10(lo)), b = Math.ceil(Math.log10(hi));
    const mults = b - a <= 2 ? [1, 2, 5] : [1];
    for (let e = a; e <= b; e++) for (const m of mults) { const t = m * Math.pow(10, e); if (t >= lo && t <= hi) out.push(t); }
    return out.length >= 2 ? out : linearTicks(lo, hi, 4);
  }

  function scale(lo, hi, a, b, log) {
    const f = log ? Math.log10 : (v) => v;
    const l = f(lo), h = f(hi), k = (b - a) / ((h - l) || 1);
    return {
      px: (v) => a + (f(v) - l) * k,
      inv: (p) => { const u = l + (p - a) / k; return log ? Math.pow(10, u) : u; },
    };
  }

  function lowerBound(pts, x) { // first index with pts[i][0] >= x
    let lo = 0, hi = pts.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (pts[mid][0] < x) lo = mid + 1; else hi = mid; }
    return lo;
  }

  function usable(p, logX, logY) {
    return p[1] !== null && isFinite(p[1]) && isFinite(p[0]) && (!logX || p[0] > 0) && (!logY || p[1] > 0);
  }

  class Chart {
    constructor(host, opts) {
      this.opts = Object.assign({height: 240, logX: false, logY: false, xLabel: "", yLabel: "", lanes: 0, logToggle: true, integerX: false},
        opts || {});
      this.host = host;
      this.series = [];
      this.zoom = null;
      this.id = "plc" + (++uid);
      host.classList.add("plc");
      host.textContent = "";
      const head = htmlEl("div", "plc-head", host);
      htmlEl("span", "plc-title", head, this.opts.title || "");
      const tools = htmlEl("span", "plc-tools", head);
      this.resetButton = htmlEl("button", "plc-btn", tools, "reset zoom");
      this.resetButton.type = "button";
      this.resetButton.hidden = true;
      this.resetButton.addEventListener("click", () => this.resetZoom());
      if (this.opts.logToggle && !this.opts.lanes) {
        for (const axis of ["x", "y"]) {
          const b = htmlEl("button", "plc-btn", tools, "log " + axis);
          b.type = "button";
          b.setAttribute("aria-pressed", String(this.opts["log" + axis.toUpperCase()]));
          b.addEventListener("click", () => {
            const key = "log" + axis.toUpperCase();
            this.opts[key] = !this.opts[key];
            b.setAttribute("aria-pressed", String(this.opts[key]));
            this.zoom = null;
            this.render();
          });
        }
      }
      this.svg = svgEl("svg", {class: "plc-svg", role: "img", "aria-label": this.opts.title || "chart"}, host);
      this.legend = htmlEl("div", "plc-legend", host);
      this.tip = htmlEl("div", "plc-tip", host);
      this.tip.hidden = true;
      this.bindMouse();
      if (window.ResizeObserver) new ResizeObserver(() => this.render()).observe(host);
    }

    setData(series) {
      const before = new Map(this.series.map((s) => [s.name, s.hidden]));  // a redraw keeps what the reader hid or showed
      this.series = (series || []).map((s) => Object.assign({}, s, {hidden: before.has(s.name) ? before.get(s.name) : !!s.hidden}));
      this.drawLegend();
      this.render();
    }

    resetZoom() { this.zoom = null; this.render(); if (this.opts.onZoom) this.opts.onZoom(null); }

    // follow another chart's x range (linked charts); y fits what is in view
    setXRange(range) { this.zoom = range ? {x0: range.x0, x1: range.x1} : null; this.render(); }

    drawLegend() {
      this.legend.textContent = "";
      if (this.opts.lanes || this.series.length < 2) return;
      for (const s of this.series) {
        const item = htmlEl("button", "plc-key" + (s.hidden ? " off" : ""), this.legend);
        item.type = "button";
        const sw = htmlEl("span", "plc-swatch", item);
        sw.style.background = s.color;
        htmlEl("span", "", item, s.name);
        item.addEventListener("click", () => { s.hidden = !s.hidden; item.classList.toggle("off", s.hidden); this.render(); });
      }
    }

    domain() {
      const o = this.opts, vis = this.series.filter((s) => !s.hidden);
      let x0 = Infinity, x1 = -Infinity;
      for (const s of vis) {
        if (s.kind === "bars") for (const b of s.bars) { x0 = Math.min(x0, b.x0); x1 = Math.max(x1, b.x1); }
        else for (const p of s.points) if (usable(p, o.logX, false)) { x0 = Math.min(x0, p[0]); x1 = Math.max(x1, p[0]); }
      }
      if (!this.zoom && vis.some((s) => s.kind === "points") && x1 > x0) {  // a marker on the edge stays whole
        if (o.logX) { x0 /= 1.08; x1 *= 1.08; } else { const pad = (x1 - x0) * 0.03; x0 -= pad; x1 += pad; }
      }
      if (this.zoom) { x0 = this.zoom.x0; x1 = this.zoom.x1; }
      if (!(x1 > x0)) { if (isFinite(x0)) { const d = Math.abs(x0) * 0.05 || 1; x1 = x0 + d; x0 = o.logX ? x0 / 2 : x0 - d; } else { x0 = o.logX ? 1 : 0; x1 = 10; } }
      let y0, y1;
      if (o.lanes) { y0 = -0.5; y1 = o.lanes - 0.5; }
      else if (this.zoom && this.zoom.y0 !== undefined) { y0 = this.zoom.y0; y1 = this.zoom.y1; }
      else {
        y0 = Infinity; y1 = -Infinity;
        for (const s of vis) {
          if (s.kind === "bars") continue;
          const pts = s.points;
          const i0 = s.kind === "step" ? Math.max(0, lowerBound(pts, x0) - 1) : lowerBound(pts, x0);
          for (let i = i0; i < pts.length && pts[i][0] <= x1; i++) {
            const p = pts[i];
            if (usable(p, o.logX, o.logY)) { y0 = Math.min(y0, p[1]); y1 = Math.max(y1, p[1]); }
          }
        }
        if (!isFinite(y0)) { y0 = o.logY ? 1 : 0; y1 = o.logY ? 10 : 1; }
        if (y1 === y0) { const d = Math.abs(y0) * 0.05 || 1; y0 -= d; y1 += d; }
        if (o.logY) { y0 /= 1.05; y1 *= 1.05; } else { const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad; }
      }
      return {x0, x1, y0, y1};
    }

    render() {
      const o = this.opts, svg = this.svg;
      const width = Math.max(200, this.host.clientWidth || 600), height = o.lanes ? Math.max(90, 24 * o.lanes + 50) : o.height;
      svg.setAttribute("width", width);
      svg.setAttribute("height", height);
      svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
      svg.textContent = "";
      const d = this.domain();
      const left = MARGIN.left, right = width - MARGIN.right, top = MARGIN.top, bottom = height - MARGIN.bottom;
      const sx = scale(d.x0, d.x1, left, right, o.logX);
      const sy = o.lanes ? scale(d.y0, d.y1, top, bottom, false) : scale(d.y0, d.y1, bottom, top, o.logY);
      this.frame = {d, sx, sy, left, right, top, bottom};
      svgEl("rect", {x: 0, y: 0, width, height, class: "plc-bg"}, svg);
      const axes = svgEl("g", {class: "plc-axes"}, svg);
      let xTicks = o.logX ? logTicks(d.x0, d.x1) : linearTicks(d.x0, d.x1, Math.max(2, Math.floor((right - left) / 90)));
      if (o.integerX) xTicks = xTicks.filter((t) => Number.isInteger(t));
      for (const t of xTicks) {
        const x = sx.px(t);
        svgEl("line", {x1: x, x2: x, y1: top, y2: bottom, class: "plc-grid"}, axes);
        svgEl("text", {x, y: bottom + 14, "text-anchor": "middle"}, axes).textContent = fmt(t);
      }
      const yTicks = o.lanes ? [...Array(o.lanes).keys()] : o.logY ? logTicks(d.y0, d.y1) : linearTicks(d.y0, d.y1, Math.max(2, Math.floor((bottom - top) / 40)));
      for (const t of yTicks) {
        const y = sy.px(t);
        svgEl("line", {x1: left, x2: right, y1: y, y2: y, class: "plc-grid"}, axes);
        svgEl("text", {x: left - 6, y: y + 4, "text-anchor": "end"}, axes).textContent = o.lanes ? "slot " + (t + 1) : fmt(t);
      }
      svgEl("rect", {x: left, y: top, width: right - left, height: bottom - top, class: "plc-frame"}, axes);
      if (o.xLabel) svgEl("text", {x: (left + right) / 2, y: height - 4, "text-anchor": "middle", class: "plc-label"}, axes).textContent = o.xLabel + (o.logX ? " (log)" : "");
      if (o.yLabel && !o.lanes) svgEl("text", {x: 12, y: (top + bottom) / 2, "text-anchor": "middle", class: "plc-label", transform: `rotate(-90 12 ${(top + bottom) / 2})`}, axes).textContent = o.yLabel + (o.logY ? " (log)" : "");
      const clip = svgEl("clipPath", {id: this.id + "c"}, svgEl("defs", {}, svg));
      svgEl("rect", {x: left, y: top - 4, width: right - left, height: bottom - top + 8}, clip);
      const plot = svgEl("g", {"clip-path": `url(#${this.id}c)`}, svg);
      for (const s of this.series) if (!s.hidden) this.drawSeries(plot, s);
      const any = this.series.some((s) => !s.hidden && (s.kind === "bars" ? s.bars.length : s.points.some((p) => usable(p, o.logX, o.logY))));
      if (!any) svgEl("text", {x: (left + right) / 2, y: (top + bottom) / 2, "text-anchor": "middle", class: "plc-empty"}, svg).textContent = o.empty || "nothing to draw yet";
      this.selection = svgEl("rect", {class: "plc-sel", x: 0, y: 0, width: 0, height: 0, visibility: "hidden"}, svg);
      this.cursor = svgEl("line", {class: "plc-cursor", x1: 0, x2: 0, y1: top, y2: bottom, visibility: "hidden"}, svg);
      this.resetButton.hidden = !this.zoom;
    }

    drawSeries(plot, s) {
      const o = this.opts, {d, sx, sy} = this.frame;
      if (s.kind === "bars") {
        for (const b of s.bars) {
          const x = sx.px(b.x0), w = Math.max(2, sx.px(b.x1) - x), y = sy.px(b.lane - 0.38), h = sy.px(b.lane + 0.38) - y;
          const parent = safeHref(b.href) ? svgEl("a", {href: b.href}, plot) : plot;
          const r = svgEl("rect", {x, y, width: w, height: h, rx: 2, fill: b.color, class: "plc-bar" + (b.status === "live" ? " live" : "")}, parent);
          svgEl("title", {}, r).textContent = b.label + " · " + b.status + " · " + fmt(b.x1 - b.x0) + " " + (o.xLabel || "").split(" ")[0];
          if (w > 7 * b.label.length) svgEl("text", {x: x + 4, y: y + h / 2 + 4, class: "plc-barlabel"}, parent).textContent = b.label;
        }
        return;
      }
      const pts = s.points;
      if (s.kind === "points") {
        for (let i = 0; i < pts.length; i++) {
          const p = pts[i];
          if (!usable(p, o.logX, o.logY) || p[0] < d.x0 || p[0] > d.x1) continue;
          const link = s.links && s.links[i];
          const parent = safeHref(link) ? svgEl("a", {href: link}, plot) : plot;
          const c = svgEl("circle", {cx: sx.px(p[0]), cy: sy.px(p[1]), r: 3.6, fill: s.color, class: "plc-pt"}, parent);
          svgEl("title", {}, c).textContent = (s.labels && s.labels[i] ? s.labels[i] + "\n" : "") + fmt(p[1]);
        }
        return;
      }
      // lines and steps: the points in view plus one on each side, min/max per pixel column
      const i0 = Math.max(0, lowerBound(pts, d.x0) - 1), i1 = Math.min(pts.length, lowerBound(pts, d.x1) + 1);
      const cols = (this.frame.right - this.frame.left);
      const dense = s.kind === "line" && i1 - i0 > 2 * cols;
      let path = "", pen = false, bucket = null;
      const emit = (x, y) => {
        if (s.kind === "step" && pen) path += `H${x.toFixed(1)}V${y.toFixed(1)}`;
        else path += (pen ? "L" : "M") + x.toFixed(1) + "," + y.toFixed(1);
        pen = true;
      };
      const flush = () => {
        if (!bucket) return;
        const pick = [bucket.first, bucket.lo, bucket.hi, bucket.last].filter((p, k, a) => a.indexOf(p) === k).sort((a, b) => a.i - b.i);
        for (const p of pick) emit(p.x, p.y);
        bucket = null;
      };
      for (let i = i0; i < i1; i++) {
        const p = pts[i];
        if (!usable(p, o.logX, o.logY)) { flush(); pen = false; continue; }
        const x = sx.px(p[0]), y = sy.px(p[1]);
        if (!dense) { emit(x, y); continue; }
        const col = Math.floor(x), q = {x, y, i};
        if (bucket && bucket.col !== col) flush();
        if (!bucket) bucket = {col, first: q, lo: q, hi: q, last: q};
        else { bucket.last = q; if (y < bucket.lo.y) bucket.lo = q; if (y > bucket.hi.y) bucket.hi = q; }
      }
      flush();
      if (path) {
        const attrs = {d: path, stroke: s.color, fill: "none", class: "plc-line", "stroke-width": s.width || 1.5};
        if (s.dash) attrs["stroke-dasharray"] = s.dash;
        svgEl("path", attrs, plot);
      }
      if (s.markers && i1 - i0 <= 60) {  // a few evaluations: show where each one is
        for (let i = i0; i < i1; i++) {
          const p = pts[i];
          if (usable(p, o.logX, o.logY)) svgEl("circle", {cx: sx.px(p[0]), cy: sy.px(p[1]), r: 2.6, fill: s.color, class: "plc-mark"}, plot);
        }
      }
    }

    bindMouse() {
      const svg = this.svg;
      let start = null;
      const pos = (ev) => { const r = svg.getBoundingClientRect(); return [ev.clientX - r.left, ev.clientY - r.top]; };
      svg.addEventListener("mousedown", (ev) => {
        if (ev.button !== 0 || !this.frame) return;
        const [x, y] = pos(ev), f = this.frame;
        if (x < f.left || x > f.right || y < f.top || y > f.bottom) return;
        start = [x, y];
        ev.preventDefault();
      });
      window.addEventListener("mousemove", (ev) => {
        if (!this.frame) return;
        const [x, y] = pos(ev), f = this.frame;
        if (start) {
          const wide = Math.abs(y - start[1]) < 12;
          const x0 = Math.max(f.left, Math.min(x, start[0])), x1 = Math.min(f.right, Math.max(x, start[0]));
          const y0 = wide || this.opts.lanes ? f.top : Math.max(f.top, Math.min(y, start[1]));
          const y1 = wide || this.opts.lanes ? f.bottom : Math.min(f.bottom, Math.max(y, start[1]));
          Object.entries({x: x0, y: y0, width: x1 - x0, height: y1 - y0, visibility: "visible"}).forEach(([k, v]) => this.selection.setAttribute(k, v));
          return;
        }
        if (ev.target.closest && ev.target.closest("svg") === svg && x >= f.left && x <= f.right && y >= f.top && y <= f.bottom) this.hover(x);
        else this.unhover();
      });
      window.addEventListener("mouseup", (ev) => {
        if (!start) return;
        const [x, y] = pos(ev), f = this.frame, s = start;
        start = null;
        this.selection.setAttribute("visibility", "hidden");
        if (Math.abs(x - s[0]) < 5) return; // a click, not a drag
        const a = Math.max(f.left, Math.min(x, s[0])), b = Math.min(f.right, Math.max(x, s[0]));
        const zoom = {x0: f.sx.inv(a), x1: f.sx.inv(b)};
        if (Math.abs(y - s[1]) >= 12 && !this.opts.lanes) {
          const ya = f.sy.inv(Math.min(f.bottom, Math.max(y, s[1]))), yb = f.sy.inv(Math.max(f.top, Math.min(y, s[1])));
          zoom.y0 = Math.min(ya, yb); zoom.y1 = Math.max(ya, yb);
        }
        this.zoom = zoom;
        this.unhover();
        this.render();
        if (this.opts.onZoom) this.opts.onZoom(zoom);
      });
      svg.addEventListener("dblclick", () => this.resetZoom());
      svg.addEventListener("mouseleave", () => this.unhover());
    }

    hover(px) {
      const f = this.frame, xv = f.sx.inv(px), rows = [];
      for (const s of this.series) {
        if (s.hidden || (s.kind !== "line" && s.kind !== "step") || !s.points.length) continue;
        let i = lowerBound(s.points, xv);
        if (s.kind === "step") i = Math.max(0, s.points[i] && s.points[i][0] === xv ? i : i - 1);
        else if (i > 0 && (i >= s.points.length || Math.abs(s.points[i - 1][0] - xv) < Math.abs(s.points[i][0] - xv))) i -= 1;
        const p = s.points[Math.min(i, s.points.length - 1)];
        if (p) rows.push([s, p]);
      }
      if (!rows.length) return this.unhover();
      this.cursor.setAttribute("x1", px);
      this.cursor.setAttribute("x2", px);
      this.cursor.setAttribute("visibility", "visible");
      this.tip.textContent = "";
      htmlEl("div", "plc-tip-x", this.tip, (this.opts.xLabel || "x") + " " + fmt(rows[0][1][0]));
      for (const [s, p] of rows) {
        const line = htmlEl("div", "", this.tip);
        htmlEl("span", "plc-swatch", line).style.background = s.color;
        htmlEl("span", "", line, s.name + ": " + fmt(p[1]));
      }
      this.tip.hidden = false;
      const w = this.tip.offsetWidth;
      this.tip.style.left = (px + 14 + w > f.right ? px - 14 - w : px + 14) + "px";
      this.tip.style.top = (f.top + 30) + "px";
    }

    unhover() {
      this.tip.hidden = true;
      if (this.cursor) this.cursor.setAttribute("visibility", "hidden");
    }
  }

  function safeHref(h) { return typeof h === "string" && h.charAt(0) === "/" && h.charAt(1) !== "/"; }

  window.PL = Object.assign(window.PL || {}, {chart: (el, opts) => new Chart(el, opts), fmt});
})();
