// Hearth owner page. Plain browser APIs only; the API is described in src/web/owner.rs.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const els = {
    message: $('message'), boxName: $('box-name'), stranger: $('stranger'), pairing: $('pairing'),
    phoneName: $('phone-name'), pair: $('pair'), owner: $('owner'), knocksCard: $('knocks-card'),
    knocks: $('knocks'), people: $('people'), makeLink: $('make-link'), linkName: $('link-name'),
    linkTtl: $('link-ttl'), linkKnock: $('link-knock'), make: $('make'), made: $('made'),
    newLink: $('new-link'), share: $('share'), copy: $('copy'), links: $('links'),
    health: $('health'), pause: $('pause'), paused: $('paused'), rename: $('rename'),
    newName: $('new-name'), logCard: $('log-card'), log: $('privacy-log'),
    ownersCard: $('owners-card'), owners: $('owners'),
  };
  const KEY = 'hearth.owner'; // { credential, id, name } of this phone
  const POLL_MS = 3000;
  // For tests and the curious: what the page last heard (never the credential).
  const page = (window.hearthOwner = { view: 'none', status: null, invites: null, polls: 0 });

  let me = null, pairToken = '', timer = null, seq = 0;
  const shown = new Map(); // list element -> what it shows, so unchanged lists are left alone

  // ---------- small helpers ----------
  const say = (text) => { els.message.textContent = text || ''; };
  const make = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const when = (secs) => new Date(secs * 1000).toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' });
  const minutes = (secs) => (secs < 60 ? 'just now' : `${Math.round(secs / 60)} min`);

  function show(view) { // 'stranger' | 'pairing' | 'owner'
    els.stranger.hidden = view !== 'stranger';
    els.pairing.hidden = view !== 'pairing';
    els.owner.hidden = view !== 'owner';
    document.body.dataset.view = view;
    page.view = view;
  }

  function load() {
    try {
      const saved = JSON.parse(localStorage.getItem(KEY) || 'null');
      return saved && typeof saved.credential === 'string' ? saved : null;
    } catch (_) { return null; }
  }

  function keep(value) {
    try {
      if (value) localStorage.setItem(KEY, JSON.stringify(value)); else localStorage.removeItem(KEY);
    } catch (_) { say('This browser cannot keep the owner key (private mode?): it lasts until the page closes.'); }
  }

  // ---------- talking to the box ----------
  async function post(path, body, credential) {
    const headers = { 'Content-Type': 'application/json' };
    if (credential) headers.Authorization = `Bearer ${credential}`;
    let r;
    try {
      r = await fetch(path, { method: 'POST', headers, body: JSON.stringify(body), cache: 'no-store' });
    } catch (_) {
      throw new Error('The box cannot be reached. Is this phone on the home network?');
    }
    let answer = null;
    try { answer = await r.json(); } catch (_) { /* not JSON: described below */ }
    if (r.ok) return answer;
    const error = new Error((answer && answer.error) || `The box answered ${r.status}.`);
    error.status = r.status;
    throw error;
  }

  async function api(request) {
    if (!me) throw new Error('This phone is not an owner of the box.');
    try {
      return await post('/owner/api', request, me.credential);
    } catch (e) {
      if (e.status === 401) lost(e.message);
      throw e;
    }
  }

  // The box no longer knows this phone as an owner (withdrawn, or the box was reset).
  function lost(reason) {
    me = null;
    keep(null);
    clearTimeout(timer);
    show('stranger');
    say(reason);
  }

  // ---------- becoming an owner ----------
  async function pair() {
    const name = els.phoneName.value.trim();
    if (!name) { say('Give this phone a name first.'); els.phoneName.focus(); return; }
    els.pair.disabled = true;
    say('Asking the box…');
    try {
      const answer = await post('/owner/api/pair', { token: pairToken, name });
      pairToken = '';
      me = { credential: answer.credential, id: answer.id, name: answer.name };
      keep(me);
      show('owner');
      say(`This phone (${answer.name}) is now an owner of the box.`);
      refresh();
    } catch (e) {
      say(e.message);
      if (e.status === 403) { pairToken = ''; show('stranger'); }
    } finally {
      els.pair.disabled = false;
    }
  }

  // ---------- what the page shows ----------
  // Replace a list's rows, unless it would show the same thing (a row is not rebuilt under
  // a finger about to tap it).
  function fill(list, key, rows, empty) {
    if (shown.get(list) === key) return;
    shown.set(list, key);
    list.replaceChildren(...(rows.length ? rows : [make('li', 'empty', empty)]));
  }

  // One row: what it is, a detail line, and buttons [label, class, action].
  function row(data, title, tags, detail, buttons) {
    const li = make('li');
    Object.assign(li.dataset, data);
    const what = make('div', 'what', title);
    for (const tag of tags) what.append(make('span', 'tag', tag));
    if (detail) what.append(make('small', '', detail));
    li.append(what);
    for (const [label, cls, action] of buttons) {
      const b = make('button', cls, label);
      b.type = 'button';
      b.addEventListener('click', () => act(b, action));
      li.append(b);
    }
    return li;
  }

  async function act(button, action) {
    button.disabled = true;
    try { await action(); } catch (e) { say(e.message); } finally { button.disabled = false; }
    refresh();
  }

  function renderStatus(status) {
    const name = status.box_name || '';
    els.boxName.textContent = name;
    if (document.activeElement !== els.newName && !els.newName.value) els.newName.placeholder = name;

    const knocks = Array.isArray(status.knocks) ? status.knocks : [];
    els.knocksCard.hidden = !knocks.length;
    fill(els.knocks, JSON.stringify(knocks.map((k) => [k.id, k.name, k.link])), knocks.map((k) => row(
      { knock: String(k.id) }, String(k.name), [], `with the link "${k.link}"`,
      [['Let in', 'let-in', () => api({ cmd: 'knock_answer', knock: k.id, let_in: true })],
        ['Decline', 'decline quiet', () => api({ cmd: 'knock_answer', knock: k.id, let_in: false })]],
    )), 'Nobody is at the door.');

    const people = (Array.isArray(status.participants) ? status.participants : []).filter((p) => p.id !== 'p0');
    fill(els.people, JSON.stringify(people.map((p) => [p.id, p.name])), people.map((p) => row(
      { participant: String(p.id) }, String(p.name), [], `in the call since ${new Date(Date.now() - p.in_call_secs * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}`,
      [['Remove', 'remove danger', async () => {
        await api({ cmd: 'remove', participant: p.id });
        say(`${p.name} is out of the call.`);
      }]],
    )), 'Nobody is in the call.');

    const privacy = status.privacy || {};
    els.pause.hidden = !!privacy.on;
    els.paused.hidden = !privacy.on;
    const box = status.box;
    const facts = [
      ['Privacy', privacy.on ? `on since ${when(privacy.since)}: camera and microphone off` : 'off: camera and microphone on'],
      ['Camera', box ? String(box.camera) : 'none (the box only forwards)'],
      ['Microphone', box ? String(box.mic) : 'none'],
      ['Screen', box ? screenText(box) : 'none'],
      ['Temperature', box && typeof box.temperature_c === 'number' ? `${box.temperature_c} °C` : 'not reported'],
      ['Family outside', reachText(status.reach)],
      ['Owners', String(status.owners)],
    ];
    const rows = [];
    for (const [term, text] of facts) rows.push(make('dt', '', term), make('dd', '', text));
    els.health.replaceChildren(...rows);
  }

  function screenText(box) {
    const phones = box.screen ? Object.keys(box.screen).length : 0;
    const dropped = box.screen_frames_dropped || 0;
    return `showing ${phones} phone${phones === 1 ? '' : 's'}, ${dropped} frame${dropped === 1 ? '' : 's'} dropped`;
  }

  function reachText(reach) {
    if (!reach) return 'unknown';
    switch (reach.state) {
      case 'outside': return `can join: the router forwards (${reach.via}, ${reach.external_address})`;
      case 'home only': return `cannot join: ${reach.reason}`;
      case 'trying': return 'asking the home router…';
      case 'off': return 'cannot join: port forwarding is off (home network only)';
      default: return String(reach.state);
    }
  }

  function renderInvites(invites) {
    const valid = invites.filter((i) => i.state === 'valid');
    fill(els.links, JSON.stringify(valid.map((i) => [i.id, i.name, i.expires, i.knock])), valid.map((i) => row(
      { invite: String(i.id) }, String(i.name), i.knock ? ['knock first'] : [],
      `works until ${when(i.expires)}${i.last_used ? `, last used ${when(i.last_used)}` : ', not used yet'}`,
      [['Revoke', 'revoke danger', async () => {
        await api({ cmd: 'invite_revoke', id: i.id });
        say(`The link for ${i.name} no longer works.`);
      }]],
    )), 'No links work right now.');
  }

  async function refresh() {
    clearTimeout(timer);
    if (!me) return;
    const mine = ++seq;
    if (!document.hidden) {
      try {
        const [status, invites] = await Promise.all([api({ cmd: 'status' }), api({ cmd: 'invite_list' })]);
        if (mine !== seq || !me) return;
        page.status = status;
        page.invites = invites;
        page.polls += 1;
        renderStatus(status);
        renderInvites(Array.isArray(invites) ? invites : []);
        if (els.logCard.open) await showLog();
      } catch (e) {
        if (!me) return;
        say(e.message);
      }
    }
    if (mine === seq && me) timer = setTimeout(refresh, POLL_MS);
  }

  async function showLog() {
    const lines = await api({ cmd: 'privacy_log' });
    const newest = (Array.isArray(lines) ? lines : []).slice().reverse();
    fill(els.log, JSON.stringify(newest), newest.map((line) => make('li', '', String(line))), 'Nothing yet.');
  }

  async function showOwners() {
    const owners = (await api({ cmd: 'owners' })).filter((o) => !o.revoked);
    fill(els.owners, JSON.stringify(owners.map((o) => [o.id, o.name])), owners.map((o) => row(
      { owner: String(o.id) }, String(o.name), o.id === me.id ? ['this phone'] : [],
      `owner since ${when(o.created)}`,
      [['Withdraw', 'withdraw danger', async () => {
        await api({ cmd: 'owner_revoke', id: o.id });
        await showOwners();
      }]],
    )), 'No owners.');
  }

  // ---------- actions ----------
  async function makeLink() {
    const name = els.linkName.value.trim();
    if (!name) { say('Who is the link for?'); els.linkName.focus(); return; }
    els.make.disabled = true;
    try {
      const request = { cmd: 'invite_create', name, ttl_secs: Number(els.linkTtl.value), knock: els.linkKnock.checked };
      const link = await api(request);
      els.newLink.value = link.url;
      els.newLink.dataset.name = name;
      els.made.hidden = false;
      els.share.hidden = !canShare(link.url);
      say(link.at_home
        ? `A link for ${name}. At home, where the router does not loop it back, use ${link.at_home}`
        : `A link for ${name}: send it to them.`);
      els.linkName.value = '';
      els.newLink.focus();
      els.newLink.select();
    } catch (e) {
      say(e.message);
    } finally {
      els.make.disabled = false;
    }
    refresh();
  }

  function canShare(url) {
    try { return !!navigator.share && (!navigator.canShare || navigator.canShare({ url })); } catch (_) { return false; }
  }

  async function share() {
    const url = els.newLink.value, name = els.newLink.dataset.name || '';
    try {
      await navigator.share({ title: 'Join our call', text: `A link for ${name} to join our family calls`, url });
    } catch (e) {
      if (e && e.name !== 'AbortError') copy();
    }
  }

  async function copy() {
    const url = els.newLink.value;
    try {
      await navigator.clipboard.writeText(url);
      say('The link is copied: paste it into a message.');
    } catch (_) {
      els.newLink.focus();
      els.newLink.select();
      let copied = false;
      try { copied = document.execCommand('copy'); } catch (_) { /* not supported */ }
      say(copied ? 'The link is copied: paste it into a message.' : 'Copy the link above and send it.');
    }
  }

  // ---------- start ----------
  els.pairing.addEventListener('submit', (e) => { e.preventDefault(); pair(); });
  els.makeLink.addEventListener('submit', (e) => { e.preventDefault(); makeLink(); });
  els.share.addEventListener('click', share);
  els.copy.addEventListener('click', copy);
  els.pause.addEventListener('click', () => act(els.pause, async () => {
    await api({ cmd: 'privacy', state: 'on' });
    say('The box is paused: camera and microphone are off until someone flips the switch at the box.');
  }));
  els.rename.addEventListener('submit', (e) => {
    e.preventDefault();
    const name = els.newName.value.trim();
    if (!name) { say('Type the new name first.'); return; }
    act(els.rename.querySelector('button'), async () => {
      const answer = await api({ cmd: 'rename', name });
      els.newName.value = '';
      say(`The box is now called ${answer.name}.`);
    });
  });
  els.logCard.addEventListener('toggle', () => { if (els.logCard.open) showLog().catch((e) => say(e.message)); });
  els.ownersCard.addEventListener('toggle', () => { if (els.ownersCard.open) showOwners().catch((e) => say(e.message)); });
  document.addEventListener('visibilitychange', () => { if (!document.hidden) refresh(); });

  // The code from the TV is read once and taken out of the address bar and history.
  const code = /^#pair=([A-Za-z0-9_-]{1,64})$/.exec(location.hash);
  if (location.hash) history.replaceState(null, '', location.pathname);
  me = load();
  if (code) {
    pairToken = code[1];
    show('pairing');
    say('The box showed this phone an owner code.');
    els.phoneName.focus();
  } else if (me) {
    show('owner');
    refresh();
  } else {
    show('stranger');
  }
})();
