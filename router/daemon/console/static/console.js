// The vanrouter console: reads the router's JSON API and draws it. No library, no build.
//
// The token comes in the URL fragment (#token=..., never sent to a server); it is kept
// in this tab's sessionStorage and taken out of the address bar. Data arrives as
// server-sent events once a second; if the stream fails (too many consoles, a proxy,
// the router restarting) the page polls the snapshot once a second and tries the
// stream again later. Everything from the router goes into the page as text nodes or
// attribute values, never as HTML: a URL path or a site name cannot inject markup.
"use strict";

(() => {
  const API = "/api/v1/";
  const TOKEN_KEY = "vanrouter-console-token";
  const POLL_MS = 1000;
  const STREAM_RETRY_MS = 10000;
  const STALE_MS = 4000; // no data for this long: the view is greyed out
  const NETWORK_FLOWS_MS = 3000; // every site's flows: asked over the links, not often
  const SVG = "http://www.w3.org/2000/svg";

  const state = {
    token: null,
    expanded: new Set(), // flows opened by a click, kept across updates
    last: null, // the latest snapshot
    lastAt: 0,
    source: null,
    pollTimer: null,
    retryTimer: null,
    flowsMode: "here", // this site's flows (in the snapshot), or every site's
    networkFlows: null, // the last answer of /api/v1/network/flows
    networkTimer: null,
    flowRows: new Map(), // the flows table's rows, by flow (see flowRow)
  };

  // ---- small DOM helpers (text only)
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    setAttrs(node, attrs);
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) {
        node.setAttribute(name, String(value));
      }
    }
  }

  function td(text, cls) {
    return el("td", { class: cls }, text === null || text === undefined ? "\u2013" : text);
  }

  function badge(text, cls) {
    return el("span", { class: "badge " + cls }, text);
  }

  // ---- formatting
  function fmtBytes(n) {
    if (n === null || n === undefined) return "\u2013";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
    return (i === 0 ? String(Math.round(n)) : n.toFixed(n < 10 ? 2 : 1)) + " " + units[i];
  }

  function fmtRate(n) {
    return n === null || n === undefined ? "\u2013" : fmtBytes(n) + "/s";
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "\u2013";
    if (ms < 1) return ms.toFixed(2) + " ms";
    if (ms < 1000) return ms.toFixed(ms < 10 ? 1 : 0) + " ms";
    return (ms / 1000).toFixed(2) + " s";
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined) return "\u2013";
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
  }

  function fmtNum(n, digits) {
    return n === null || n === undefined ? "\u2013" : n.toFixed(digits);
  }

  function fmtShare(n) {
    return n === null || n === undefined ? "\u2013" : (n * 100).toFixed(n < 0.1 ? 1 : 0) + " %";
  }

  function fmtTime(unix) {
    return unix === null || unix === undefined ? "\u2013"
      : new Date(unix * 1000).toLocaleTimeString();
  }

  function pairKey(a, b) {
    return a <= b ? a + "\u0000" + b : b + "\u0000" + a;
  }

  // ---- getting the data
  function readToken() {
    const match = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (match) {
      const token = decodeURIComponent(match[1]);
      sessionStorage.setItem(TOKEN_KEY, token);
      history.replaceState(null, "", location.pathname + location.search);
      return token;
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function setConn(kind, text) {
    const node = document.getElementById("conn");
    node.className = "conn conn-" + kind;
    node.textContent = text;
  }

  function notice(text) {
    const node = document.getElementById("notice");
    node.hidden = !text;
    node.textContent = text || "";
  }

  function received(snapshot) {
    state.last = snapshot;
    state.lastAt = Date.now();
    document.body.classList.remove("stale");
    notice(null);
    render(snapshot);
  }

  function openStream() {
    clearTimeout(state.retryTimer);
    const source = new EventSource(API + "events?token=" + encodeURIComponent(state.token));
    state.source = source;
    source.addEventListener("snapshot", (event) => {
      stopPolling();
      setConn("live", "live");
      received(JSON.parse(event.data));
    });
    source.onerror = () => {
      // Refused (401, 503) or broken: EventSource would retry on its own only for the
      // latter. Poll instead, and try a stream again in a while.
      source.close();
      state.source = null;
      startPolling();
      state.retryTimer = setTimeout(openStream, STREAM_RETRY_MS);
    };
  }

  function startPolling() {
    if (state.pollTimer === null) {
      poll();
    }
  }

  function stopPolling() {
    clearTimeout(state.pollTimer);
    state.pollTimer = null;
  }

  async function poll() {
    state.pollTimer = setTimeout(poll, POLL_MS);
    try {
      const reply = await fetch(API + "snapshot", {
        headers: { Authorization: "Bearer " + state.token },
        cache: "no-store",
      });
      if (reply.status === 401) {
        refused();
        return;
      }
      if (!reply.ok) throw new Error("HTTP " + reply.status);
      if (state.source === null) setConn("polling", "polling");
      received(await reply.json());
    } catch (err) {
      setConn("down", "router not answering");
    }
  }

  function refused() {
    stopPolling();
    clearTimeout(state.networkTimer);
    state.flowsMode = "here";
    clearTimeout(state.retryTimer);
    if (state.source) state.source.close();
    setConn("refused", "token refused");
    notice("The router refused this page's token (it changes when the router restarts). " +
      "Run `sitectl console --url` on the router's machine and open the link it prints.");
  }

  function watchStaleness() {
    setInterval(() => {
      if (state.last && Date.now() - state.lastAt > STALE_MS) {
        document.body.classList.add("stale");
        document.getElementById("updated").textContent =
          "no data since " + new Date(state.lastAt).toLocaleTimeString();
      }
    }, 1000);
  }

  // ---- drawing
  function render(s) {
    document.getElementById("site-name").textContent = s.site;
    document.title = s.site + " \u00b7 vanrouter console";
    document.getElementById("updated").textContent =
      "updated " + fmtTime(s.time) + " \u00b7 up " + fmtSeconds(s.uptime_s);
    renderTopology(s);
    renderLinks(s);
    renderServices(s);
    renderFlows(s);
  }

  function layout(sites) {
    // This site at the top, the others clockwise on an ellipse, in name order.
    const cx = 400, cy = 215, rx = 300, ry = 160;
    const at = new Map();
    const n = sites.length;
    sites.forEach((site, i) => {
      if (n === 1) { at.set(site.site, [cx, cy]); return; }
      const angle = -Math.PI / 2 + (2 * Math.PI * i) / n;
      at.set(site.site, [cx + rx * Math.cos(angle), cy + ry * Math.sin(angle)]);
    });
    return at;
  }

  function edgeLabel(e) {
    const parts = [];
    if (e.rtt_ms !== null && e.rtt_ms !== undefined) parts.push(fmtMs(e.rtt_ms));
    const ab = e.a_to_b_bytes_per_s, ba = e.b_to_a_bytes_per_s;
    if (ab !== null && ab !== undefined) parts.push(fmtRate(ab) + " \u21c4 " + fmtRate(ba));
    if (e.state !== "up") parts.unshift(e.state);
    return parts.join(" \u00b7 ");
  }

  function renderTopology(s) {
    const root = document.getElementById("topology");
    const at = layout(s.sites);
    const edges = svg("g", { class: "edges" });
    for (const e of s.edges) {
      const a = at.get(e.a), b = at.get(e.b);
      if (!a || !b) continue;
      const [mx, my] = [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2];
      edges.append(svg("g", {
        class: "edge state-" + e.state + (e.local ? " local" : ""),
        "data-a": e.a, "data-b": e.b, "data-state": e.state,
      },
      svg("title", {}, e.a + " \u2014 " + e.b + ": " + e.state +
        (e.detail ? " (" + e.detail + ")" : "") + ", cost " + e.cost +
        (e.rtt_ms !== null && e.rtt_ms !== undefined ? ", RTT " + fmtMs(e.rtt_ms) : "") +
        (e.a_to_b_bytes_per_s !== null && e.a_to_b_bytes_per_s !== undefined
          ? ", " + e.a + "\u2192" + e.b + " " + fmtRate(e.a_to_b_bytes_per_s) + ", " +
            e.b + "\u2192" + e.a + " " + fmtRate(e.b_to_a_bytes_per_s) : "")),
      svg("line", { x1: a[0], y1: a[1], x2: b[0], y2: b[1] }),
      svg("text", { x: mx, y: my - 8 }, edgeLabel(e))));
    }
    const nodes = svg("g", { class: "nodes" });
    for (const site of s.sites) {
      const [x, y] = at.get(site.site);
      const kind = site.local ? "local" : site.reachable ? "reachable" : "unreachable";
      nodes.append(svg("g", { class: "node " + kind, "data-site": site.site },
        svg("title", {}, site.site + (site.local ? " (this site)" : "") +
          (site.reachable ? ", path cost " + site.cost : ", not reachable")),
        site.local ? svg("circle", { class: "ring", cx: x, cy: y, r: 34 }) : null,
        svg("circle", { class: "body", cx: x, cy: y, r: 26 }),
        svg("text", { class: "name", x: x, y: y + 48 }, site.site),
        svg("text", { class: "sub", x: x, y: y + 62 },
          site.local ? "this site" : site.reachable ? "" : "unreachable")));
    }
    root.replaceChildren(edges, nodes);
    const omitted = s.omitted.sites + s.omitted.edges;
    document.getElementById("topology-note").textContent =
      s.sites.length + " sites, " + s.edges.length + " links" +
      (omitted ? " (" + omitted + " more not drawn)" : "");
  }

  function renderLinks(s) {
    const rows = s.local_links.map((l) => el("tr", { "data-link": l.name },
      td(l.name + (l.direction === "in" ? " (in)" : "")),
      td(l.peer_site),
      el("td", {}, badge(l.state, "state-" + l.state),
        l.error ? el("span", { class: "muted", title: l.error }, " " + l.error) : null),
      td(fmtMs(l.rtt_ms), "num"),
      td(fmtRate(l.in_bytes_per_s), "num"),
      td(fmtRate(l.out_bytes_per_s), "num"),
      td(l.flows, "num")));
    fill("links", rows, 7, "no links: `sitectl link create TOKEN` makes one");
    const edges = s.edges.map((e) => el("tr", {},
      td(e.a + " \u2014 " + e.b),
      el("td", {}, badge(e.state, "state-" + e.state)),
      td(e.cost, "num"),
      td(fmtMs(e.rtt_ms), "num"),
      td(e.a_to_b_bytes_per_s === null || e.a_to_b_bytes_per_s === undefined ? null
        : fmtRate(e.a_to_b_bytes_per_s) + " \u2192 / " + fmtRate(e.b_to_a_bytes_per_s) +
          " \u2190", "num")));
    fill("edges", edges, 5, "none known yet");
  }

  function fill(tableId, rows, columns, emptyText) {
    const body = document.querySelector("#" + tableId + " tbody");
    if (rows.length === 0) {
      rows = [el("tr", {}, el("td", { class: "empty", colspan: columns }, emptyText))];
    }
    // Rows already in place stay where they are (moving them would lose a click).
    rows.forEach((row, i) => {
      const here = body.children[i];
      if (here !== row) body.insertBefore(row, here || null);
    });
    while (body.children.length > rows.length) body.lastElementChild.remove();
  }

  function renderServices(s) {
    const rows = [];
    for (const svc of s.services) {
      const roles = svc.here.length ? svc.here : [null];
      const others = svc.traffic.filter((t) => t.site !== s.site).map((t) =>
        t.site + " " + t.role + " " + fmtNum(t.flows_per_s, 1) + "/s" +
        (t.errors_per_s ? ", " + fmtNum(t.errors_per_s, 1) + " err/s" : "") +
        ", " + t.active + " active").join("; ");
      roles.forEach((r, i) => {
        const first = i === 0;
        const ttfb = r === null ? null
          : r.ttfb_p95_ms !== null ? fmtMs(r.ttfb_p95_ms) : r.ttfb_p95_ms_total !== null
            ? el("span", { class: "muted", title: "since the router started" },
              fmtMs(r.ttfb_p95_ms_total)) : null;
        const errors = r === null ? null
          : r.error_share !== null ? fmtShare(r.error_share) : r.error_share_total !== null
            ? el("span", { class: "muted", title: "since the router started" },
              fmtShare(r.error_share_total)) : null;
        rows.push(el("tr", { "data-key": svc.key, "data-role": r ? r.role : "" },
          td(first ? svc.key : ""),
          td(first ? svc.listeners.join(", ") || null : ""),
          el("td", {}, ...(first ? svc.connectors.map((c, j) => el("span",
            { class: c.reachable ? "" : "off", title: c.reachable ? "" : "not reachable" },
            (j ? ", " : "") + c.site)) : []),
          first && svc.omitted ? el("span", { class: "muted" }, " +" + svc.omitted + " more")
            : null),
          td(first ? (svc.path ? svc.path.join(" \u2192 ") : null) : ""),
          td(r ? r.role : null),
          td(r ? fmtNum(r.flows_per_s, 1) : null, "num"),
          td(r ? r.active : null, "num"),
          td(r ? fmtRate(r.bytes_c2s_per_s) : null, "num"),
          td(r ? fmtRate(r.bytes_s2c_per_s) : null, "num"),
          td(ttfb, "num"),
          td(errors, "num"),
          td(first ? others || null : "")));
      });
    }
    fill("services", rows, 12, "no services: `sitectl connector create` and " +
      "`sitectl listener create` make them");
    document.getElementById("services-note").textContent =
      s.rate_window_s ? "rates over the last " + s.rate_window_s.toFixed(1) + " s" : "";
  }

  function flowRow(f, rtts, here, seen) {
    // Ids are per router: with every site's flows, the site makes them unique.
    const id = (f.role === "listener" ? f.listener_site : f.connector_site) + ":" +
      f.role + ":" + f.id;
    const open = state.expanded.has(id);
    const duration = (f.end === null ? s_now() : f.end) - f.start;
    const outcome = f.end === null ? "active" : f.outcome;
    const request = f.method ? f.method + " " + (f.url_path || "") +
      (f.status ? " \u2192 " + f.status : "") : null;
    const cells = [
      td(open ? "\u25be" : "\u25b8", "toggle"),
      td(f.routing_key),
      td(f.sites.join(" \u2192 ")),
      td(f.client),
      td(request),
      td(fmtBytes(f.bytes_c2s) + " / " + fmtBytes(f.bytes_s2c), "num"),
      td(f.ttfb_s === null ? null : fmtMs(f.ttfb_s * 1000), "num"),
      td(fmtSeconds(Math.max(0, duration)), "num"),
      el("td", {}, badge(outcome, "outcome-" + outcome)),
    ];
    // A flow's row is kept from one update to the next, and only the cells that
    // changed are replaced: a click whose press and release straddle an update
    // still lands on the row (a new row would lose it).
    let row = state.flowRows.get(id);
    if (row === undefined) {
      row = el("tr", { "data-flow": id }, ...cells);
      row.addEventListener("click", () => {
        if (state.expanded.has(id)) state.expanded.delete(id); else state.expanded.add(id);
        if (state.last) renderFlows(state.last);
      });
    } else {
      cells.forEach((cell, i) => {
        const old = row.children[i];
        if (!old) row.append(cell);
        else if (old.outerHTML !== cell.outerHTML) old.replaceWith(cell);
      });
    }
    seen.set(id, row);
    row.className = "flow" + (open ? " open" : "");
    row.dataset.key = f.routing_key;
    row.dataset.state = outcome;
    const rows = [row];
    if (open) rows.push(el("tr", { class: "detail", "data-flow-detail": id },
      el("td", {}), el("td", { colspan: 8 }, hops(f.sites, rtts, here), fields(f))));
    return rows;
  }

  function s_now() {
    return Date.now() / 1000;
  }

  function hops(sites, rtts, here) {
    const box = el("div", { class: "hops" });
    sites.forEach((site, i) => {
      if (i > 0) {
        const rtt = rtts.get(pairKey(sites[i - 1], site));
        box.append(el("span", { class: "wire" },
          rtt === null || rtt === undefined ? "RTT ?" : "RTT " + fmtMs(rtt)));
      }
      box.append(el("span", { class: "hop" + (site === here ? " here" : "") }, site));
    });
    return box;
  }

  function fields(f) {
    const list = [
      ["flow", f.id + " (" + f.protocol + ", " + f.role + " end)"],
      ["client", f.client], ["server", f.server],
      ["listener site", f.listener_site], ["connector site", f.connector_site],
      ["started", fmtTime(f.start)], ["ended", f.end === null ? "still open" : fmtTime(f.end)],
      ["client \u2192 server", fmtBytes(f.bytes_c2s)], ["server \u2192 client", fmtBytes(f.bytes_s2c)],
      ["outcome", f.outcome], ["reason", f.reason],
    ];
    if (f.method) {
      list.push(["request", f.method + " " + (f.url_path || "")], ["status", f.status],
        ["attempts", f.attempts]);
    }
    const dl = el("dl", { class: "fields" });
    for (const [name, value] of list) {
      dl.append(el("dt", {}, name), el("dd", {}, value === null || value === undefined ? "\u2013" : value));
    }
    return dl;
  }

  function renderFlows(s) {
    const seen = new Map(); // the rows of this update, by flow
    const rtts = new Map(s.edges.map((e) => [pairKey(e.a, e.b), e.rtt_ms]));
    const network = state.flowsMode === "network";
    const rows = [];
    const section = (text) => el("tr", { class: "section" }, el("td", { colspan: 9 }, text));
    let active, recent, note;
    if (network) {
      const reply = state.networkFlows;
      const records = reply ? reply.records : [];
      active = records.filter((r) => r.end === null);
      recent = records.filter((r) => r.end !== null);
      note = reply === null ? "asking every site\u2026" : "every site's flows, asked over " +
        "the links at " + fmtTime(reply.time) + (reply.missing.length ? " \u00b7 no answer from " +
          reply.missing.map((m) => m.site + " (" + m.error + ")").join(", ") : "");
      if (active.length) rows.push(section("active (" + active.length + ")"));
      for (const flow of active) rows.push(...flowRow(flow, rtts, s.site, seen));
      if (recent.length) rows.push(section("ended (" + recent.length + ")"));
      for (const flow of recent) rows.push(...flowRow(flow, rtts, s.site, seen));
    } else {
      const f = s.flows;
      if (f.active.length) rows.push(section("active (" + f.active_total + ")"));
      for (const flow of f.active) rows.push(...flowRow(flow, rtts, s.site, seen));
      if (f.recent.length) {
        rows.push(section("recent (" + f.recent_total + " kept" +
          (f.dropped ? ", " + f.dropped + " dropped" : "") + ")"));
      }
      for (const flow of f.recent) rows.push(...flowRow(flow, rtts, s.site, seen));
      note = "this site's flow ends, newest first \u00b7 click one for its path";
    }
    fill("flows", rows, 9, network && state.networkFlows === null ? "asking\u2026"
      : "no flows yet");
    document.getElementById("flows-note").textContent = note;
    state.flowRows = seen;
  }

  function setFlowsMode(mode) {
    state.flowsMode = mode;
    document.getElementById("flows-here").classList.toggle("on", mode === "here");
    document.getElementById("flows-network").classList.toggle("on", mode === "network");
    clearTimeout(state.networkTimer);
    state.networkFlows = null;
    if (mode === "network") askNetwork();
    if (state.last) renderFlows(state.last);
  }

  async function askNetwork() {
    let again = true;
    try {
      const reply = await fetch(API + "network/flows", {
        headers: { Authorization: "Bearer " + state.token },
        cache: "no-store",
      });
      if (reply.status === 401) {
        again = false;
        refused();
      } else if (reply.ok && state.flowsMode === "network") {
        state.networkFlows = await reply.json();
        if (state.last) renderFlows(state.last);
      }
    } catch (err) {
      // The router is not answering: the connection badge says so already.
    }
    if (again && state.flowsMode === "network") {
      state.networkTimer = setTimeout(askNetwork, NETWORK_FLOWS_MS);
    }
  }

  // ---- start
  function restart() {
    // A new link pasted into this tab only changes the fragment: no reload happens.
    const token = readToken();
    if (!token || token === state.token) return;
    state.token = token;
    if (state.source) state.source.close();
    stopPolling();
    setConn("wait", "connecting");
    openStream();
  }

  function start() {
    watchStaleness();
    window.addEventListener("hashchange", restart);
    document.getElementById("flows-here").addEventListener("click", () => setFlowsMode("here"));
    document.getElementById("flows-network").addEventListener(
      "click", () => setFlowsMode("network"));
    state.token = readToken();
    if (!state.token) {
      setConn("refused", "no token");
      notice("This page needs the router's token: run `sitectl console --url` on the " +
        "router's machine and open the link it prints.");
      return;
    }
    openStream();
  }

  start();
})();
