// Shared helpers. Every string from a trace or summary goes into the page
// through textContent (el()) or canvas fillText, never through innerHTML.
'use strict';
window.GS = (function () {
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    if (attrs) for (const k of Object.keys(attrs)) {
      if (k === 'class') e.className = attrs[k];
      else if (k === 'dataset') Object.assign(e.dataset, attrs[k]);
      else e.setAttribute(k, attrs[k]);
    }
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function fmtNs(ns) {
    const a = Math.abs(ns);
    if (a >= 60e9) return (ns / 60e9).toFixed(2) + ' min';
    if (a >= 1e9) return (ns / 1e9).toFixed(a >= 10e9 ? 2 : 3) + ' s';
    if (a >= 1e6) return (ns / 1e6).toFixed(a >= 10e6 ? 1 : 3) + ' ms';
    if (a >= 1e3) return (ns / 1e3).toFixed(a >= 10e3 ? 1 : 2) + ' µs';
    return Math.round(ns) + ' ns';
  }
  function fmtBytes(n) {
    if (typeof n !== 'number') return '—';
    const u = ['B', 'KB', 'MB', 'GB', 'TB'];
    let i = 0;
    while (Math.abs(n) >= 1000 && i < u.length - 1) { n /= 1000; i++; }
    return (i ? n.toFixed(1) : n.toFixed(0)) + ' ' + u[i];
  }
  function hash(s) {
    let h = 2166136261;
    for (let i = 0; i < s.length; i++) { h ^= s.charCodeAt(i); h = Math.imul(h, 16777619); }
    return h >>> 0;
  }
  function colorFor(name) {
    const h = hash(name || '');
    return 'hsl(' + (h % 360) + ',' + (45 + (h >> 9) % 25) + '%,' + (55 + (h >> 17) % 15) + '%)';
  }
  async function getJSON(url) {
    const r = await fetch(url, { headers: { Accept: 'application/json' } });
    let body = null;
    try { body = await r.json(); } catch (e) { body = { error: 'bad response (' + r.status + ')' }; }
    return { status: r.status, ok: r.ok, body: body };
  }
  function readJSON(id) {
    const node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }
  function setupCanvas(canvas, cssW, cssH) {
    const dpr = window.devicePixelRatio || 1;
    canvas.style.width = cssW + 'px';
    canvas.style.height = cssH + 'px';
    canvas.width = Math.max(1, Math.round(cssW * dpr));
    canvas.height = Math.max(1, Math.round(cssH * dpr));
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return ctx;
  }
  return { el, clear, fmtNs, fmtBytes, colorFor, getJSON, readJSON, setupCanvas, hash };
})();
