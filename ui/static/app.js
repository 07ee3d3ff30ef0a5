// The service map page: draws what /api/events streams (server-sent
// events: the graph and the matrix, each when it changed)
// as plain SVG. Identities sit on an ellipse in identity order, so the
// picture stays put while it updates; flows are arrows coloured by verdict.
// Everything from the daemon goes in as text (textContent), never as
// markup: container labels are anyone's to choose.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const CX = 500, CY = 330, RX = 380, RY = 250, R = 26;
const VERDICTS = ["allowed", "denied", "audit"];

const snapshot = { graph: null, matrix: null };
let updates = 0;

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  }
  if (text !== undefined) e.textContent = text;
  return e;
}

function selectedID() {
  const m = /identity=(\d+)/.exec(location.hash);
  return m ? Number(m[1]) : null;
}

function select(id) {
  location.hash = id === null ? "" : "identity=" + id;
}

function kind(ident, node) {
  if (ident.labels.some(l => l.startsWith("cidr:"))) return "cidr";
  if (ident.labels.length > 0 && ident.labels.every(l => l.startsWith("reserved:"))) return "reserved";
  if (ident.endpoints > 0 && !(ident.containers || []).length && !(ident.nodes || []).includes(node)) return "remote";
  return "container";
}

function positions(ids) {
  const pos = new Map();
  const n = ids.length;
  ids.forEach((ident, i) => {
    if (n === 1) {
      pos.set(ident.id, [CX, CY]);
      return;
    }
    const a = -Math.PI / 2 + (2 * Math.PI * i) / n;
    pos.set(ident.id, [CX + RX * Math.cos(a), CY + RY * Math.sin(a)]);
  });
  return pos;
}

function portsText(edge) {
  const ports = edge.ports.map(p => p.port);
  let s = ports.slice(0, 3).join(", ");
  if (ports.length > 3) s += " +" + (ports.length - 3);
  return s + " · " + edge.flows + (edge.flows === 1 ? " flow" : " flows");
}

// labelsAbove: a node in the upper half has its text above it, out of
// the way of the arrows that come from below; its loop goes below.
function labelsAbove(p) { return p[1] < CY - 1; }

// edgePath is a curve from a to b bowed to the side by k steps, ending at
// the nodes' rims; a loop on the side away from the node's text when a
// is b.
function edgePath(a, b, k) {
  if (a[0] === b[0] && a[1] === b[1]) {
    const [x, y] = a, h = 60 + 22 * k, w = 34 + 10 * k, s = labelsAbove(a) ? 1 : -1;
    const y0 = y + s * (R - 2), y1 = y + s * (R + h);
    return { d: `M${x - 10},${y0} C${x - w},${y1} ${x + w},${y1} ${x + 10},${y0}`, label: [x, y + s * (R + h * 0.75 + 4) + (s > 0 ? 14 : 0)] };
  }
  const dx = b[0] - a[0], dy = b[1] - a[1], len = Math.hypot(dx, dy);
  const ux = dx / len, uy = dy / len, nx = -uy, ny = ux;
  const bow = 28 + 44 * k;
  const p0 = [a[0] + ux * R, a[1] + uy * R], p2 = [b[0] - ux * (R + 4), b[1] - uy * (R + 4)];
  const c = [(a[0] + b[0]) / 2 + nx * bow, (a[1] + b[1]) / 2 + ny * bow];
  const mid = [0.25 * p0[0] + 0.5 * c[0] + 0.25 * p2[0], 0.25 * p0[1] + 0.5 * c[1] + 0.25 * p2[1]];
  return { d: `M${p0[0]},${p0[1]} Q${c[0]},${c[1]} ${p2[0]},${p2[1]}`, label: mid };
}

