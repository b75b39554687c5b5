// The verdict as pictures: per-step stacked bars, GPU utilisation with stall
// intervals shaded, a flame graph of worker frames during stalls.
'use strict';
window.GSReport = (function () {
  const { el, clear, fmtNs, getJSON, setupCanvas } = window.GS;
  const PARTS = [['data_wait_ns', 'data wait', '#e4572e'], ['compute_ns', 'compute', '#4caf50'],
    ['sync_ns', 'sync', '#8e6cc2'], ['comm_ns', 'communication', '#2f7bd3'], ['other_ns', 'other', '#b0b7c3']];

  function stepsChart(steps) {
    const canvas = document.getElementById('steps-chart');
    if (!canvas || !steps.length) return;
    const legend = document.getElementById('steps-legend'), tip = document.getElementById('steps-tip');
    for (const [, label, color] of PARTS) {
      const item = el('span'); const sw = el('i'); sw.style.background = color;
      item.appendChild(sw); item.appendChild(document.createTextNode(label)); legend.appendChild(item);
    }
    const total = (s) => PARTS.reduce((a, p) => a + (s[p[0]] || 0), 0);
    const maxT = Math.max(1, ...steps.map(total));
    let geom = null;
    function draw() {
      const W = canvas.parentElement.clientWidth - 16, H = 200, L = 56, B = 22;
      const ctx = setupCanvas(canvas, W, H);
      ctx.clearRect(0, 0, W, H);
      const bw = (W - L - 4) / steps.length, scale = (H - B - 8) / maxT;
      ctx.font = '11px system-ui, sans-serif'; ctx.fillStyle = '#6b7280'; ctx.textBaseline = 'middle';
      for (let i = 0; i <= 4; i++) {
        const v = maxT * i / 4, y = H - B - v * scale;
        ctx.fillText(fmtNs(v), 2, y); ctx.fillStyle = '#eef0f3'; ctx.fillRect(L, Math.round(y), W - L, 1); ctx.fillStyle = '#6b7280';
      }
      steps.forEach((s, i) => {
        let y = H - B;
        for (const [k, , color] of PARTS) {
          const h = (s[k] || 0) * scale;
          ctx.fillStyle = color; ctx.fillRect(L + i * bw + (bw > 4 ? 1 : 0), y - h, Math.max(1, bw - (bw > 4 ? 2 : 0)), h);
          y -= h;
        }
      });
      ctx.fillStyle = '#6b7280'; ctx.textBaseline = 'top';
      ctx.fillText('step ' + (steps[0].index ?? 0), L, H - B + 6);
      const last = 'step ' + (steps[steps.length - 1].index ?? steps.length - 1);
      ctx.fillText(last, W - ctx.measureText(last).width - 4, H - B + 6);
      geom = { L: L, bw: bw };
      canvas.dataset.bars = String(steps.length);
    }
    canvas.addEventListener('mousemove', (e) => {
      const r = canvas.getBoundingClientRect(), i = Math.floor((e.clientX - r.left - geom.L) / geom.bw);
      if (i < 0 || i >= steps.length) { tip.hidden = true; return; }
      const s = steps[i];
      tip.textContent = 'step ' + (s.index ?? i) + ': ' + fmtNs(total(s)) + '\n' +
        PARTS.map(p => p[1] + ' ' + fmtNs(s[p[0]] || 0)).join('\n');
      tip.hidden = false; tip.style.left = (e.clientX - r.left + 20) + 'px'; tip.style.top = '30px';
    });
    canvas.addEventListener('mouseleave', () => { tip.hidden = true; });
    draw();
    window.addEventListener('resize', draw);
  }

  function gpuChart(api) {
    const canvas = document.getElementById('gpu-chart'), note = document.getElementById('gpu-note');
    if (!canvas) return;
    let data = null;
    function draw() {
      const W = canvas.parentElement.clientWidth - 16, H = 200, L = 40, B = 18;
      const ctx = setupCanvas(canvas, W, H);
      ctx.clearRect(0, 0, W, H);
      const t0 = data.t_min, t1 = data.t_max, span = (t1 - t0) || 1;
      const X = (t) => L + (t - t0) / span * (W - L - 4), Y = (v) => H - B - v / 100 * (H - B - 8);
      ctx.fillStyle = 'rgba(228,87,46,0.25)';
      for (const s of data.stalls) { const x0 = X(s[0]), x1 = X(s[0] + (s[1] || 0)); ctx.fillRect(x0, 0, Math.max(1, x1 - x0), H - B); }
      ctx.font = '11px system-ui, sans-serif'; ctx.fillStyle = '#6b7280'; ctx.textBaseline = 'middle';
      for (const v of [0, 50, 100]) { ctx.fillText(v + '%', 2, Y(v)); ctx.fillStyle = '#eef0f3'; ctx.fillRect(L, Math.round(Y(v)), W - L, 1); ctx.fillStyle = '#6b7280'; }
      ctx.textBaseline = 'top'; ctx.fillText('0', L, H - B + 4);
      const end = fmtNs(span); ctx.fillText(end, W - ctx.measureText(end).width - 4, H - B + 4);
      const colors = ['#2f5bd3', '#2e7d32', '#8e6cc2', '#d1495b', '#00838f', '#b26a00'];
      data.gpu.forEach((g, i) => {
        ctx.strokeStyle = colors[i % colors.length]; ctx.lineWidth = 1.5; ctx.beginPath();
        g.points.forEach((p, j) => { const x = X(p[0]), y = Y((p[1] + p[2]) / 2); if (j) ctx.lineTo(x, y); else ctx.moveTo(x, y); });
        ctx.stroke();
      });
      canvas.dataset.series = String(data.gpu.length);
      canvas.dataset.stalls = String(data.stalls.length);
    }
    async function load() {
      const r = await getJSON(api + '/report');
      if (r.status === 202) { setTimeout(load, 500); return; }
      if (!r.ok) { note.textContent = 'Cannot read the trace: ' + (r.body.error || r.status); canvas.hidden = true; return; }
      data = r.body;
      if (!data.gpu.length) {
        note.textContent = 'No GPU utilisation in this trace (NVML was not available)' +
          (data.stalls.length ? '; stall intervals are shaded.' : '.');
        if (!data.stalls.length) { canvas.hidden = true; return; }
      } else {
        note.textContent = data.gpu.map(g => g.name).join(', ') + (data.stalls.length ? ' — stalls shaded red' : '');
      }
      draw();
      window.addEventListener('resize', draw);
    }
    load();
    return { reload: load };
  }

  function flame(tree) {
    const box = document.getElementById('flame'), reset = document.getElementById('flame-reset');
    if (!box || !tree) return;
    const ROW = 18;
    function depthOf(n) { return 1 + Math.max(0, ...n.children.map(depthOf)); }
    function render(root) {
      clear(box);
      box.style.height = (Math.min(depthOf(root), 60) * ROW + 2) + 'px';
      const place = (n, x, w, d) => {
        if (w < 0.002 || d >= 60) return;
        const pct = (100 * n.value / tree.value).toFixed(1);
        const div = el('div', { class: 'fnode', title: n.name + '\n' + n.value + ' samples (' + pct + '%)' }, n.name);
        div.style.left = (x * 100) + '%'; div.style.width = (w * 100) + '%'; div.style.top = (d * ROW) + 'px';
        div.style.background = 'hsl(' + (20 + (GS.hash(n.name) % 40)) + ',75%,' + (62 + (GS.hash(n.name) >> 8) % 14) + '%)';
        div.addEventListener('click', () => { reset.hidden = n === tree; render(n); });
        box.appendChild(div);
        let cx = x;
        for (const c of n.children) { const cw = w * c.value / (n.value || 1); place(c, cx, cw, d + 1); cx += cw; }
      };
      place(root, 0, 1, 0);
    }
    reset.addEventListener('click', () => { reset.hidden = true; render(tree); });
    render(tree);
  }

  function openInPerfetto(api, title, fileName, button) {
    // ui.perfetto.dev's postMessage protocol: PING until PONG, then the buffer.
    button.addEventListener('click', async () => {
      const origin = 'https://ui.perfetto.dev';
      const win = window.open(origin + '/#!/');
      if (!win) { alert('The browser blocked the new tab: allow pop-ups for this page.'); return; }
      button.disabled = true; button.textContent = 'Loading trace…';
      let buffer;
      try {
        const r = await fetch(api + '/trace');
        buffer = await r.arrayBuffer();
      } catch (e) { button.disabled = false; button.textContent = 'Open in Perfetto UI'; return; }
      button.textContent = 'Waiting for Perfetto UI…';
      let done = false;
      const onMessage = (e) => {
        if (e.origin !== origin || e.data !== 'PONG' || done) return;
        done = true; clearInterval(timer); window.removeEventListener('message', onMessage);
        win.postMessage({ perfetto: { buffer: buffer, title: title, fileName: fileName } }, origin);
        button.disabled = false; button.textContent = 'Open in Perfetto UI';
      };
      window.addEventListener('message', onMessage);
      const started = Date.now();
      const timer = setInterval(() => {
        if (Date.now() - started > 60000) { clearInterval(timer); button.disabled = false; button.textContent = 'Open in Perfetto UI'; return; }
        try { win.postMessage('PING', origin); } catch (e) { /* not loaded yet */ }
      }, 250);
    });
  }

  return { stepsChart, gpuChart, flame, openInPerfetto };
})();
