namespace LMCacheSharp.Controller;

/// <summary>
/// The dashboard at <c>GET /</c>: one page of plain HTML and JavaScript (no build step) that renders the snapshots of
/// <c>GET /events</c> (server-sent events, one a second): instances with health, load, hit rate and tier usage, the top
/// cached prefixes, and routing decisions per second of the routers that report them.
/// </summary>
internal static class Dashboard
{
    public const string Html = """
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>lmcache controller</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2330; background: #f6f7fb; }
  h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 24px 0 8px; }
  .sub { color: #667; margin-bottom: 12px; }
  table { border-collapse: collapse; width: 100%; background: #fff; box-shadow: 0 1px 2px #0002; }
  th, td { padding: 6px 10px; border-bottom: 1px solid #e3e6ee; text-align: left; white-space: nowrap; }
  th { background: #eef1f7; font-weight: 600; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
  .ok { color: #0a7a32; font-weight: 600; } .bad { color: #b3261e; font-weight: 600; }
  .bar { display: inline-block; height: 8px; background: #4a7bd8; vertical-align: middle; margin-right: 6px; }
  .empty { color: #889; font-style: italic; }
</style>
</head>
<body>
<h1>lmcache controller</h1>
<div class="sub">live: <span id="status">connecting</span> &middot; snapshot <span id="seq">0</span> &middot; <span id="time"></span> &middot; <span id="chunks">0</span> chunks in the directory</div>
<h2>Instances</h2>
<table id="instances"><thead><tr><th>id</th><th>url</th><th>model</th><th>health</th><th>heartbeat</th><th>in flight</th><th>queued</th><th>hit rate</th><th>memory</th><th>disk</th><th>chunks mem / disk / remote</th><th>events seq</th></tr></thead><tbody></tbody></table>
<h2>Top cached prefixes</h2>
<table id="prefixes"><thead><tr><th>root</th><th>first tokens</th><th>chunks</th><th>tokens</th><th>instances</th></tr></thead><tbody></tbody></table>
<h2>Routing decisions</h2>
<table id="routers"><thead><tr><th>router</th><th>policy</th><th>decisions/s</th><th>total</th><th>last report</th></tr></thead><tbody></tbody></table>
<script>
"use strict";
const fmtBytes = b => { if (!b) return "0 B"; const u = ["B","KiB","MiB","GiB","TiB"]; let i = 0; while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; } return b.toFixed(i ? 1 : 0) + " " + u[i]; };
const usage = (used, cap) => cap > 0 ? `<span class="bar" style="width:${Math.max(1, Math.round(60 * used / cap))}px"></span>${fmtBytes(used)} / ${fmtBytes(cap)}` : (used ? fmtBytes(used) : "-");
const esc = s => String(s ?? "").replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;","\"":"&quot;"}[c]));
function rows(id, items, render, cols, empty) {
  const body = document.querySelector(`#${id} tbody`);
  body.innerHTML = items.length ? items.map(render).join("") : `<tr><td colspan="${cols}" class="empty">${empty}</td></tr>`;
}
function render(s) {
  document.getElementById("seq").textContent = s.seq;
  document.getElementById("time").textContent = s.time;
  document.getElementById("chunks").textContent = s.chunks;
  rows("instances", s.instances, i => `<tr id="inst-${esc(i.id)}"><td>${esc(i.id)}</td><td>${esc(i.url)}</td><td>${esc(i.model)}</td>` +
    `<td class="${i.healthy ? "ok" : "bad"}">${i.healthy ? "healthy" : "catching up"}</td><td class="n">${i.heartbeat_age_s.toFixed(1)} s ago</td>` +
    `<td class="n in-flight">${i.load.in_flight}</td><td class="n queued">${i.load.queued}</td><td class="n hit-rate">${(100 * i.hit_rate).toFixed(1)}%</td>` +
    `<td>${usage(i.stats.memory_used_bytes, i.stats.memory_capacity_bytes)}</td><td>${usage(i.stats.disk_used_bytes, i.stats.disk_capacity_bytes)}</td>` +
    `<td class="n chunks">${i.chunks.memory} / ${i.chunks.disk} / ${i.chunks.remote}</td><td class="n">${i.kv_events ? i.kv_events.next_sequence : "-"}</td></tr>`,
    12, "no instance registered");
  rows("prefixes", s.top_prefixes, p => `<tr><td><code>${esc(p.root)}</code></td><td><code>${esc(p.first_tokens.join(" "))}</code></td>` +
    `<td class="n">${p.chunks}</td><td class="n">${p.tokens}</td><td class="n">${p.instances}</td></tr>`, 5, "nothing cached yet");
  rows("routers", s.routers, r => `<tr><td>${esc(r.router)}</td><td>${esc(r.policy)}</td><td class="n">${r.decisions_per_s.toFixed(1)}</td>` +
    `<td class="n">${r.decisions_total}</td><td class="n">${r.age_s.toFixed(1)} s ago</td></tr>`, 5, "no router reports (POST /router/report)");
}
// ?limit=N: stop after N snapshots (headless tests and screenshots: a page with an open stream never goes idle).
const limit = Number(new URLSearchParams(location.search).get("limit")) || 0;
const source = new EventSource("events" + (limit ? "?limit=" + limit : ""));
let seen = 0;
source.addEventListener("snapshot", e => {
  document.getElementById("status").textContent = "connected";
  render(JSON.parse(e.data));
  if (limit && ++seen >= limit) source.close();
});
source.onerror = () => { document.getElementById("status").textContent = "reconnecting"; };
</script>
</body>
</html>
""";
}