function drawGraph(graph, sel) {
  const svg = document.getElementById("graph");
  svg.replaceChildren();
  const defs = el("svg:defs");
  for (const v of VERDICTS) {
    const m = el("svg:marker", { id: "arrow-" + v, viewBox: "0 0 10 10", refX: 8, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
    m.appendChild(el("svg:path", { d: "M0,0 L10,5 L0,10 z", class: "arrow-" + v, fill: getComputedStyle(document.documentElement).getPropertyValue("--" + v).trim() }));
    defs.appendChild(m);
  }
  svg.appendChild(defs);
  const ids = graph.identities;
  document.getElementById("empty").hidden = ids.length > 0;
  const pos = positions(ids);
  // Fit the view to the nodes, with room for their text and loops.
  if (ids.length) {
    const xs = [...pos.values()].map(p => p[0]), ys = [...pos.values()].map(p => p[1]);
    const x0 = Math.min(...xs) - 150, x1 = Math.max(...xs) + 150;
    const y0 = Math.min(...ys) - 120, y1 = Math.max(...ys) + 120;
    svg.setAttribute("viewBox", `${x0} ${y0} ${x1 - x0} ${y1 - y0}`);
  }
  const byID = new Map(ids.map(i => [i.id, i]));
  const name = id => (byID.get(id) || { name: "identity " + id }).name;

  const edgeLayer = el("svg:g", { id: "edges" });
  const seen = new Map();
  for (const e of graph.edges) {
    const a = pos.get(e.from), b = pos.get(e.to);
    if (!a || !b) continue;
    const pair = e.from + ">" + e.to;
    const k = seen.get(pair) || 0;
    seen.set(pair, k + 1);
    const geo = edgePath(a, b, k);
    const related = sel === null || e.from === sel || e.to === sel;
    const g = el("svg:g", {
      class: "edge " + e.verdict + (related ? "" : " faded"),
      "data-from": e.from, "data-to": e.to, "data-verdict": e.verdict,
      "data-from-name": name(e.from), "data-to-name": name(e.to),
      "data-flows": e.flows, "data-ports": e.ports.map(p => p.port).join(","),
    });
    let title = `${name(e.from)} → ${name(e.to)}: ${e.verdict}, ${e.flows} flow(s) in the last ${graph.windowSeconds}s`;
    if (e.ports.length) title += "\nports: " + e.ports.map(p => `${p.port} (${p.flows})`).join(", ");
    if (e.reasons && e.reasons.length) title += "\n" + e.reasons.join(", ");
    g.appendChild(el("svg:title", {}, title));
    g.appendChild(el("svg:path", { d: geo.d, "marker-end": `url(#arrow-${e.verdict})` }));
    g.appendChild(el("svg:text", { x: geo.label[0], y: geo.label[1], "text-anchor": "middle", dy: "-0.3em" }, portsText(e)));
    edgeLayer.appendChild(g);
  }
  svg.appendChild(edgeLayer);

  const nodeLayer = el("svg:g", { id: "nodes" });
  for (const ident of ids) {
    const [x, y] = pos.get(ident.id);
    const related = sel === null || ident.id === sel ||
      graph.edges.some(e => (e.from === sel && e.to === ident.id) || (e.to === sel && e.from === ident.id));
    const g = el("svg:g", {
      class: `node ${kind(ident, graph.node)}` + (ident.id === sel ? " selected" : "") + (related ? "" : " faded"),
      "data-id": ident.id, "data-name": ident.name, tabindex: 0, role: "button",
    });
    g.appendChild(el("svg:title", {}, `identity ${ident.id}\n${ident.labels.join("\n")}`));
    g.appendChild(el("svg:circle", { cx: x, cy: y, r: R }));
    g.appendChild(el("svg:text", { x, y, dy: "0.35em", class: "count" }, String(ident.endpoints || "")));
    const lines = [[ident.name, "name"]];
    if ((ident.containers || []).length) lines.push([ident.containers.slice(0, 3).join(", ") + (ident.containers.length > 3 ? ", …" : ""), "sub"]);
    lines.push([`${ident.id}` + (ident.endpoints ? ` · ${ident.endpoints} endpoint${ident.endpoints === 1 ? "" : "s"}` : ""), "sub"]);
    if ((ident.nodes || []).length) lines.push(["on " + ident.nodes.join(", "), "sub"]);
    const above = labelsAbove([x, y]);
    lines.forEach(([text, cls], i) => {
      const ty = above ? y - R - 10 - 15 * (lines.length - 1 - i) : y + R + 17 + 15 * i;
      g.appendChild(el("svg:text", { x, y: ty, class: cls }, text));
    });
    g.addEventListener("click", () => select(ident.id === sel ? null : ident.id));
    g.addEventListener("keydown", ev => { if (ev.key === "Enter") select(ident.id); });
    nodeLayer.appendChild(g);
  }
  svg.appendChild(nodeLayer);
}

function cellKey(from, to) { return from + ">" + to; }

function drawPanel(snap, sel) {
  const graph = snap.graph, matrix = snap.matrix;
  const ident = graph.identities.find(i => i.id === sel) || matrix.identities.find(i => i.id === sel);
  document.getElementById("pick").hidden = !!ident;
  document.getElementById("selected").hidden = !ident;
  if (!ident) return;
  const names = new Map(matrix.identities.concat(graph.identities).map(i => [i.id, i.name]));
  const name = id => names.get(id) || "identity " + id;
  document.getElementById("sel-name").textContent = ident.name;

  const facts = document.getElementById("sel-facts");
  facts.replaceChildren();
  const fact = (k, v) => { facts.appendChild(el("dt", {}, k)); facts.appendChild(el("dd", {}, v)); };
  fact("identity", String(ident.id));
  fact("labels", ident.labels.join(" ") || "–");
  if ((ident.containers || []).length) fact("containers", ident.containers.join(", "));
  fact("endpoints", String(ident.endpoints || 0));
  if ((ident.nodes || []).length) fact("nodes", ident.nodes.join(", "));
  if (ident.ingress) fact("policy here", `ingress ${ident.ingress}, egress ${ident.egress}`);

  const body = document.querySelector("#may-reach tbody");
  body.replaceChildren();
  const denied = [];
  const cells = matrix.cells.filter(c => c.to === sel).sort((a, b) => a.from - b.from);
  for (const c of cells) {
    if (!c.ports.length) { denied.push(name(c.from)); continue; }
    const tr = el("tr", { "data-from": c.from, "data-from-name": name(c.from), "data-ports": c.ports.join(",") });
    tr.appendChild(el("td", {}, name(c.from)));
    tr.appendChild(el("td", { class: "allowed" }, c.ports.join(", ") + (c.partial ? " *" : "")));
    body.appendChild(tr);
  }
  if (!cells.length) {
    const tr = el("tr");
    tr.appendChild(el("td", { colspan: 2 }, "Its policy is enforced on its own nodes, not this one."));
    body.appendChild(tr);
  }
  document.getElementById("denied-from").textContent = denied.length ? "Denied from: " + denied.join(", ") : "";

  document.getElementById("window").textContent = `(last ${Math.round(graph.windowSeconds / 60)} min)`;
  const flows = document.querySelector("#flows-in tbody");
  flows.replaceChildren();
  const incoming = graph.edges.filter(e => e.to === sel);
  for (const e of incoming) {
    const tr = el("tr", { "data-from": e.from, "data-verdict": e.verdict });
    tr.appendChild(el("td", {}, name(e.from)));
    tr.appendChild(el("td", { class: e.verdict }, e.verdict));
    tr.appendChild(el("td", {}, String(e.flows)));
    tr.appendChild(el("td", {}, e.ports.map(p => p.port).join(", ")));
    flows.appendChild(tr);
  }
  if (!incoming.length) {
    const tr = el("tr");
    tr.appendChild(el("td", { colspan: 4 }, "none seen"));
    flows.appendChild(tr);
  }
}

function drawMatrix(matrix, sel) {
  const table = document.getElementById("matrix");
  table.replaceChildren();
  const cells = new Map(matrix.cells.map(c => [cellKey(c.from, c.to), c]));
  const head = el("tr");
  head.appendChild(el("th", { class: "row" }, "from \\ to"));
  for (const to of matrix.identities) {
    head.appendChild(el("th", { title: to.labels.join(" "), class: to.id === sel ? "selected" : null }, `${to.name} (${to.id})`));
  }
  const thead = el("thead");
  thead.appendChild(head);
  table.appendChild(thead);
  const body = el("tbody");
  for (const from of matrix.identities) {
    const tr = el("tr");
    tr.appendChild(el("th", { class: "row", title: from.labels.join(" ") }, `${from.name} (${from.id})`));
    for (const to of matrix.identities) {
      const c = cells.get(cellKey(from.id, to.id));
      let text = "", cls = "";
      if (c) {
        text = c.ports.length ? c.ports.join(", ") : "–";
        cls = c.ports.length ? "allowed" : "denied";
        if (c.partial) text += " *";
      }
      if (to.id === sel) cls += " selected";
      tr.appendChild(el("td", { class: cls.trim() || null, "data-from": from.id, "data-to": to.id }, text));
    }
    body.appendChild(tr);
  }
  table.appendChild(body);
}

function render() {
  if (!snapshot.graph || !snapshot.matrix) return;
  const sel = selectedID();
  document.getElementById("node").textContent = "node " + snapshot.graph.node;
  drawGraph(snapshot.graph, sel);
  drawPanel(snapshot, sel);
  drawMatrix(snapshot.matrix, sel);
  document.body.dataset.updates = String(updates);
}

function setStatus(text, cls) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = "status " + cls;
}

function connect() {
  const events = new EventSource("api/events");
  for (const part of ["graph", "matrix"]) {
    events.addEventListener(part, ev => {
      snapshot[part] = JSON.parse(ev.data);
      updates++;
      setStatus("live · updated " + new Date().toLocaleTimeString(), "live");
      render();
    });
  }
  events.addEventListener("problem", ev => setStatus("the daemon says: " + JSON.parse(ev.data), "down"));
  events.onerror = () => setStatus("disconnected, retrying…", "down");
}

window.addEventListener("hashchange", render);
document.getElementById("graph").addEventListener("click", ev => { if (ev.target.id === "graph") select(null); });
connect();
