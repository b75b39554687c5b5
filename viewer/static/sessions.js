// The captures list refreshes itself: new captures appear, live ones grow.
'use strict';
(function () {
  const { el, clear, getJSON, fmtBytes } = window.GS;
  const table = document.getElementById('sessions');
  const VERDICT = { high: 'input-bound', moderate: 'partly input-bound', no: 'not input-bound' };
  function when(t) {
    if (typeof t !== 'number') return '—';
    const d = new Date(t * 1000), p = (n) => String(n).padStart(2, '0');
    return d.getFullYear() + '-' + p(d.getMonth() + 1) + '-' + p(d.getDate()) + ' ' + p(d.getHours()) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds());
  }
  function dur(s) {
    if (typeof s !== 'number') return '—';
    if (s < 1) return Math.round(s * 1000) + ' ms';
    if (s < 120) return s.toFixed(1) + ' s';
    return Math.floor(s / 60) + ' min ' + Math.floor(s % 60) + ' s';
  }
  function row(c) {
    const tr = el('tr', { dataset: { name: c.name } });
    const a = el('a', { href: '/s/' + encodeURIComponent(c.name) }, c.name);
    const td = el('td'); td.appendChild(a); tr.appendChild(td);
    const tt = el('td', { class: 'target', title: c.target || '' }, c.target || '—');
    if (c.pid) tt.appendChild(el('span', { class: 'dim' }, ' (PID ' + c.pid + ')'));
    tr.appendChild(tt);
    tr.appendChild(el('td', null, when(c.started)));
    tr.appendChild(el('td', null, dur(c.duration)));
    const v = el('td');
    if (c.input_bound && VERDICT[c.input_bound]) v.appendChild(el('span', { class: 'badge verdict-' + c.input_bound }, VERDICT[c.input_bound]));
    else v.textContent = c.state === 'finished' ? '' : '—';
    tr.appendChild(v);
    tr.appendChild(el('td', { class: 'num' }, fmtBytes(c.size)));
    const st = el('td');
    if (c.state === 'live') st.appendChild(el('span', { class: 'badge live' }, '● live'));
    else if (c.state === 'incomplete') st.appendChild(el('span', { class: 'badge incomplete' }, 'no summary'));
    else st.textContent = 'finished';
    tr.appendChild(st);
    return tr;
  }
  let last = null;
  async function poll() {
    const r = await getJSON('/api/sessions').catch(() => null);
    if (r && r.ok) {
      const key = JSON.stringify(r.body.sessions);
      if (last !== null && key !== last) {
        const tbody = table.tBodies[0];
        clear(tbody);
        for (const c of r.body.sessions) tbody.appendChild(row(c));
      }
      last = key;
    }
    setTimeout(poll, 2000);
  }
  poll();
})();
