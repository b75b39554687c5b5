// The session page: verdict charts, then the timeline, following a live
// capture by polling /meta (which also extends the index as the trace grows).
'use strict';
(function () {
  const { getJSON, readJSON, fmtBytes } = window.GS;
  const info = readJSON('session-data'), report = readJSON('report-data');
  const api = '/api/s/' + encodeURIComponent(info.name);
  GSReport.stepsChart(report.steps || []);
  const gpu = GSReport.gpuChart(api);
  GSReport.flame(report.flame);
  GSReport.openInPerfetto(api, info.name, info.name + '.pftrace', document.getElementById('open-perfetto'));

  const tl = new GSTimeline({
    api: api, scroll: document.getElementById('tl-scroll'), spacer: document.getElementById('tl-spacer'),
    canvas: document.getElementById('tl-canvas'), details: document.getElementById('details'),
    detailsBody: document.getElementById('details-body'), status: document.getElementById('tl-status'),
  });
  window.gpuscopeTimeline = tl;
  document.getElementById('details-close').addEventListener('click', () => tl.select(null));
  document.getElementById('zoom-reset').addEventListener('click', () => tl.showAll());
  const follow = document.getElementById('follow');
  follow.addEventListener('change', () => { tl.follow = follow.checked; });

  const form = document.getElementById('search-form'), input = document.getElementById('search');
  const sstatus = document.getElementById('search-status');
  let lastQ = null;
  async function runSearch(step) {
    const q = input.value.trim();
    if (q !== lastQ) {
      lastQ = q;
      const r = await tl.search(q);
      sstatus.textContent = q ? (r.error ? r.error : r.total + ' match' + (r.total === 1 ? '' : 'es')) : '';
      if (!q || !r.total) return;
    }
    const i = tl.gotoResult(step);
    if (i !== null) sstatus.textContent = (i + 1) + ' / ' + tl.resultTotal + (tl.resultTotal > tl.results.length ? ' (first ' + tl.results.length + ' listed)' : '');
  }
  form.addEventListener('submit', (e) => { e.preventDefault(); runSearch(1); });
  document.getElementById('search-next').addEventListener('click', () => runSearch(1));
  document.getElementById('search-prev').addEventListener('click', () => runSearch(-1));

  let state = info.state;
  async function poll() {
    let r;
    try { r = await getJSON(api + '/meta'); } catch (e) { setTimeout(poll, 2000); return; }
    const m = r.body || {};
    if (r.status === 422 || (!r.ok && m.error)) { tl.setStatus('This trace cannot be shown: ' + m.error, 'error'); return; }
    if (!r.ok) { tl.setStatus('The viewer could not read the trace (' + r.status + ').', 'error'); return; }
    if (m.building) {
      const p = m.progress && m.progress[1] ? Math.round(100 * m.progress[0] / m.progress[1]) : 0;
      tl.setStatus('Indexing the trace… ' + p + '% (once per trace; later visits are instant)');
      setTimeout(poll, 300);
      return;
    }
    const cap = m.capture || {};
    document.getElementById('trace-size').textContent = fmtBytes(m.size);
    if (m.t_min == null) tl.setStatus(cap.state === 'live' ? 'Waiting for the first events…' : 'The trace holds no events.');
    else if (m.error) tl.setStatus('The trace is damaged: ' + m.error + ' — showing what comes before.', 'warn');
    else tl.setStatus('');
    tl.setMeta(m);
    document.getElementById('follow-label').hidden = cap.state !== 'live';
    if (state === 'live' && cap.state !== 'live') {
      const note = document.getElementById('live-note');
      note.textContent = cap.state === 'finished' ? 'The capture has finished: reload the page for its verdict.' : 'The trace stopped growing.';
      note.hidden = false;
      const badge = document.getElementById('state-badge'); if (badge) badge.hidden = true;
      if (gpu) gpu.reload();
    }
    state = cap.state;
    if (state === 'live') setTimeout(poll, info.poll_ms || 500);
  }
  poll();
})();
