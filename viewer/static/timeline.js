// The timeline: one canvas, tracks as rows, data fetched per window at the
// canvas's resolution from /api/s/NAME/window (never the whole trace).
// Zoom/pan: W/S/A/D (held: continuous, as in Perfetto), Ctrl+wheel,
// Shift+wheel or horizontal wheel, drag. Click a slice for its details.
'use strict';
(function () {
  const { el, clear, fmtNs, colorFor, getJSON, setupCanvas } = window.GS;
  const LABEL_W = 240, AXIS_H = 24, SLICE_H = 16, HEADER_H = 20, COUNTER_H = 44, PAD = 3;
  const MIN_SPAN = 1000;   // 1 µs
  const BLOCK_COLOR = '#8e9bb3';

  class Timeline {
    constructor(o) {
      this.api = o.api;
      this.scroll = o.scroll; this.spacer = o.spacer; this.canvas = o.canvas;
      this.details = o.details; this.detailsBody = o.detailsBody; this.status = o.status;
      this.names = new Map();
      this.tracks = []; this.rows = []; this.collapsed = new Set();
      this.tMin = 0; this.tMax = 0; this.view = null;
      this.data = null; this.fetched = null; this.gen = 0;
      this.reqSeq = 0; this.appliedSeq = 0; this.fetchTimer = null;
      this.selected = null; this.searchQ = ''; this.matchNames = new Set();
      this.keys = new Set(); this.mouseX = null; this.lastFrame = 0;
      this.size = { w: 0, h: 0 }; this.drawPending = false; this.painted = false;
      this.follow = true;
      this._bind();
    }

    // -- model ---------------------------------------------------------------
    setMeta(m) {
      const oldMax = this.tMax, oldMin = this.tMin;
      if (m.t_min == null) return;
      this.tMin = m.t_min; this.tMax = Math.max(m.t_max, m.t_min + 1);
      const tracksChanged = JSON.stringify((m.tracks || []).map(t => [t.uuid, t.name, t.max_depth, !!t.n_slices, !!t.n_instants, !!t.n_counters])) !==
        JSON.stringify(this.tracks.map(t => [t.uuid, t.name, t.max_depth, !!t.n_slices, !!t.n_instants, !!t.n_counters]));
      if (m.tracks) this.tracks = m.tracks;
      if (!this.view) {
        this.view = { t0: this.tMin, t1: this.tMax };
      } else if (this.tMax !== oldMax) {
        const v = this.view, span = v.t1 - v.t0;
        if (this.follow && v.t1 >= oldMax - span * 0.02) {
          if (v.t0 <= oldMin + span * 0.01) this.view = { t0: this.tMin, t1: this.tMax };
          else this.view = { t0: this.tMax - span, t1: this.tMax };
        }
      }
      if (tracksChanged) this.layout();
      if (m.indexed !== this.indexed) { this.indexed = m.indexed; this.gen++; }
      this.requestDraw();
    }

    layout() {
      const byId = new Map(this.tracks.map(t => [t.uuid, t]));
      const hidden = (t) => {
        let p = byId.get(t.parent);
        const seen = new Set();
        while (p && !seen.has(p.uuid)) {
          if (this.collapsed.has(p.uuid)) return true;
          seen.add(p.uuid); p = byId.get(p.parent);
        }
        return false;
      };
      const rows = [];
      let y = AXIS_H;
      for (const t of this.tracks) {
        if (hidden(t)) continue;
        let h;
        if (t.kind === 'process' || t.kind === 'thread') h = HEADER_H;
        else if (t.kind === 'counter') { if (!t.n_counters) continue; h = COUNTER_H; }
        else { if (!t.n_slices && !t.n_instants) continue; h = PAD * 2 + (Math.max(0, t.max_depth) + 1) * SLICE_H; }
        rows.push({ t: t, y: y, h: h });
        y += h;
      }
      this.rows = rows;
      this.totalH = y;
      this.spacer.style.height = Math.max(y, this.scroll.clientHeight) + 'px';
      this.canvas.dataset.tracks = String(rows.length);
      this.gen++;
      this.requestDraw();
    }

    // -- view ----------------------------------------------------------------
    width() { return Math.max(10, this.size.w - LABEL_W); }
    x(t) { return LABEL_W + (t - this.view.t0) * this.width() / (this.view.t1 - this.view.t0); }
    tAt(x) { return this.view.t0 + (x - LABEL_W) * (this.view.t1 - this.view.t0) / this.width(); }

    setView(t0, t1) {
      let span = Math.max(MIN_SPAN, t1 - t0);
      const full = (this.tMax - this.tMin) || 1;
      span = Math.min(span, full * 1.5);
      const mid = (t0 + t1) / 2;
      t0 = mid - span / 2;
      const lo = this.tMin - full * 0.25, hi = this.tMax + full * 0.25;
      if (t0 < lo) t0 = lo;
      if (t0 + span > hi) t0 = Math.max(lo, hi - span);
      this.view = { t0: t0, t1: t0 + span };
      this.canvas.dataset.t0 = String(Math.round(this.view.t0));
      this.canvas.dataset.t1 = String(Math.round(this.view.t1));
      this.requestDraw();
    }
    zoom(factor, atX) {
      const v = this.view;
      const x = atX != null && atX >= LABEL_W ? atX : LABEL_W + this.width() / 2;
      const t = this.tAt(x);
      const frac = (x - LABEL_W) / this.width();
      const span = Math.max(MIN_SPAN, (v.t1 - v.t0) * factor);
      this.setView(t - span * frac, t - span * frac + span);
    }
    pan(dt) { this.setView(this.view.t0 + dt, this.view.t1 + dt); }
    showAll() { this.setView(this.tMin, this.tMax); }

    // -- data ----------------------------------------------------------------
    needFetch() {
      const f = this.fetched, v = this.view;
      if (!v || !this.rows.length) return false;
      if (!f) return true;
      const npx = (v.t1 - v.t0) / this.width();
      return v.t0 < f.t0 || v.t1 > f.t1 || npx < f.npx / 1.6 || npx > f.npx * 1.6 || f.gen !== this.gen;
    }
    scheduleFetch() {
      if (this.fetchTimer) return;
      this.fetchTimer = setTimeout(() => { this.fetchTimer = null; this.fetch(); }, 30);
    }
    async fetch() {
      const v = this.view, span = v.t1 - v.t0, w = this.width();
      const t0 = Math.floor(v.t0 - span / 2), t1 = Math.ceil(v.t1 + span / 2);
      const px = Math.round(w * 2);
      const ids = this.rows.filter(r => r.t.n_slices || r.t.n_instants || r.t.n_counters).map(r => r.t.uuid);
      const gen = this.gen, seq = ++this.reqSeq;
      this.fetched = { t0: t0, t1: t1, npx: (t1 - t0) / px, gen: gen };   // in flight: don't ask twice
      const r = await getJSON(this.api + '/window?t0=' + t0 + '&t1=' + t1 + '&px=' + px + '&tracks=' + ids.join(','));
      if (seq < this.appliedSeq) return;
      if (!r.ok) { this.setStatus('Timeline query failed: ' + (r.body && r.body.error), 'error'); return; }
      this.appliedSeq = seq;
      for (const k of Object.keys(r.body.names)) this.names.set(Number(k), r.body.names[k]);
      this.updateMatches();
      this.data = r.body;
      this.requestDraw();
    }

    // -- drawing -------------------------------------------------------------
    requestDraw() {
      if (this.drawPending) return;
      this.drawPending = true;
      requestAnimationFrame((ts) => { this.drawPending = false; this.frame(ts); });
    }
    frame(ts) {
      if (this.keys.size) {
        const dt = Math.min(0.1, this.lastFrame ? (ts - this.lastFrame) / 1000 : 1 / 60);
        this.applyKeys(dt);
        this.lastFrame = ts;
        this.requestDraw();
      } else this.lastFrame = 0;
      this.draw();
    }
    draw() {
      if (!this.view) return;
      const W = this.scroll.clientWidth, H = this.scroll.clientHeight;
      if (W !== this.size.w || H !== this.size.h || !this.ctx) {
        this.size = { w: W, h: H };
        this.ctx = setupCanvas(this.canvas, W, H);
        this.spacer.style.height = Math.max(this.totalH || 0, H) + 'px';
      }
      if (this.needFetch()) this.scheduleFetch();
      const ctx = this.ctx, top = this.scroll.scrollTop;
      ctx.clearRect(0, 0, W, H);
      ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, W, H);
      const ticks = this.ticks();
      ctx.strokeStyle = '#eef0f3'; ctx.lineWidth = 1;
      for (const t of ticks) { const x = Math.round(this.x(t)) + 0.5; ctx.beginPath(); ctx.moveTo(x, AXIS_H); ctx.lineTo(x, H); ctx.stroke(); }
      let drawn = 0;
      ctx.font = '11px system-ui, sans-serif'; ctx.textBaseline = 'middle';
      for (const row of this.rows) {
        const y = row.y - top;
        if (y + row.h < AXIS_H || y > H) continue;
        drawn += this.drawRow(ctx, row, y, W);
      }
      // Label column on top of the track area.
      ctx.save(); ctx.beginPath(); ctx.rect(0, AXIS_H, LABEL_W, H - AXIS_H); ctx.clip();
      for (const row of this.rows) {
        const y = row.y - top;
        if (y + row.h < AXIS_H || y > H) continue;
        this.drawLabel(ctx, row, y);
      }
      ctx.restore();
      this.drawAxis(ctx, W, ticks);
      this.canvas.dataset.drawn = String(drawn);
      if (this.data && !this.painted) {
        this.painted = true;
        document.body.dataset.timelinePainted = String(performance.now());
      }
    }
    ticks() {
      const v = this.view, span = v.t1 - v.t0, n = Math.max(2, this.width() / 110);
      const raw = span / n, p = Math.pow(10, Math.floor(Math.log10(raw)));
      const step = [1, 2, 5, 10].map(m => m * p).find(s => s >= raw) || p * 10;
      const out = [];
      for (let t = Math.ceil((v.t0 - this.tMin) / step) * step + this.tMin; t <= v.t1; t += step) out.push(t);
      this.tickStep = step;
      return out;
    }
    drawAxis(ctx, W, ticks) {
      ctx.fillStyle = '#f6f7f9'; ctx.fillRect(0, 0, W, AXIS_H);
      ctx.strokeStyle = '#c9ced6'; ctx.beginPath(); ctx.moveTo(0, AXIS_H - 0.5); ctx.lineTo(W, AXIS_H - 0.5); ctx.stroke();
      ctx.fillStyle = '#444'; ctx.font = '11px system-ui, sans-serif'; ctx.textBaseline = 'middle';
      for (const t of ticks) {
        const x = this.x(t);
        if (x < LABEL_W) continue;
        ctx.fillRect(Math.round(x), AXIS_H - 6, 1, 6);
        ctx.fillText(fmtNs(t - this.tMin), x + 3, AXIS_H / 2);
      }
      ctx.fillStyle = '#f6f7f9'; ctx.fillRect(0, 0, LABEL_W, AXIS_H - 1);
      ctx.fillStyle = '#444';
      ctx.fillText('window ' + fmtNs(this.view.t1 - this.view.t0), 8, AXIS_H / 2);
    }
    drawLabel(ctx, row, y) {
      const t = row.t;
      ctx.fillStyle = t.kind === 'process' ? '#e9edf5' : '#f6f7f9';
      ctx.fillRect(0, y, LABEL_W, row.h);
      ctx.strokeStyle = '#e3e6eb'; ctx.beginPath(); ctx.moveTo(0, y + row.h - 0.5); ctx.lineTo(LABEL_W, y + row.h - 0.5); ctx.stroke();
      let label = t.name || '';
      if (t.kind === 'process') label = (this.collapsed.has(t.uuid) ? '▸ ' : '▾ ') + label + '  pid ' + t.pid;
      else if (t.kind === 'thread') label = (this.collapsed.has(t.uuid) ? '▸ ' : '▾ ') + label + '  ' + t.tid;
      else if (t.kind === 'counter' && t.unit) label += ' (' + t.unit + ')';
      ctx.fillStyle = '#1d2330';
      ctx.font = (t.kind === 'process' ? 'bold ' : '') + '12px system-ui, sans-serif';
      const x = 6 + (t.level || 0) * 12;
      ctx.fillText(this.fit(ctx, label, LABEL_W - x - 4), x, y + Math.min(row.h, HEADER_H) / 2);
      if (t.kind === 'counter' && row.max != null) {
        ctx.fillStyle = '#6b7280'; ctx.font = '10px system-ui, sans-serif';
        ctx.fillText('max ' + this.fmtVal(row.max, t.unit), x, y + row.h - 9);
      }
    }
    fit(ctx, s, w) {
      if (w <= 8) return '';
      if (ctx.measureText(s).width <= w) return s;
      let n = Math.max(0, Math.floor(s.length * w / ctx.measureText(s).width));
      while (n > 0 && ctx.measureText(s.slice(0, n) + '…').width > w) n--;
      return n > 0 ? s.slice(0, n) + '…' : '';
    }
    fmtVal(v, unit) {
      if (unit === 'ns') return fmtNs(v);
      if (unit === 'bytes') return GS.fmtBytes(v);
      return (Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3)) + (unit && unit !== 'count' ? ' ' + unit : '');
    }
    drawRow(ctx, row, y, W) {
      const t = row.t, d = this.data && this.data.tracks[String(t.uuid)];
      ctx.strokeStyle = '#eceef2'; ctx.beginPath(); ctx.moveTo(LABEL_W, y + row.h - 0.5); ctx.lineTo(W, y + row.h - 0.5); ctx.stroke();
      if (t.kind === 'process') { ctx.fillStyle = '#f3f5fa'; ctx.fillRect(LABEL_W, y, W - LABEL_W, row.h); }
      if (!d) return 0;
      const base = this.data.base;
      let n = 0;
      if (d.b) {
        ctx.fillStyle = BLOCK_COLOR;
        for (const b of d.b) {
          const x0 = this.x(base + b[0]), x1 = this.x(base + b[0] + b[1]);
          if (x1 < LABEL_W || x0 > W) continue;
          const a = Math.max(LABEL_W, x0);
          ctx.fillRect(a, y + PAD + b[2] * SLICE_H, Math.max(1, Math.min(W, x1) - a), SLICE_H - 1);
          n++;
        }
      }
      if (d.s) n += this.drawSlices(ctx, d.s, base, y, W, t);
      if (d.i) {
        ctx.fillStyle = '#d1495b';
        for (const i of d.i) {
          const x = this.x(base + i[1]);
          if (x < LABEL_W || x > W) continue;
          const yy = y + (t.kind === 'process' || t.kind === 'thread' ? 2 : PAD);
          ctx.beginPath(); ctx.moveTo(x, yy); ctx.lineTo(x + 4, yy + 7); ctx.lineTo(x - 4, yy + 7); ctx.closePath(); ctx.fill();
          n++;
        }
      }
      if (d.c) n += this.drawCounter(ctx, d.c, base, row, y, W);
      return n;
    }
    drawSlices(ctx, list, base, y, W, track) {
      const sel = this.selected, searching = this.searchQ !== '';
      let n = 0;
      for (const s of list) {
        const a = base + s[1], b = s[2] == null ? this.tMax : a + s[2];
        let x0 = this.x(a), x1 = this.x(b);
        if (x1 < LABEL_W || x0 > W) continue;
        x0 = Math.max(LABEL_W, x0); x1 = Math.min(W, x1);
        const w = Math.max(1, x1 - x0), yy = y + PAD + s[3] * SLICE_H;
        const name = this.names.get(s[4]) || '';
        const match = searching && this.matchNames.has(s[4]);
        ctx.globalAlpha = searching && !match ? 0.3 : 1;
        ctx.fillStyle = track.name === 'verdict' ? '#e4572e' : colorFor(name);
        ctx.fillRect(x0, yy, w, SLICE_H - 1);
        ctx.globalAlpha = 1;
        if (w > 28) {
          ctx.fillStyle = '#111';
          ctx.fillText(this.fit(ctx, name, w - 6), x0 + 3, yy + SLICE_H / 2);
        }
        if (match) { ctx.strokeStyle = '#f2b600'; ctx.lineWidth = 2; ctx.strokeRect(x0, yy, w, SLICE_H - 1); ctx.lineWidth = 1; }
        if (sel && sel.id === s[0]) { ctx.strokeStyle = '#000'; ctx.lineWidth = 2; ctx.strokeRect(x0 - 1, yy - 1, w + 2, SLICE_H + 1); ctx.lineWidth = 1; }
        n++;
      }
      return n;
    }
    drawCounter(ctx, pts, base, row, y, W) {
      let max = 0, min = 0;
      for (const p of pts) { if (p[2] > max) max = p[2]; if (p[1] < min) min = p[1]; }
      if (row.t.unit === '%') max = Math.max(max, 100);
      row.max = max;
      const h = row.h - 6, yOf = (v) => y + 3 + h - (v - min) / ((max - min) || 1) * h;
      ctx.save(); ctx.beginPath(); ctx.rect(LABEL_W, y, W - LABEL_W, row.h); ctx.clip();
      ctx.fillStyle = 'rgba(47,91,211,0.18)'; ctx.strokeStyle = '#2f5bd3';
      ctx.beginPath();
      let started = false, lastX = LABEL_W;
      for (let i = 0; i < pts.length; i++) {
        const p = pts[i], x = Math.max(LABEL_W - 1, this.x(base + p[0]));
        const nx = i + 1 < pts.length ? this.x(base + pts[i + 1][0]) : Math.min(W, this.x(this.tMax));
        if (!started) { ctx.moveTo(x, yOf(min)); started = true; }
        ctx.lineTo(x, yOf(p[2])); ctx.lineTo(Math.max(x, nx), yOf(p[2]));
        lastX = Math.max(x, nx);
      }
      if (started) { ctx.lineTo(lastX, yOf(min)); ctx.closePath(); ctx.fill(); ctx.stroke(); }
      ctx.fillStyle = 'rgba(47,91,211,0.45)';
      for (const p of pts) if (p[1] !== p[2]) {
        const x = this.x(base + p[0]); ctx.fillRect(x, yOf(p[2]), 1, Math.max(1, yOf(p[1]) - yOf(p[2])));
      }
      ctx.restore();
      return pts.length;
    }

    // -- interaction -----------------------------------------------------------
    _bind() {
      const c = this.canvas;
      c.addEventListener('wheel', (e) => {
        const r = c.getBoundingClientRect(), x = e.clientX - r.left;
        if (e.ctrlKey || e.metaKey) {
          e.preventDefault();
          this.zoom(Math.exp(e.deltaY * 0.0025), x);
        } else if (e.shiftKey || Math.abs(e.deltaX) > Math.abs(e.deltaY)) {
          e.preventDefault();
          const d = e.shiftKey && !e.deltaX ? e.deltaY : e.deltaX;
          this.pan(d * (this.view.t1 - this.view.t0) / this.width());
        }
      }, { passive: false });
      c.addEventListener('mousemove', (e) => { this.mouseX = e.clientX - c.getBoundingClientRect().left; });
      c.addEventListener('mouseleave', () => { this.mouseX = null; });
      c.addEventListener('mousedown', (e) => {
        if (e.button !== 0 || !this.view) return;
        e.preventDefault();
        this.scroll.focus({ preventScroll: true });
        const start = { x: e.clientX, y: e.clientY, t0: this.view.t0, t1: this.view.t1, moved: false };
        const move = (ev) => {
          const dx = ev.clientX - start.x;
          if (!start.moved && Math.abs(dx) + Math.abs(ev.clientY - start.y) < 4) return;
          start.moved = true; c.classList.add('dragging');
          const dt = -dx * (start.t1 - start.t0) / this.width();
          this.setView(start.t0 + dt, start.t1 + dt);
        };
        const up = (ev) => {
          window.removeEventListener('mousemove', move); window.removeEventListener('mouseup', up);
          c.classList.remove('dragging');
          if (!start.moved) { const r = c.getBoundingClientRect(); this.click(ev.clientX - r.left, ev.clientY - r.top); }
        };
        window.addEventListener('mousemove', move); window.addEventListener('mouseup', up);
      });
      this.scroll.addEventListener('scroll', () => this.requestDraw());
      window.addEventListener('resize', () => this.requestDraw());
      document.addEventListener('keydown', (e) => {
        const tag = (e.target && e.target.tagName) || '';
        if (tag === 'INPUT' || tag === 'TEXTAREA' || e.ctrlKey || e.metaKey || e.altKey || !this.view) return;
        const k = e.key.toLowerCase();
        if ('wasd'.includes(k) && k.length === 1) {
          e.preventDefault();
          if (!this.keys.has(k)) { this.keys.add(k); this.applyKeys(1 / 12, k); }
          this.requestDraw();
        } else if (k === 'f' && this.selected) { this.zoomToSelected(); }
        else if (k === 'escape') { this.select(null); }
      });
      document.addEventListener('keyup', (e) => { this.keys.delete(e.key.toLowerCase()); });
      window.addEventListener('blur', () => this.keys.clear());
    }
    applyKeys(dt, only) {
      const keys = only ? [only] : [...this.keys];
      const span = this.view.t1 - this.view.t0;
      const atX = this.mouseX;
      for (const k of keys) {
        if (k === 'w') this.zoom(Math.exp(-dt * 2.5), atX);
        else if (k === 's') this.zoom(Math.exp(dt * 2.5), atX);
        else if (k === 'a') this.pan(-span * dt * 1.2);
        else if (k === 'd') this.pan(span * dt * 1.2);
      }
    }
    rowAt(y) {
      const cy = y + this.scroll.scrollTop;
      return this.rows.find(r => cy >= r.y && cy < r.y + r.h) || null;
    }
    click(x, y) {
      if (y < AXIS_H) return;
      const row = this.rowAt(y);
      if (!row) return;
      const t = row.t;
      if (x < LABEL_W) {
        if (t.kind === 'process' || t.kind === 'thread') {
          if (this.collapsed.has(t.uuid)) this.collapsed.delete(t.uuid); else this.collapsed.add(t.uuid);
          this.layout();
        }
        return;
      }
      const d = this.data && this.data.tracks[String(t.uuid)];
      if (!d) return;
      const base = this.data.base, cy = y + this.scroll.scrollTop - row.y;
      const depth = Math.floor((cy - PAD) / SLICE_H);
      for (const s of d.s || []) {
        if (s[3] !== depth) continue;
        const a = base + s[1], b = s[2] == null ? this.tMax : a + s[2];
        if (x >= this.x(a) - 1 && x <= this.x(b) + 1) { this.select({ id: s[0], ts: a, dur: s[2], track: t.uuid }); return; }
      }
      for (const i of d.i || []) {
        if (Math.abs(this.x(base + i[1]) - x) <= 5) { this.showInstant(t, i, base); return; }
      }
      for (const b of d.b || []) {
        if (b[2] !== depth) continue;
        const a = base + b[0], e = a + b[1];
        if (x >= this.x(a) - 2 && x <= this.x(e) + 2) {
          const m = Math.max(b[1] * 0.1, MIN_SPAN);
          this.setView(a - m, e + m);
          return;
        }
      }
      this.select(null);
    }
    zoomToSelected() {
      const s = this.selected;
      if (!s) return;
      const dur = s.dur == null ? this.tMax - s.ts : s.dur;
      const m = Math.max(dur * 0.5, MIN_SPAN * 5);
      this.setView(s.ts - m, s.ts + dur + m);
    }
    async select(sel) {
      this.selected = sel;
      this.canvas.dataset.selected = sel ? String(sel.id) : '';
      this.requestDraw();
      if (!sel) { this.details.hidden = true; return; }
      const r = await getJSON(this.api + '/slice/' + sel.id);
      if (!r.ok || !this.selected || this.selected.id !== sel.id) return;
      Object.assign(this.selected, { ts: r.body.ts, dur: r.body.dur, track: r.body.track });
      this.renderDetails(r.body);
    }
    showInstant(track, i, base) {
      this.details.hidden = false;
      const body = this.detailsBody; clear(body);
      body.appendChild(el('h3', null, this.names.get(i[2]) || 'instant'));
      const tbl = el('table');
      const add = (k, v) => { const tr = el('tr'); tr.appendChild(el('td', null, k)); tr.appendChild(el('td', null, v)); tbl.appendChild(tr); };
      add('Track', track.name);
      add('Time', '+' + fmtNs(base + i[1] - this.tMin));
      if (i[3] > 1) add('Merged', i[3] + ' instants within a pixel');
      body.appendChild(tbl);
    }
    renderDetails(d) {
      const body = this.detailsBody;
      clear(body);
      this.details.hidden = false;
      body.appendChild(el('h3', { id: 'details-name' }, d.name));
      const tbl = el('table', { id: 'details-table' });
      const add = (k, v, cls) => {
        const tr = el('tr', cls ? { class: cls } : null);
        tr.appendChild(el('td', null, k)); tr.appendChild(el('td', null, v)); tbl.appendChild(tr);
      };
      const path = d.path || [];
      const proc = path.find(p => p.kind === 'process'), thr = path.find(p => p.kind === 'thread');
      if (thr) add('Thread', thr.name + ' (tid ' + thr.tid + ', pid ' + thr.pid + ')');
      else if (proc) add('Process', proc.name + ' (pid ' + proc.pid + ')');
      if (path.length) add('Track', path[0].name);
      add('Start', '+' + fmtNs(d.ts - this.tMin));
      add('Duration', d.dur == null ? 'still open' : fmtNs(d.dur));
      add('Depth', String(d.depth));
      const a = d.args || {};
      if (a.file !== undefined && a.line !== undefined) add('Python line', a.file + ':' + a.line, 'pyline');
      if (a.py !== undefined) add('Python line', String(a.py), 'pyline');
      body.appendChild(tbl);
      const keys = Object.keys(a);
      if (keys.length) {
        body.appendChild(el('h4', null, 'Arguments'));
        const at = el('table', { id: 'details-args' });
        for (const k of keys) {
          const tr = el('tr'); tr.appendChild(el('td', null, k));
          tr.appendChild(el('td', null, a[k] === null ? 'null' : String(a[k]))); at.appendChild(tr);
        }
        body.appendChild(at);
      }
      if (d.stack && d.stack.length) {
        body.appendChild(el('h4', null, 'Enclosing slices'));
        const ul = el('ul', { class: 'stack' });
        for (const s of d.stack) {
          const li = el('li', null, s.name);
          li.addEventListener('click', () => this.select({ id: s.id }));
          ul.appendChild(li);
        }
        body.appendChild(ul);
      }
      const zoom = el('button', { type: 'button' }, 'Zoom to slice (F)');
      zoom.addEventListener('click', () => this.zoomToSelected());
      body.appendChild(zoom);
    }

    // -- search ---------------------------------------------------------------
    updateMatches() {
      this.matchNames = new Set();
      if (!this.searchQ) return;
      const q = this.searchQ.toLowerCase();
      for (const [id, name] of this.names) if (name.toLowerCase().includes(q)) this.matchNames.add(id);
    }
    async search(q) {
      this.searchQ = q.trim();
      this.results = []; this.resultIdx = -1; this.resultTotal = 0;
      this.updateMatches(); this.requestDraw();
      if (!this.searchQ) return { total: 0 };
      const r = await getJSON(this.api + '/search?limit=1000&q=' + encodeURIComponent(this.searchQ));
      if (!r.ok) return { total: 0, error: r.body.error };
      for (const k of Object.keys(r.body.names)) this.names.set(Number(k), r.body.names[k]);
      this.updateMatches();
      this.results = r.body.results; this.resultTotal = r.body.total;
      return { total: r.body.total };
    }
    gotoResult(step) {
      if (!this.results || !this.results.length) return null;
      this.resultIdx = (this.resultIdx + step + this.results.length) % this.results.length;
      const s = this.results[this.resultIdx];
      const track = this.tracks.find(t => t.uuid === s[1]);
      if (track) {   // make sure its process/thread is expanded
        let p = this.tracks.find(t => t.uuid === track.parent), changed = false;
        while (p) { if (this.collapsed.delete(p.uuid)) changed = true; const pp = p.parent; p = this.tracks.find(t => t.uuid === pp); }
        if (changed) this.layout();
        const row = this.rows.find(r => r.t.uuid === s[1]);
        if (row && (row.y < this.scroll.scrollTop + AXIS_H || row.y > this.scroll.scrollTop + this.scroll.clientHeight - 40)) {
          this.scroll.scrollTop = Math.max(0, row.y - AXIS_H - 40);
        }
      }
      this.select({ id: s[0], ts: s[2], dur: s[3], track: s[1] });
      this.zoomToSelected();
      return this.resultIdx;
    }

    setStatus(text, kind) {
      if (!this.status) return;
      this.status.textContent = text;
      this.status.hidden = !text;
      this.status.className = 'note' + (kind ? ' ' + kind : '');
    }
  }
  window.GSTimeline = Timeline;
})();
