// Hearth setup page: pick the home's Wi-Fi. Served only on the box's own setup Wi-Fi.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const els = {
    message: $('message'), pick: $('pick'), network: $('network'), otherRow: $('other-row'),
    other: $('other'), password: $('password'), show: $('show'), country: $('country'),
    join: $('join-wifi'), done: $('done'),
  };
  const OTHER = '\u0000other';
  const say = (text) => { els.message.textContent = text || ''; };

  function show(view) { // 'pick' | 'done'
    els.pick.hidden = view !== 'pick';
    els.done.hidden = view !== 'done';
    document.body.dataset.view = view;
  }

  function option(value, text) {
    const o = document.createElement('option');
    o.value = value;
    o.textContent = text;
    return o;
  }

  // The phone's own region is the likeliest country ("en-GB" → "GB").
  function guessCountry() {
    for (const tag of navigator.languages || [navigator.language || '']) {
      const m = /-([A-Za-z]{2})\b/.exec(tag);
      if (m) return m[1].toUpperCase();
    }
    return '';
  }

  async function load() {
    let answer = null;
    try {
      const r = await fetch('/setup/api/networks', { cache: 'no-store' });
      if (r.ok) answer = await r.json();
    } catch (_) { /* shown below */ }
    const networks = answer && Array.isArray(answer.networks) ? answer.networks : [];
    els.network.replaceChildren(...networks.map((n) => option(String(n), String(n))), option(OTHER, 'Another network…'));
    els.otherRow.hidden = networks.length > 0;
    els.country.value = guessCountry();
    show('pick');
    say(networks.length ? '' : 'The box saw no networks: type your Wi-Fi\'s name.');
  }

  async function submit() {
    const name = els.network.value === OTHER ? els.other.value : els.network.value;
    if (!name) { say('Which Wi-Fi? Type its name.'); els.other.focus(); return; }
    els.join.disabled = true;
    say('Telling the box…');
    try {
      const r = await fetch('/setup/api/wifi', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ name, password: els.password.value, country: els.country.value }),
        cache: 'no-store',
      });
      let answer = null;
      try { answer = await r.json(); } catch (_) { /* not JSON */ }
      if (!r.ok) { say((answer && answer.error) || `The box answered ${r.status}.`); return; }
      els.password.value = '';
      show('done');
      say(`The box is joining “${name}”.`);
    } catch (_) {
      say('The box cannot be reached. Is this phone still on the box\'s Wi-Fi?');
    } finally {
      els.join.disabled = false;
    }
  }

  els.network.addEventListener('change', () => { els.otherRow.hidden = els.network.value !== OTHER; });
  els.show.addEventListener('change', () => { els.password.type = els.show.checked ? 'text' : 'password'; });
  els.pick.addEventListener('submit', (e) => { e.preventDefault(); submit(); });
  load();
})();
