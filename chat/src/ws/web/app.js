// The ChatServer web client: one WebSocket to the node that served this page
// (/ws), one JSON frame per text message, the ext protocol (docs/protocol.md).
// Plain JS, no build step. Everything other users wrote is shown with
// textContent, never as HTML.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY = 'chat.session'; // sessionStorage: {id, name, token}
  const PEERS = 'chat.peers'; // sessionStorage: [{id, name}] of non-friends one wrote with
  const HISTORY_PAGE = 30;
  const PING_MS = 25000;
  // Acknowledged delivery (docs/protocol.md §12): the dseqs seen, at most this
  // many (far more than the server keeps unacknowledged, 4,096), and a SEQ_ACK
  // after this many new frames or when the input has been quiet this long.
  const SEEN_MAX = 16384;
  const ACK_EVERY = 32;
  const ACK_QUIET_MS = 1000;

  const S = {
    ws: null,
    me: 0,
    name: '',
    token: '',
    loggedIn: false,
    wantOnline: false, // reconnect when the connection drops
    attempt: 0,
    retryTimer: 0,
    pingTimer: 0,
    cid: 0,
    pendingCid: new Map(), // cid -> message element
    friends: new Map(), // id -> {id, name, state}
    groups: new Map(), // id -> {id, name, desc, users: [{id, name, state, role}]}
    requests: new Map(), // id -> name
    convs: new Map(), // key -> conversation
    active: '',
    onOpen: null,
    resumed: false,
    missedSince: 0,
    seen: new Set(), // dseqs of the chat frames shown (the most recent SEEN_MAX)
    seenOrder: [], // the same, oldest first, to forget the oldest
    lastSeq: 0, // the highest dseq seen: what SEQ_ACK and RESUME carry
    toAck: 0, // frames shown since the last SEQ_ACK
    ackTimer: 0,
  };

  // ---------- connection ----------

  function wsUrl() {
    return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
  }

  function connect(then) {
    if (S.ws && S.ws.readyState === WebSocket.OPEN) {
      then();
      return;
    }
    if (S.ws && S.ws.readyState === WebSocket.CONNECTING) {
      S.onOpen = then;
      return;
    }
    const ws = new WebSocket(wsUrl());
    S.ws = ws;
    S.onOpen = then;
    ws.onopen = () => {
      if (S.ws !== ws) return;
      const f = S.onOpen;
      S.onOpen = null;
      if (f) f();
    };
    ws.onmessage = (e) => {
      if (S.ws !== ws) return;
      let v;
      try {
        v = JSON.parse(e.data);
      } catch (err) {
        showError('The server sent something unreadable: ' + err.message);
        return;
      }
      handle(v);
    };
    ws.onclose = () => {
      if (S.ws !== ws) return;
      S.ws = null;
      clearInterval(S.pingTimer);
      onDisconnect();
    };
  }

  function send(obj) {
    obj.ext = 1;
    if (!S.ws || S.ws.readyState !== WebSocket.OPEN) {
      showError('Not connected: the message was not sent. Reconnecting…');
      return false;
    }
    S.ws.send(JSON.stringify(obj));
    return true;
  }

  function onDisconnect() {
    if (!S.wantOnline) {
      if (!S.loggedIn) setAuthMsg('');
      return;
    }
    setConn('offline', 'reconnecting…');
    scheduleReconnect();
  }

  // Exponential backoff with jitter: 0.5 s, 1 s, 2 s, … up to 10 s.
  function scheduleReconnect() {
    clearTimeout(S.retryTimer);
    const base = Math.min(10000, 500 * Math.pow(2, S.attempt));
    const delay = Math.round(base / 2 + Math.random() * base / 2);
    S.attempt += 1;
    setConn('offline', 'connection lost — retrying in ' + Math.ceil(delay / 1000) + ' s');
    S.retryTimer = setTimeout(() => {
      setConn('offline', 'reconnecting…');
      connect(() => sendResume());
    }, delay);
  }

  // RESUME with the last dseq seen: what was not acknowledged comes again.
  function sendResume() {
    send({ msgid: 17, id: S.me, token: S.token, lastseq: S.lastSeq });
  }

  // A chat frame's dseq: true if it is to be shown (new, or none), false if it was
  // seen before (re-delivered after a reconnect). Schedules the SEQ_ACK.
  function takeSeq(m) {
    const d = m.dseq;
    if (typeof d !== 'number') return true;
    if (S.seen.has(d)) return false;
    S.seen.add(d);
    S.seenOrder.push(d);
    if (S.seenOrder.length > SEEN_MAX) S.seen.delete(S.seenOrder.shift());
    if (d > S.lastSeq) S.lastSeq = d;
    S.toAck += 1;
    if (S.toAck >= ACK_EVERY) sendAck();
    else {
      clearTimeout(S.ackTimer);
      S.ackTimer = setTimeout(sendAck, ACK_QUIET_MS);
    }
    return true;
  }

  function sendAck() {
    clearTimeout(S.ackTimer);
    if (S.toAck === 0 || !S.loggedIn || !S.ws || S.ws.readyState !== WebSocket.OPEN) return;
    S.toAck = 0;
    send({ msgid: 19, seq: S.lastSeq });
  }

  function startPing() {
    clearInterval(S.pingTimer);
    S.pingTimer = setInterval(() => send({ msgid: 13 }), PING_MS);
  }

  // ---------- incoming frames ----------

  function handle(v) {
    switch (v.msgid) {
      case 2: onLoginAck(v, false); break;
      case 18: onLoginAck(v, true); break;
      case 5: onRegAck(v); break;
      case 6: case 10: if (takeSeq(v)) onChat(v, { live: true }); break;
      case 11: onError(v); break;
      case 12: onAck(v); break;
      case 14: break; // PONG
      case 16: onContacts(v); break;
      case 24: onHistory(v); break;
      case 25: onPresence(v); break;
      case 27: onFriendRequest(v); break;
      case 29: onFriendAnswer(v); break;
      case 32: onRequests(v); break;
      case 36: onGroupInfo(v); break;
      case 37: onRemoved(v); break;
      default: break; // frames of later versions are ignored
    }
  }

  function parseAll(list) {
    const out = [];
    for (const s of list || []) {
      try {
        out.push(typeof s === 'string' ? JSON.parse(s) : s);
      } catch (e) { /* a malformed element is skipped */ }
    }
    return out;
  }

  function onRegAck(v) {
    if (v.errno === 0) {
      $('login-id').value = v.id;
      $('reg-pw').value = '';
      setAuthMsg('Registered: your user id is ' + v.id + '. Log in with it.');
      $('login-pw').focus();
    } else {
      setAuthMsg('Registration failed: ' + (v.errmsg || 'the name may be taken') + ' (errno ' + v.errno + ')');
    }
  }

  function onLoginAck(v, resumed) {
    if (v.errno !== 0) {
      if (resumed && v.errno === 110) {
        // The server cannot take the session yet (its old node is being moved):
        // the token stays valid, so try again shortly.
        scheduleReconnect();
        if (S.ws) S.ws.close();
        return;
      }
      if (resumed) {
        // The token is no longer valid (expired, revoked or used elsewhere).
        forgetSession();
        showAuth('Your session ended (' + v.errmsg + '). Please log in again.');
      } else {
        S.wantOnline = false;
        setAuthMsg('Login failed: ' + (v.errmsg || 'unknown error') + ' (errno ' + v.errno + ')');
      }
      return;
    }
    const first = !S.loggedIn || S.me !== v.id;
    if (first) resetState();
    S.me = v.id;
    S.name = v.name;
    S.token = v.token || '';
    S.loggedIn = true;
    S.wantOnline = true;
    S.attempt = 0;
    sessionStorage.setItem(KEY, JSON.stringify({ id: S.me, name: S.name, token: S.token }));
    applyContacts(v.friends, v.groups);
    // Those seen before the connection dropped (not acknowledged yet) are dropped.
    const missed = parseAll(v.offlinemsg).filter(takeSeq);
    for (const m of missed) onChat(m, { missed: true });
    showChat();
    setConn('ok', 'online');
    startPing();
    send({ msgid: 31, id: S.me });
    if (resumed && !first) {
      banner(missed.length === 0
        ? 'Reconnected. Nothing was missed.'
        : 'Reconnected. ' + missed.length + ' message' + (missed.length === 1 ? '' : 's') + ' arrived while you were away.');
    } else if (missed.length > 0) {
      banner(missed.length + ' message' + (missed.length === 1 ? '' : 's') + ' arrived while you were offline.');
    }
    renderLists();
    if (S.active) openConv(S.active, { keepFocus: true });
  }

  function onError(v) {
    const text = (v.errmsg || 'error') + ' (errno ' + v.errno + ')';
    if (v.errno === 121 || v.errno === 135) {
      // Replaced by a newer session, or disconnected by an operator: do not come back.
      S.wantOnline = false;
      forgetSession();
      showAuth(v.errno === 121 ? 'You logged in somewhere else: ' + text : 'Disconnected: ' + text);
      return;
    }
    if (v.errno === 113 && !S.loggedIn) return; // idle at the login form: we reconnect on demand
    showError(text);
  }

  function onAck(v) {
    if (v.cid !== undefined && S.pendingCid.has(v.cid)) {
      const entry = S.pendingCid.get(v.cid);
      S.pendingCid.delete(v.cid);
      entry.pending = false;
      if (v.errno === 0) {
        const parts = [];
        if (v.delivered) parts.push('delivered');
        if (v.stored) parts.push('stored for later');
        entry.state = parts.join(', ') || 'sent';
      } else {
        entry.state = 'not sent: ' + v.errmsg + ' (errno ' + v.errno + ')';
        entry.failed = true;
      }
      if (entry.el) {
        entry.el.classList.remove('pending');
        entry.el.classList.toggle('failed', !!entry.failed);
        entry.el.querySelector('.state').textContent = entry.state;
      }
      return;
    }
    if (v.errno !== 0) {
      showError(v.errmsg + ' (errno ' + v.errno + ')');
      return;
    }
    switch (v.reqmsgid) {
      case 26:
        banner(v.repeat
          ? 'Your friend request to user ' + v.friendid + ' is still waiting for an answer.'
          : 'Friend request sent to user ' + v.friendid + '.');
        break;
      case 8: banner('Group "' + (v.groupname || '') + '" created with id ' + v.groupid + '.'); refresh(); break;
      case 9: banner('Joined group ' + v.groupid + '.'); refresh(); break;
      case 28: refresh(); break;
      case 33: refresh(); break;
      default: break;
    }
  }

  function refresh() {
    send({ msgid: 15, id: S.me });
  }

  function onContacts(v) {
    applyContacts(v.friends, v.groups);
    renderLists();
    if (S.active) renderHeader();
  }

  // Non-friends one chatted with stay listed across a reload of the tab.
  function savePeers() {
    const peers = [...S.friends.values()].filter((f) => f.stranger).map((f) => ({ id: f.id, name: f.name }));
    sessionStorage.setItem(PEERS, JSON.stringify(peers));
  }

  function applyContacts(friends, groups) {
    const strangers = [...S.friends.values()].filter((f) => f.stranger);
    let saved = [];
    try {
      saved = JSON.parse(sessionStorage.getItem(PEERS) || '[]');
    } catch (e) { /* ignored */ }
    S.friends.clear();
    for (const f of parseAll(friends)) S.friends.set(f.id, { id: f.id, name: f.name, state: f.state });
    for (const f of strangers.concat(saved)) {
      if (!S.friends.has(f.id) && f.id !== S.me) {
        S.friends.set(f.id, { id: f.id, name: f.name, state: 'unknown', stranger: true });
      }
    }
    S.groups.clear();
    for (const g of parseAll(groups)) {
      S.groups.set(g.id, {
        id: g.id, name: g.groupname, desc: g.groupdesc || '', users: parseAll(g.users),
      });
    }
  }

  function onPresence(v) {
    const f = S.friends.get(v.id);
    if (f) f.state = v.state;
    else S.friends.set(v.id, { id: v.id, name: v.name, state: v.state });
    for (const g of S.groups.values()) {
      for (const u of g.users) if (u.id === v.id) u.state = v.state;
    }
    renderLists();
    if (S.active) renderHeader();
  }

  function onFriendRequest(v) {
    S.requests.set(v.from, v.name);
    renderRequests();
    banner(v.name + ' (id ' + v.from + ') asks to be your friend.');
  }

  function onFriendAnswer(v) {
    banner(v.name + (v.accept ? ' accepted' : ' declined') + ' your friend request.');
    if (v.accept) refresh();
  }

  function onRequests(v) {
    S.requests.clear();
    for (const r of v.requests || []) S.requests.set(r.id, r.name);
    renderRequests();
  }

  function onGroupInfo(v) {
    if (v.errno !== 0) return;
    S.groups.set(v.groupid, {
      id: v.groupid, name: v.groupname, desc: v.groupdesc || '', users: v.users || [],
    });
    renderLists();
    if (S.active) renderHeader();
  }

  function onRemoved(v) {
    banner('You were removed from group ' + v.groupid + '.');
    refresh();
  }

  // ---------- conversations ----------

  function conv(key) {
    let c = S.convs.get(key);
    if (!c) {
      const [kind, id] = key.split(':');
      c = { key, kind, id: Number(id), msgs: [], sigs: new Set(), oldest: null, more: true, unread: 0, asked: false, loading: false };
      S.convs.set(key, c);
    }
    return c;
  }

  function keyOf(m) {
    if (m.msgid === 10) return 'g:' + m.groupid;
    const to = m.toid !== undefined ? m.toid : m.to;
    return 'u:' + (m.id === S.me ? to : m.id);
  }

  function sig(m) {
    return m.id + '|' + (m.time || '') + '|' + m.msg;
  }

  // A chat frame, live, offline or from the history. Returns its element if shown.
  function onChat(m, how) {
    if (typeof m.msg !== 'string') return null;
    const c = conv(keyOf(m));
    const s = sig(m);
    if (c.sigs.has(s)) return null;
    c.sigs.add(s);
    if (typeof m.seq === 'number' && (c.oldest === null || m.seq < c.oldest)) c.oldest = m.seq;
    const entry = { m, missed: !!how.missed };
    if (how.older) c.msgs.unshift(entry);
    else c.msgs.push(entry);
    if (m.msgid === 10 && !S.groups.has(m.groupid)) refresh();
    const g = m.msgid === 10 ? S.groups.get(m.groupid) : null;
    if (g && !g.asking && !g.users.some((u) => u.id === m.id)) {
      // A member who joined since: learn who is in the group now.
      g.asking = true;
      send({ msgid: 35, id: S.me, groupid: g.id });
    }
    if (m.msgid === 6 && m.id !== S.me && !S.friends.has(m.id)) {
      S.friends.set(m.id, { id: m.id, name: m.name, state: 'unknown', stranger: true });
      savePeers();
    }
    const visible = S.active === c.key && !document.hidden;
    if (!how.older && m.id !== S.me && !visible) c.unread += 1;
    if (S.active === c.key) {
      const el = msgEl(entry);
      const box = $('messages-box');
      const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
      if (how.older) $('messages').prepend(el);
      else $('messages').append(el);
      if (!how.older && (atBottom || m.id === S.me)) box.scrollTop = box.scrollHeight;
      renderLists();
      return el;
    }
    renderLists();
    return null;
  }

  function requestHistory(c) {
    if (c.loading || !c.more) return;
    c.loading = true;
    c.asked = true;
    const req = { msgid: 23, id: S.me, limit: HISTORY_PAGE };
    if (c.kind === 'g') req.groupid = c.id; else req.peer = c.id;
    if (c.oldest !== null && c.pagedOnce) req.before = c.oldest;
    send(req);
  }

  function onHistory(v) {
    const key = v.groupid !== undefined ? 'g:' + v.groupid : 'u:' + v.peer;
    const c = conv(key);
    c.loading = false;
    const msgs = parseAll(v.msgs); // newest first
    const box = $('messages-box');
    const before = box.scrollHeight - box.scrollTop;
    if (!c.pagedOnce) {
      // The first page: the newest messages; those already shown (live or
      // offline) are recognised and kept once.
      c.pagedOnce = true;
      const known = c.msgs;
      const flags = new Map(known.map((e) => [sig(e.m), e]));
      c.msgs = [];
      c.sigs = new Set();
      c.oldest = null;
      for (const m of msgs.slice().reverse()) addQuiet(c, m, false);
      // What was shown before keeps its marks (missed, delivery state).
      for (const e of c.msgs) {
        const k = flags.get(sig(e.m));
        if (k) {
          e.missed = k.missed;
          e.state = k.state;
          e.pending = k.pending;
          e.failed = k.failed;
          if (k.pending) for (const [cid, p] of S.pendingCid) if (p === k) S.pendingCid.set(cid, e);
        }
      }
      for (const e of known) if (!c.sigs.has(sig(e.m))) { c.sigs.add(sig(e.m)); c.msgs.push(e); }
    } else {
      for (const m of msgs) addQuiet(c, m, true);
    }
    c.more = !!v.more;
    if (S.active === key) {
      renderMessages();
      if (c.msgs.length > msgs.length && msgs.length && c.pagedOnceScrolled) {
        box.scrollTop = box.scrollHeight - before;
      } else {
        box.scrollTop = box.scrollHeight;
      }
      c.pagedOnceScrolled = true;
    }
  }

  function addQuiet(c, m, older) {
    const f = m.msgid === 6 && m.id !== S.me ? S.friends.get(m.id) : null;
    if (f && f.stranger && m.name && f.name !== m.name) {
      f.name = m.name;
      savePeers();
      renderLists();
    }
    const s = sig(m);
    if (c.sigs.has(s)) return;
    c.sigs.add(s);
    if (typeof m.seq === 'number' && (c.oldest === null || m.seq < c.oldest)) c.oldest = m.seq;
    if (older) c.msgs.unshift({ m, missed: false });
    else c.msgs.push({ m, missed: false });
  }

  function titleOf(c) {
    if (c.kind === 'g') {
      const g = S.groups.get(c.id);
      return g ? g.name : 'Group ' + c.id;
    }
    const f = S.friends.get(c.id);
    return f ? f.name : 'User ' + c.id;
  }

  function openConv(key, opts) {
    const c = conv(key);
    S.active = key;
    c.unread = 0;
    document.body.classList.add('in-conv');
    $('compose').hidden = false;
    renderHeader();
    renderMessages();
    renderLists();
    const box = $('messages-box');
    box.scrollTop = box.scrollHeight;
    if (!c.asked) requestHistory(c);
    // Who is in the group now, and who of them is online.
    if (c.kind === 'g') send({ msgid: 35, id: S.me, groupid: c.id });
    if (!(opts && opts.keepFocus)) $('text').focus();
  }

  function renderHeader() {
    const c = conv(S.active);
    $('conv-title').textContent = titleOf(c);
    let sub = '';
    if (c.kind === 'g') {
      const g = S.groups.get(c.id);
      if (g) {
        const on = g.users.filter((u) => u.state === 'online').length;
        sub = 'group ' + c.id + ' · ' + g.users.length + ' members, ' + on + ' online' + (g.desc ? ' · ' + g.desc : '');
      }
    } else {
      const f = S.friends.get(c.id);
      sub = 'user ' + c.id + (f && f.state !== 'unknown' ? ' · ' + f.state : '');
    }
    $('conv-sub').textContent = sub;
    $('leave-btn').hidden = c.kind !== 'g' || !S.groups.has(c.id);
  }

  function renderMessages() {
    const c = conv(S.active);
    const ol = $('messages');
    ol.textContent = '';
    for (const e of c.msgs) ol.append(msgEl(e));
    $('older-btn').hidden = !c.more || !c.pagedOnce;
  }

  function msgEl(e) {
    const m = e.m;
    const li = document.createElement('li');
    li.className = 'msg' + (m.id === S.me ? ' mine' : '') + (e.missed ? ' missed' : '') +
      (e.pending ? ' pending' : '') + (e.failed ? ' failed' : '');
    e.el = li;
    if (typeof m.seq === 'number') li.dataset.seq = m.seq;
    const head = document.createElement('div');
    head.className = 'meta';
    const who = document.createElement('span');
    who.className = 'from';
    who.textContent = m.id === S.me ? 'You' : (m.name || 'user ' + m.id);
    const when = document.createElement('time');
    when.textContent = m.time || '';
    head.append(who, ' ', when);
    if (e.missed) {
      const tag = document.createElement('span');
      tag.className = 'tag';
      tag.textContent = 'missed';
      head.append(' ', tag);
    }
    const body = document.createElement('p');
    body.className = 'text';
    body.textContent = m.msg;
    li.append(head, body);
    if (m.id === S.me) {
      const st = document.createElement('span');
      st.className = 'state';
      st.textContent = e.state || '';
      li.append(st);
    }
    return li;
  }

  function now() {
    const d = new Date();
    const p = (n) => String(n).padStart(2, '0');
    return d.getFullYear() + '-' + p(d.getMonth() + 1) + '-' + p(d.getDate()) + ' ' +
      p(d.getHours()) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds());
  }

  function sendMessage() {
    const text = $('text').value;
    if (!S.active || text.trim() === '') return;
    const c = conv(S.active);
    S.cid += 1;
    const m = { msgid: c.kind === 'g' ? 10 : 6, id: S.me, name: S.name, msg: text, time: now() };
    if (c.kind === 'g') m.groupid = c.id; else m.toid = c.id;
    const frame = Object.assign({ cid: S.cid }, m);
    if (!send(frame)) return;
    $('text').value = '';
    const c2 = conv(keyOf(m));
    onChat(m, { live: true });
    const entry = c2.msgs[c2.msgs.length - 1];
    if (entry && entry.m === m) {
      entry.pending = true;
      entry.state = 'sending…';
      if (entry.el) {
        entry.el.classList.add('pending');
        entry.el.querySelector('.state').textContent = entry.state;
      }
      S.pendingCid.set(S.cid, entry);
    }
  }

  // ---------- rendering ----------

  function renderLists() {
    const fl = $('friends');
    fl.textContent = '';
    const friends = [...S.friends.values()].sort((a, b) => a.name.localeCompare(b.name));
    for (const f of friends) fl.append(item('u:' + f.id, f.name, f.state, 'user ' + f.id));
    $('no-friends').hidden = friends.length > 0;
    const gl = $('groups');
    gl.textContent = '';
    const groups = [...S.groups.values()].sort((a, b) => a.name.localeCompare(b.name));
    for (const g of groups) {
      const on = g.users.filter((u) => u.state === 'online').length;
      gl.append(item('g:' + g.id, g.name, on > 0 ? 'online' : 'offline', on + '/' + g.users.length + ' online'));
    }
    $('no-groups').hidden = groups.length > 0;
    let total = 0;
    for (const c of S.convs.values()) total += c.unread;
    document.title = (total ? '(' + total + ') ' : '') + 'ChatServer';
  }

  function item(key, name, state, detail) {
    const c = S.convs.get(key);
    const unread = c ? c.unread : 0;
    const li = document.createElement('li');
    li.dataset.key = key;
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'conv-btn' + (S.active === key ? ' active' : '');
    if (S.active === key) b.setAttribute('aria-current', 'true');
    const dot = document.createElement('span');
    dot.className = 'dot ' + (state === 'online' ? 'on' : 'off');
    dot.setAttribute('aria-hidden', 'true');
    const label = document.createElement('span');
    label.className = 'name';
    label.textContent = name;
    const d = document.createElement('span');
    d.className = 'detail';
    d.textContent = detail + (key[0] === 'u' && state !== 'unknown' ? ' · ' + state : '');
    b.append(dot, label, d);
    if (unread > 0) {
      const badge = document.createElement('span');
      badge.className = 'badge';
      badge.textContent = String(unread);
      badge.setAttribute('aria-label', unread + ' unread');
      b.append(badge);
    }
    b.addEventListener('click', () => openConv(key));
    li.append(b);
    return li;
  }

  function renderRequests() {
    const ul = $('requests');
    ul.textContent = '';
    for (const [id, name] of S.requests) {
      const li = document.createElement('li');
      li.className = 'request';
      const span = document.createElement('span');
      span.textContent = name + ' (id ' + id + ')';
      const yes = document.createElement('button');
      yes.type = 'button';
      yes.textContent = 'Accept';
      yes.addEventListener('click', () => answer(id, true));
      const no = document.createElement('button');
      no.type = 'button';
      no.textContent = 'Decline';
      no.addEventListener('click', () => answer(id, false));
      li.append(span, yes, no);
      ul.append(li);
    }
    $('requests-section').hidden = S.requests.size === 0;
  }

  function answer(id, accept) {
    if (send({ msgid: 28, id: S.me, friendid: id, accept })) {
      S.requests.delete(id);
      renderRequests();
    }
  }

  function banner(text) {
    const b = $('banner');
    b.textContent = text;
    b.hidden = false;
  }

  function showError(text) {
    $('alert-text').textContent = text;
    $('alert').hidden = false;
  }

  function setAuthMsg(text) {
    $('auth-msg').textContent = text;
  }

  function setConn(cls, text) {
    const el = $('conn-state');
    el.className = 'conn ' + cls;
    el.textContent = text;
  }

  function showChat() {
    $('auth-view').hidden = true;
    $('chat-view').hidden = false;
    $('me-name').textContent = S.name;
    $('me-id').textContent = String(S.me);
  }

  function showAuth(msg) {
    S.loggedIn = false;
    S.wantOnline = false;
    clearTimeout(S.retryTimer);
    clearInterval(S.pingTimer);
    $('chat-view').hidden = true;
    $('auth-view').hidden = false;
    setAuthMsg(msg || '');
    $('login-id').focus();
  }

  function resetState() {
    S.friends.clear();
    S.groups.clear();
    S.requests.clear();
    S.convs.clear();
    S.pendingCid.clear();
    S.seen.clear();
    S.seenOrder = [];
    S.lastSeq = 0;
    S.toAck = 0;
    clearTimeout(S.ackTimer);
    S.active = '';
    $('messages').textContent = '';
    $('conv-title').textContent = 'Pick a conversation';
    $('conv-sub').textContent = '';
    $('compose').hidden = true;
    $('banner').hidden = true;
  }

  function forgetSession() {
    sessionStorage.removeItem(KEY);
    sessionStorage.removeItem(PEERS);
    S.token = '';
  }

  // ---------- user actions ----------

  function idValue(input) {
    const n = Number(input.value.trim());
    if (!Number.isInteger(n) || n <= 0) {
      input.setCustomValidity('a positive whole number');
      input.reportValidity();
      input.setCustomValidity('');
      return 0;
    }
    return n;
  }

  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const id = idValue($('login-id'));
    if (!id) return;
    const password = $('login-pw').value;
    setAuthMsg('Logging in…');
    connect(() => send({ msgid: 1, id, password, acks: 1 }));
  });

  $('register-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const name = $('reg-name').value.trim();
    const password = $('reg-pw').value;
    if (!name || !password) return;
    setAuthMsg('Registering…');
    connect(() => send({ msgid: 4, name, password }));
  });

  $('compose').addEventListener('submit', (e) => {
    e.preventDefault();
    sendMessage();
  });

  $('text').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      sendMessage();
    }
  });

  $('older-btn').addEventListener('click', () => {
    if (S.active) requestHistory(conv(S.active));
  });

  $('messages-box').addEventListener('scroll', () => {
    const box = $('messages-box');
    if (box.scrollTop === 0 && S.active) {
      const c = conv(S.active);
      if (c.pagedOnce && c.more) requestHistory(c);
    }
  });

  $('addfriend-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const id = idValue($('friend-id'));
    if (id && send({ msgid: 26, id: S.me, friendid: id })) $('friend-id').value = '';
  });

  $('creategroup-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const groupname = $('group-name').value.trim();
    if (!groupname) return;
    if (send({ msgid: 8, id: S.me, groupname, groupdesc: $('group-desc').value.trim() })) {
      $('group-name').value = '';
      $('group-desc').value = '';
    }
  });

  $('joingroup-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const id = idValue($('join-id'));
    if (id && send({ msgid: 9, id: S.me, groupid: id })) $('join-id').value = '';
  });

  $('message-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const id = idValue($('peer-id'));
    if (!id || id === S.me) return;
    $('peer-id').value = '';
    if (!S.friends.has(id)) {
      S.friends.set(id, { id, name: 'user ' + id, state: 'unknown', stranger: true });
      savePeers();
    }
    openConv('u:' + id);
  });

  $('leave-btn').addEventListener('click', () => {
    const c = conv(S.active);
    if (c.kind !== 'g') return;
    if (send({ msgid: 33, id: S.me, groupid: c.id })) {
      S.groups.delete(c.id);
      S.convs.delete(c.key);
      S.active = '';
      document.body.classList.remove('in-conv');
      $('messages').textContent = '';
      $('conv-title').textContent = 'Pick a conversation';
      $('conv-sub').textContent = '';
      $('compose').hidden = true;
      $('leave-btn').hidden = true;
      renderLists();
    }
  });

  $('back-btn').addEventListener('click', () => {
    document.body.classList.remove('in-conv');
    const b = document.querySelector('#sidebar .conv-btn.active') || document.querySelector('#sidebar .conv-btn');
    if (b) b.focus();
  });

  $('logout-btn').addEventListener('click', () => {
    send({ msgid: 3, id: S.me });
    forgetSession();
    S.wantOnline = false;
    resetState();
    showAuth('Logged out.');
    if (S.ws) S.ws.close();
  });

  $('alert-close').addEventListener('click', () => {
    $('alert').hidden = true;
  });

  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && S.active) {
      conv(S.active).unread = 0;
      renderLists();
    }
  });

  // A reload within the tab resumes the session without the password.
  const saved = sessionStorage.getItem(KEY);
  if (saved) {
    try {
      const s = JSON.parse(saved);
      if (s.id && s.token) {
        S.me = s.id;
        S.name = s.name;
        S.token = s.token;
        S.wantOnline = true;
        setAuthMsg('Resuming your session…');
        connect(() => sendResume());
      }
    } catch (e) {
      forgetSession();
    }
  }
})();
