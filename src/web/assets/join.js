// Hearth join page. Plain browser APIs only; protocol in src/protocol.rs.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const els = {
    message: $('message'), lobby: $('lobby'), name: $('name'), join: $('join'),
    call: $('call'), who: $('who'), tiles: $('tiles'), mic: $('mic'), camera: $('camera'),
    leave: $('leave'), after: $('after'), again: $('again'), tap: $('tap'),
    pauseBox: $('pause-box'), waiting: $('waiting'), stopWaiting: $('stop-waiting'),
  };
  const NAME_KEY = 'hearth.name';
  // joins: welcomes so far, first and after each break (tests wait on it).
  const hearth = (window.hearth = { pc: null, roster: [], state: 'idle', joins: 0 });
  // After a break: wait this long before each try, the last one repeating, for at most GIVE_UP_MS.
  const RETRY_MS = [250, 500, 1000, 2000, 3000];
  const GIVE_UP_MS = 3 * 60 * 1000;
  // ICE 'disconnected' this long (the network changed, or went) ends the connection; 'failed'
  // comes much later.
  const ICE_GRACE_MS = 3000;

  let session = 0; // bumped on every connection's end; callbacks of older ones compare and bail out
  let call = 0; // bumped on every full teardown (the camera is stopped then)
  let ws = null, pc = null, localStream = null, me = null, chain = Promise.resolve();
  // The key to our place in the call, from `welcome`, and the state of coming back to it.
  let seat = null, token = '', myName = '', retries = 0, brokeAt = 0, retryTimer = 0, iceTimer = 0;
  let audioTr = null, videoTr = null, mediaReady = Promise.resolve(null);
  let publishCodec = 'H264', prefsApplied = false, audioOn = false, videoOn = false, note = '';
  const tiles = new Map(); // participant id -> { el, video, avatar, name, flags, isMe }
  const remoteStreams = new Map(); // participant id -> MediaStream (may arrive before the roster)
  const pendingAttach = new Set();
  const videoPool = []; // <video> elements play()ed inside a tap, so Safari lets them play sound later

  // ---------- small helpers ----------
  const say = (text) => { els.message.textContent = text || ''; };
  const send = (msg) => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg)); };
  const subtype = (c) => (c.mimeType.split('/')[1] || '').toUpperCase();
  const quiet = (p) => { if (p && p.catch) p.catch(() => {}); };
  const make = (tag, cls) => { const e = document.createElement(tag); e.className = cls; return e; };

  const setState = (state) => { hearth.state = state; document.body.dataset.state = state; };

  function show(view) { // 'lobby' | 'waiting' | 'call' | 'after' | 'none'
    els.lobby.hidden = view !== 'lobby';
    els.waiting.hidden = view !== 'waiting';
    els.call.hidden = view !== 'call';
    els.after.hidden = view !== 'after';
    document.body.dataset.view = view;
  }

  function readToken() { // from the fragment only: it never travels in a request line
    const raw = location.hash.replace(/^#/, '').trim();
    if (!raw) return '';
    try { return decodeURIComponent(raw); } catch (_) { return raw; }
  }

  const resetJoinButton = () => { els.join.disabled = false; els.join.textContent = 'Join'; };

  function idleView() {
    if (hearth.state !== 'idle') return;
    if (readToken()) { say(''); show('lobby'); resetJoinButton(); } else {
      say('This link is incomplete — ask for a new one');
      show('none');
    }
  }

  // ---------- playback unlocking (must run inside a tap) ----------
  function makeVideo() {
    const v = document.createElement('video');
    v.autoplay = v.playsInline = true;
    v.setAttribute('autoplay', '');
    v.setAttribute('playsinline', ''); // iOS: play in the page, not full screen
    return v;
  }

  function playVideo(v) {
    const p = v.play(); // NotAllowedError: the browser wants a tap before playing sound
    if (p && p.catch) p.catch((e) => { if (e && e.name === 'NotAllowedError') els.tap.hidden = false; });
  }

  // Media elements started inside the Join tap may later play sound (iOS Safari's rule);
  // remote tiles take their <video> from this pool.
  function unlockPlayback() {
    while (videoPool.length < 6) videoPool.push(makeVideo());
    videoPool.forEach((v) => quiet(v.play()));
    els.tap.hidden = true;
    for (const t of tiles.values()) if (t.video.srcObject) playVideo(t.video);
  }

  // ---------- joining ----------
  async function getMedia() {
    const md = navigator.mediaDevices;
    if (!md || !md.getUserMedia) return null;
    const video = { width: { ideal: 640 }, height: { ideal: 480 }, facingMode: 'user' };
    try {
      return await md.getUserMedia({ audio: true, video });
    } catch (e) {
      console.warn('Camera and microphone unavailable:', e && e.name);
      if (e && (e.name === 'NotAllowedError' || e.name === 'SecurityError')) return null;
    }
    try { // no camera (e.g. a desktop without one): still talk
      return await md.getUserMedia({ audio: true });
    } catch (e) {
      console.warn('Microphone unavailable:', e && e.name);
      return null;
    }
  }

  function decodableCodecs() {
    try {
      const names = RTCRtpReceiver.getCapabilities('video').codecs
        .map(subtype)
        .filter((n) => n && !/^(RTX|RED|ULPFEC|FLEXFEC)/.test(n));
      return [...new Set(names)];
    } catch (_) {
      return ['VP8', 'H264']; // both are mandatory for WebRTC browsers
    }
  }

  const inProgress = () => ['joining', 'waiting', 'in-call', 'reconnecting'].includes(hearth.state);

  async function join() {
    if (inProgress()) return;
    unlockPlayback(); // inside the user's tap, so Safari will let the call's sound play
    teardown();
    token = readToken();
    if (!token) { setState('idle'); idleView(); return; }
    const s = session;
    const name = (myName = els.name.value.trim());
    try { localStorage.setItem(NAME_KEY, name); } catch (_) { /* private mode */ }
    setState('joining');
    show('lobby');
    els.join.disabled = true;
    els.join.textContent = 'Joining…';
    say('Connecting…');
    // The camera starts while the call connects; its tracks join the call when ready.
    mediaReady = getMedia();
    openSocket(token, name, s);
  }

  function openSocket(token, name, s) {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let sock;
    try { sock = new WebSocket(`${proto}//${location.host}/ws`); } catch (e) {
      console.error('Could not open the connection:', e);
      disconnected();
      return;
    }
    ws = sock;
    sock.onopen = () => {
      if (s !== session) return;
      const msg = { type: 'join', token, name, video_codecs: decodableCodecs() };
      if (seat) msg.rejoin = seat; // back after a break: the same place in the call
      send(msg);
    };
    sock.onmessage = (e) => { if (s === session) onMessage(e.data, s); };
    sock.onclose = () => { if (s === session) disconnected(); };
  }

  // Put the camera and mic into the call (replaceTrack needs no renegotiation). After a
  // break the same stream goes into the new connection, muted or not as before.
  async function attachLocal(stream, s, c) {
    if (c !== call) { if (stream) stream.getTracks().forEach((t) => t.stop()); return; }
    localStream = stream;
    if (s !== session) return; // the connection that replaced this one attaches it
    const a = stream && stream.getAudioTracks()[0];
    const v = stream && stream.getVideoTracks()[0];
    audioOn = !!a && a.enabled;
    videoOn = !!v && v.enabled;
    if (!stream) {
      note = 'Your camera and microphone are not available, so the others cannot see or hear you. You can still see and hear them.';
    } else if (!videoOn) {
      note = 'No camera found: the others can hear you but not see you.';
    } else note = '';
    say(note);
    try {
      await audioTr.sender.replaceTrack(a || null);
      await videoTr.sender.replaceTrack(v || null);
    } catch (e) { console.error('Could not send camera or microphone:', e); }
    const t = tiles.get(me);
    if (t && stream) { t.video.srcObject = stream; playVideo(t.video); }
    updateControls();
    renderRoster();
    if (!audioOn || !videoOn) send({ type: 'mute', audio: audioOn, video: videoOn });
  }

  function onMessage(data, s) {
    let msg;
    try { msg = JSON.parse(data); } catch (_) { console.warn('Ignoring a message that is not JSON'); return; }
    switch (msg.type) {
      case 'refused': return refused(msg.reason);
      case 'waiting': return waiting(msg.message);
      case 'welcome': return welcome(msg, s);
      case 'roster':
        hearth.roster = Array.isArray(msg.participants) ? msg.participants : [];
        return renderRoster();
      case 'answer':
        return enqueue(s, async () => {
          await pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
          if (!prefsApplied) await switchCodec(publishCodec); // no setCodecPreferences: steer the sender
        });
      case 'offer':
        return enqueue(s, async () => {
          await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
          await pc.setLocalDescription(await pc.createAnswer());
          send({ type: 'answer', sdp: pc.localDescription.sdp });
        });
      case 'publish_codec': return enqueue(s, () => switchCodec(msg.codec));
      case 'publish_layers': return enqueue(s, () => publishLayers(msg.paused));
      case 'error': console.warn('Hearth server says:', msg.message); return undefined;
      default: console.warn('Unknown message type:', msg.type); return undefined;
    }
  }

  // Every SDP step goes through this one chain, so a server offer waits for the previous step.
  function enqueue(s, step) {
    chain = chain
      .then(() => (s === session && pc ? step() : undefined))
      .catch((e) => { if (s === session) console.error('Call setup step failed:', e); });
    return chain;
  }

  // ---------- the peer connection ----------
  function h264Rank(c) { // 0: packetization-mode=1 + 42e01f, 1: other mode 1, 2: the rest
    const f = c.sdpFmtpLine || '';
    if (!/packetization-mode=1\b/.test(f)) return 2;
    return /profile-level-id=42e01f/i.test(f) ? 0 : 1;
  }

  function videoPreferences(codecs, first) {
    const of = (name) => codecs.filter((c) => subtype(c) === name);
    let h264 = of('H264').sort((a, b) => h264Rank(a) - h264Rank(b));
    if (h264.some((c) => h264Rank(c) < 2)) h264 = h264.filter((c) => h264Rank(c) < 2);
    const groups = first === 'VP8' ? [of('VP8'), h264] : [h264, of('VP8')];
    return [...groups[0], ...groups[1], ...of('RTX')];
  }

  // Two encodings of the camera where the browser can (simulcast): the box forwards each
  // relative the one its link carries, so one weak link does not shrink everyone's picture.
  // The small one first: browsers drop encodings from the end when their uplink is short.
  const SIMULCAST = [
    { rid: 'l', scaleResolutionDownBy: 2, maxBitrate: 100000 },
    { rid: 'h', scaleResolutionDownBy: 1, maxBitrate: 900000 },
  ];

  function addVideoTransceiver(conn, outgoing) {
    try {
      return conn.addTransceiver('video', { direction: 'sendonly', streams: [outgoing], sendEncodings: SIMULCAST });
    } catch (e) {
      console.warn('Simulcast not available, sending one encoding:', e);
      return conn.addTransceiver('video', { direction: 'sendonly', streams: [outgoing] });
    }
  }

  function applyPreferences(first) {
    let ok = true;
    try {
      videoTr.setCodecPreferences(videoPreferences(RTCRtpReceiver.getCapabilities('video').codecs, first));
    } catch (e) { ok = false; console.warn('Video codec preferences not applied:', e); }
    try {
      const opus = RTCRtpReceiver.getCapabilities('audio').codecs.filter((c) => /\/opus$/i.test(c.mimeType));
      if (opus.length) audioTr.setCodecPreferences(opus);
    } catch (e) { console.warn('Audio codec preferences not applied:', e); }
    return ok;
  }

  async function switchCodec(name) {
    const sender = videoTr && videoTr.sender;
    if (!sender) return;
    try {
      const wanted = String(name).toUpperCase();
      const codec = RTCRtpSender.getCapabilities('video').codecs
        .filter((c) => subtype(c) === wanted)
        .sort((a, b) => h264Rank(a) - h264Rank(b))[0];
      if (!codec) throw new Error(`this browser cannot send ${wanted}`);
      const params = sender.getParameters();
      if (!params.encodings || !params.encodings.length) throw new Error('no encodings to change');
      params.encodings.forEach((e) => { e.codec = codec; }); // every simulcast encoding
      await sender.setParameters(params);
    } catch (e) {
      console.warn('Could not switch the video codec to', name, e);
    }
  }

  // The box pauses the simulcast encodings no one in the call takes (and asks for them again
  // when someone would): less to send on this phone's uplink and battery.
  async function publishLayers(paused) {
    const sender = videoTr && videoTr.sender;
    if (!sender || !Array.isArray(paused)) return;
    try {
      const params = sender.getParameters();
      if (!params.encodings || params.encodings.length < 2) return;
      params.encodings.forEach((e) => { e.active = !paused.includes(e.rid); });
      await sender.setParameters(params);
    } catch (e) {
      console.warn('Could not pause the encodings', paused, e);
    }
  }

  // A knock-first link: nothing of the call (no roster, no media) until someone at home lets
  // this phone in (then `welcome` comes) or does not (`refused`).
  function waiting(message) {
    if (hearth.state !== 'joining' && hearth.state !== 'reconnecting') return;
    setState('waiting');
    show('waiting');
    say(message || 'Waiting for someone at home to let you in…');
  }

  function welcome(msg, s) {
    if (pc || !['joining', 'waiting', 'reconnecting'].includes(hearth.state)) return;
    const you = String(msg.you);
    if (me && me !== you) removeTile(me); // the box restarted: a new place, a new id
    me = you;
    seat = typeof msg.rejoin === 'string' && msg.rejoin ? msg.rejoin : null;
    retries = 0;
    hearth.joins += 1;
    publishCodec = msg.publish_video_codec === 'VP8' ? 'VP8' : 'H264';
    // The owner's relay, if the box has one, for networks that block UDP.
    const iceServers = Array.isArray(msg.ice_servers) ? msg.ice_servers : [];
    const conn = (pc = hearth.pc = new RTCPeerConnection({ iceServers, bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' }));
    conn.ontrack = (e) => { if (s === session) onRemoteTrack(e); };
    conn.onconnectionstatechange = () => {
      if (s === session && conn.connectionState === 'failed') disconnected();
    };
    conn.oniceconnectionstatechange = () => {
      if (s !== session) return;
      const state = conn.iceConnectionState;
      clearTimeout(iceTimer);
      if (state === 'failed') disconnected();
      else if (state === 'disconnected') {
        iceTimer = setTimeout(() => { if (s === session) disconnected(); }, ICE_GRACE_MS);
      }
    };
    // Send-only slots now, filled by attachLocal when the camera is ready: the call does not
    // wait for camera start-up (often the slowest step of joining).
    const outgoing = new MediaStream();
    audioTr = conn.addTransceiver('audio', { direction: 'sendonly', streams: [outgoing] });
    videoTr = addVideoTransceiver(conn, outgoing);
    prefsApplied = applyPreferences(publishCodec);

    setState('in-call');
    show('call');
    say(note);
    updateControls();
    addTile(me, true);
    renderRoster();

    enqueue(s, async () => {
      await conn.setLocalDescription(await conn.createOffer());
      // ICE-lite server: no trickle, no waiting for gathering.
      send({ type: 'offer', sdp: conn.localDescription.sdp });
    });
    const c = call;
    mediaReady.then((stream) => attachLocal(stream, s, c));
  }

  function onRemoteTrack(e) {
    const stream = e.streams && e.streams[0];
    if (!stream) { console.warn('A track arrived without a stream id; ignoring it'); return; }
    if (stream.id === me) return;
    remoteStreams.set(stream.id, stream);
    if (!pendingAttach.size) {
      setTimeout(() => { pendingAttach.forEach(attach); pendingAttach.clear(); }, 0);
    }
    pendingAttach.add(stream.id); // audio + video of one offer: attach once
  }

  function attach(id) {
    const t = tiles.get(id), stream = remoteStreams.get(id);
    if (!t || !stream || t.isMe) return;
    t.video.srcObject = stream; // set again even if unchanged: Safari then picks up added tracks
    playVideo(t.video);
  }

  // ---------- tiles and roster ----------
  function addTile(id, isMe) {
    if (tiles.has(id)) return tiles.get(id);
    const el = make('div', 'tile');
    el.dataset.participant = id;
    const video = isMe ? makeVideo() : videoPool.pop() || makeVideo();
    if (isMe) { video.muted = true; video.setAttribute('muted', ''); video.classList.add('mirror'); }
    const avatar = make('div', 'avatar'), label = make('div', 'label');
    const name = make('span', 'name'), flags = make('span', 'flags');
    avatar.setAttribute('aria-hidden', 'true');
    label.append(name, flags);
    el.append(video, avatar, label);
    els.tiles.append(el);
    const t = { el, video, avatar, name, flags, isMe };
    tiles.set(id, t);
    if (isMe) {
      setTileInfo(t, 'You', audioOn, videoOn);
      if (localStream) { video.srcObject = localStream; playVideo(video); }
    } else attach(id);
    layout();
    return t;
  }

  function removeTile(id) {
    const t = tiles.get(id);
    if (!t) return;
    t.el.remove();
    t.video.srcObject = null;
    if (!t.isMe) videoPool.push(t.video); // keeps its Safari playback permission
    tiles.delete(id);
    remoteStreams.delete(id);
  }

  function setTileInfo(t, name, audio, video, note) {
    t.name.textContent = name;
    t.avatar.textContent = (Array.from(name.trim())[0] || '?').toUpperCase();
    t.el.classList.toggle('mic-off', !audio);
    t.el.classList.toggle('cam-off', !video);
    t.flags.textContent = '';
    // A note (e.g. "camera unavailable") says more than the plain badges.
    const badges = note ? [[true, String(note)]] : [[!audio, 'Mic off'], [!video, 'Camera off']];
    for (const [off, text] of badges) {
      if (!off) continue;
      const b = make('span', 'badge');
      b.textContent = text;
      t.flags.append(b);
    }
  }

  function renderRoster() {
    if (!me || hearth.state !== 'in-call') return;
    const list = hearth.roster;
    const ids = new Set(list.map((p) => p.id));
    for (const id of [...tiles.keys()]) if (id !== me && !ids.has(id)) removeTile(id);
    const others = list.filter((p) => p.id !== me);
    for (const p of others) setTileInfo(addTile(p.id, false), String(p.name || 'Guest'), p.audio, p.video, noteOf(p));
    // The box's camera and mic can be paused from here; only its switch resumes them.
    const box = list.find((p) => p.id === 'p0');
    els.pauseBox.hidden = !box || !!box.privacy_since;
    updateSelf();
    const names = others.map((p) => String(p.name || 'Guest'));
    els.who.textContent = names.length
      ? `In the call: ${names.join(', ')} and you`
      : 'Only you so far — waiting for others';
    layout();
  }

  // "Camera and mic off since 18:02", in this phone's own clock and language.
  function noteOf(p) {
    if (p.reconnecting) return 'Reconnecting…';
    if (!p.privacy_since) return p.note;
    const since = new Date(p.privacy_since * 1000);
    const time = since.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    return `Privacy on: camera and mic off since ${time}`;
  }

  function updateSelf() { // own flags from local state: instant, and what the server will echo
    const t = tiles.get(me);
    const mine = hearth.roster.find((p) => p.id === me);
    if (t) setTileInfo(t, mine ? `${mine.name} (you)` : 'You', audioOn, videoOn);
  }

  function layout() {
    const n = Math.max(1, els.tiles.children.length);
    const wide = window.innerWidth >= window.innerHeight;
    const cols = wide ? Math.ceil(Math.sqrt(n)) : Math.ceil(n / Math.ceil(Math.sqrt(n)));
    els.tiles.dataset.cols = String(Math.min(cols, 4));
  }

  // ---------- controls ----------
  function updateControls() {
    const hasA = !!(localStream && localStream.getAudioTracks().length);
    const hasV = !!(localStream && localStream.getVideoTracks().length);
    els.mic.disabled = !hasA;
    els.camera.disabled = !hasV;
    els.mic.textContent = !hasA ? 'No mic' : audioOn ? 'Mute mic' : 'Unmute mic';
    els.camera.textContent = !hasV ? 'No camera' : videoOn ? 'Camera off' : 'Camera on';
    els.mic.classList.toggle('off', hasA && !audioOn);
    els.camera.classList.toggle('off', hasV && !videoOn);
  }

  function toggle(kind) {
    const track = localStream && localStream.getTracks().find((t) => t.kind === kind);
    if (!track || hearth.state !== 'in-call') return;
    track.enabled = !track.enabled;
    if (kind === 'audio') audioOn = track.enabled; else videoOn = track.enabled;
    updateControls();
    updateSelf();
    send({ type: 'mute', audio: audioOn, video: videoOn });
  }

  // ---------- ending ----------
  // The signalling and media connections end; the camera, the tiles and our place stay.
  function dropConnection() {
    session += 1;
    clearTimeout(retryTimer);
    clearTimeout(iceTimer);
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      try { ws.close(); } catch (_) { /* already closed */ }
      ws = null;
    }
    if (pc) { try { pc.close(); } catch (_) { /* already closed */ } pc = null; }
    for (const t of tiles.values()) if (!t.isMe) t.video.srcObject = null;
    remoteStreams.clear();
    pendingAttach.clear();
    audioTr = videoTr = null;
    chain = Promise.resolve();
    hearth.pc = null;
  }

  function teardown() {
    dropConnection();
    call += 1;
    if (localStream) localStream.getTracks().forEach((t) => t.stop());
    localStream = null;
    for (const id of [...tiles.keys()]) removeTile(id);
    me = null;
    seat = null;
    hearth.roster = [];
    els.tap.hidden = true;
    els.who.textContent = '';
    resetJoinButton();
  }

  function refused(reason) {
    teardown();
    setState('refused');
    say(reason || 'You could not join the call.');
    show('lobby'); // no call UI; the Join button stays for a later try
  }

  function leave() {
    const knocking = hearth.state === 'waiting';
    send({ type: 'leave' }); // queued before the close frame
    teardown();
    setState('left');
    show('after');
    say(knocking ? 'You stopped waiting' : 'You left the call');
  }

  // The connection broke. In a call (or coming back to one), try again by ourselves: the
  // same link and our place's key, so the others keep our tile. Otherwise, or after
  // GIVE_UP_MS of trying, say so and offer "Join again".
  function disconnected() {
    const wasIn = hearth.state === 'in-call' || hearth.state === 'reconnecting';
    if (!wasIn || !token || (brokeAt && retries > 0 && Date.now() - brokeAt > GIVE_UP_MS)) {
      teardown();
      setState('disconnected');
      show('after');
      say('Disconnected');
      return;
    }
    if (hearth.state === 'in-call') brokeAt = Date.now();
    dropConnection();
    setState('reconnecting');
    show('call');
    say('Reconnecting…');
    const s = session;
    const delay = RETRY_MS[Math.min(retries, RETRY_MS.length - 1)];
    retries += 1;
    retryTimer = setTimeout(() => { if (s === session) openSocket(token, myName, s); }, delay);
  }

  function retryNow() { // the network is back: no need to wait out the pause
    if (hearth.state !== 'reconnecting' || ws) return;
    clearTimeout(retryTimer);
    openSocket(token, myName, session);
  }

  // ---------- start ----------
  try { els.name.value = localStorage.getItem(NAME_KEY) || ''; } catch (_) { /* private mode */ }
  els.lobby.addEventListener('submit', (e) => { e.preventDefault(); join(); });
  els.again.addEventListener('click', join);
  els.mic.addEventListener('click', () => toggle('audio'));
  els.camera.addEventListener('click', () => toggle('video'));
  els.leave.addEventListener('click', leave);
  els.stopWaiting.addEventListener('click', leave);
  els.pauseBox.addEventListener('click', () => send({ type: 'pause_box' }));
  els.tap.addEventListener('click', unlockPlayback);
  window.addEventListener('resize', layout);
  window.addEventListener('hashchange', idleView);
  window.addEventListener('online', retryNow);
  window.addEventListener('pagehide', () => { // closing the tab: say goodbye rather than time out
    if (inProgress()) leave();
  });
  setState('idle');
  idleView();
})();
