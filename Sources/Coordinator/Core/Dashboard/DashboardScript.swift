/// The dashboard's JavaScript (`/ui/assets/app.js`), written for the project: no framework, no
/// chart library. It reads `/ui/api/…`, draws with DOM calls (text through `textContent` only,
/// never parsed as HTML), charts as inline SVG, and builds the action forms with the session's
/// CSRF token from `<meta name="csrf-token">`. Times are shown in the browser's time zone.
enum DashboardScript {
    /// The whole script: helpers and the overview, nodes and IP pages here, the queue, message
    /// and suppression pages in `pagesSource`.
    static var source: String { core + pagesSource + tenantSource + boot }

    static let core = #"""
        "use strict";
        const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
        const app = document.getElementById("app");
        const SVG = "http://www.w3.org/2000/svg";

        function h(tag, attrs, ...kids) {
          const e = document.createElement(tag);
          for (const [k, v] of Object.entries(attrs || {})) {
            if (v === null || v === undefined || v === false) continue;
            e.setAttribute(k, v === true ? "" : String(v));
          }
          for (const k of kids.flat(3)) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
          return e;
        }
        function s(tag, attrs, ...kids) {
          const e = document.createElementNS(SVG, tag);
          for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
          for (const k of kids) e.append(k);
          return e;
        }
        async function api(path) {
          const r = await fetch("/ui/api/" + path, { credentials: "same-origin", headers: { "Accept": "application/json" } });
          if (r.status === 401) { location.href = "/ui/login"; throw new Error("logged out"); }
          const body = await r.json().catch(() => ({}));
          if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
          return body;
        }
        function when(d, title) {
          return h("time", { datetime: d.toISOString(), title: title || d.toISOString() }, d.toLocaleString());
        }
        function time(sec) { return sec === null || sec === undefined ? "—" : when(new Date(sec * 1000)); }
        function isoTime(text) {
          if (!text) return "—";
          const d = new Date(text);
          return isNaN(d.getTime()) ? text : when(d, text);
        }
        function duration(sec) {
          sec = Math.max(0, Math.round(sec || 0));
          if (sec < 60) return sec + " s";
          if (sec < 3600) return Math.floor(sec / 60) + " min " + (sec % 60) + " s";
          if (sec < 86400) return Math.floor(sec / 3600) + " h " + Math.floor((sec % 3600) / 60) + " min";
          return Math.floor(sec / 86400) + " d " + Math.floor((sec % 86400) / 3600) + " h";
        }
        function state(v) { return h("span", { class: "state state-" + v }, v); }
        function col(label, num) { return { label: label, num: !!num }; }
        function table(cols, rows, opts) {
          opts = opts || {};
          const body = rows.length
            ? rows.map(r => h("tr", r.attrs || {}, r.cells.map((c, i) => h("td", { class: cols[i].num ? "num" : null }, c))))
            : [h("tr", {}, h("td", { colspan: cols.length, class: "muted" }, opts.empty || "None."))];
          return h("div", { class: "table-wrap" }, h("table", { id: opts.id || null },
            opts.caption ? h("caption", { class: "muted" }, opts.caption) : null,
            h("thead", {}, h("tr", {}, cols.map(c => h("th", { scope: "col", class: c.num ? "num" : null }, c.label)))),
            h("tbody", {}, body)));
        }
        function actionForm(action, fields, label, opts) {
          opts = opts || {};
          const f = h("form", { method: "post", action: "/ui/actions/" + action, class: "inline" },
            h("input", { type: "hidden", name: "csrf", value: csrf }));
          for (const [k, v] of Object.entries(fields || {})) f.append(h("input", { type: "hidden", name: k, value: v }));
          f.append(h("button", { type: "submit", class: opts.cls || null, "aria-label": opts.aria || null, "data-action": action }, label));
          return f;
        }
        function card(label, value, id) {
          return h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value", id: id || null }, value));
        }
        function showNotice() {
          const n = new URLSearchParams(location.search).get("notice");
          if (!n) return;
          const p = document.getElementById("notice");
          p.textContent = n;
          p.hidden = false;
        }
        async function render(draw, everyMs) {
          const run = async () => {
            // Never redraw under the user's hands: skip a refresh while focus is in the page's content.
            if (everyMs && app.contains(document.activeElement)) return;
            try {
              const nodes = await draw();
              app.replaceChildren(...[nodes].flat());
            } catch (e) {
              app.replaceChildren(h("p", { class: "error", role: "alert" }, "Could not load: " + e.message));
            }
            app.setAttribute("aria-busy", "false");
            app.dataset.loaded = String(Date.now());
          };
          await run();
          if (everyMs) setInterval(run, everyMs);
        }

        // Overview
        const KINDS = [["accepted", "#1f5fbf"], ["delivered", "#1a7f37"], ["deferred", "#d4a72c"], ["bounced", "#c62828"]];
        let range = "hour";
        function chart(points, rangeName) {
          const W = 640, H = 220, L = 44, R = 12, T = 12, B = 26;
          const max = Math.max(1, ...points.flatMap(p => KINDS.map(k => p[k[0]])));
          const x = i => L + (points.length <= 1 ? 0 : i * (W - L - R) / (points.length - 1));
          const y = v => T + (H - T - B) * (1 - v / max);
          const totals = KINDS.map(k => k[0] + " " + points.reduce((a, p) => a + p[k[0]], 0)).join(", ");
          const per = rangeName === "day" ? "per 10 minutes over the last day" : "per minute over the last hour";
          const svg = s("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-labelledby": "chart-title", id: "activity-chart" },
            s("title", { id: "chart-title" }, "Mail " + per + ": " + totals));
          for (const v of [0, Math.round(max / 2), max]) {
            svg.append(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#d8dde3" }));
            svg.append(s("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#5b6470" }, String(v)));
          }
          if (points.length) {
            const marks = [[0, "start"], [Math.floor((points.length - 1) / 2), "middle"], [points.length - 1, "end"]];
            for (const [i, anchor] of marks) {
              const t = new Date(points[i].at * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
              svg.append(s("text", { x: x(i), y: H - 6, "text-anchor": anchor, "font-size": 11, fill: "#5b6470" }, t));
            }
          }
          for (const [k, color] of KINDS) {
            const pts = points.map((p, i) => x(i).toFixed(1) + "," + y(p[k]).toFixed(1)).join(" ");
            svg.append(s("polyline", { points: pts, fill: "none", stroke: color, "stroke-width": 2, "data-kind": k }));
          }
          const legend = h("ul", { class: "legend" }, KINDS.map(k => h("li", {}, h("span", { class: "swatch sw-" + k[0] }), k[0])));
          return h("figure", { class: "chart" }, svg, legend);
        }
        async function overview() {
          const d = await api("overview?range=" + range);
          const st = d.status, q = st.queue || {}, nodes = st.nodes || [];
          const sum = k => d.activity.reduce((a, p) => a + p[k], 0);
          const up = nodes.filter(n => n.state !== "down" && n.state !== "left").length;
          const groups = (d.oldest && d.oldest.groups) || [];
          const oldest = groups.reduce((a, g) => (a && a.oldest_age >= g.oldest_age ? a : g), null);
          const toggle = h("div", { class: "toolbar", role: "group", "aria-label": "Chart range" },
            ["hour", "day"].map(r => {
              const b = h("button", { type: "button", class: r === range ? null : "secondary", "aria-pressed": String(r === range), id: "range-" + r },
                r === "hour" ? "Last hour" : "Last day");
              b.addEventListener("click", () => { range = r; render(overview); });
              return b;
            }));
          const rangeLabel = range === "day" ? "last day" : "last hour";
          return [
            h("section", { "aria-labelledby": "h-activity" }, h("h2", { id: "h-activity" }, "Activity (" + rangeLabel + ")"),
              h("div", { class: "cards" }, KINDS.map(k => card(k[0][0].toUpperCase() + k[0].slice(1), sum(k[0]), "count-" + k[0]))),
              toggle, chart(d.activity, d.range),
              h("p", { class: "muted" }, "Counted by this coordinator process since it started (the leader's reporter, with several).")),
            h("section", { "aria-labelledby": "h-queue" }, h("h2", { id: "h-queue" }, "Queue by state"),
              h("div", { class: "cards" }, Object.keys(q).sort().map(k => card(k, q[k], "queue-" + k))),
              h("p", {}, "Oldest waiting message: ",
                oldest ? [h("a", { href: "/ui/messages/" + encodeURIComponent(oldest.oldest_message_id), id: "oldest" }, oldest.oldest_message_id),
                  " (waiting " + duration(oldest.oldest_age) + ")"] : h("span", { id: "oldest" }, "none"))),
            h("section", { "aria-labelledby": "h-cluster" }, h("h2", { id: "h-cluster" }, "Cluster"),
              h("div", { class: "cards" }, card("Nodes up", up + " / " + nodes.length, "nodes-up"),
                card("This coordinator", (st.coordinator || "—") + " (" + (st.role || "—") + ")", "role"),
                card("Leader", st.leader || "none known", "leader"), card("Term", st.term === undefined ? "—" : st.term)),
              st.note ? h("p", { class: "error" }, st.note) : null)
          ];
        }

        // Nodes and rebalance
        async function nodesPage() {
          const d = await api("nodes");
          const rows = d.nodes.map(n => ({
            attrs: { "data-node": n.id, "data-state": n.state },
            cells: [n.id, state(n.state), (n.ips || []).join(", ") || "—", (n.ips_to_hand_over || []).join(", ") || "—",
              String(n.leases_in_flight), time(n.last_seen),
              n.state === "draining" || n.state === "drained"
                ? actionForm("nodes/" + encodeURIComponent(n.id) + "/resume", {}, "Resume", { aria: "Resume " + n.id, cls: "secondary" })
                : n.state === "down" || n.state === "left" ? "—"
                : actionForm("nodes/" + encodeURIComponent(n.id) + "/drain", {}, "Drain", { aria: "Drain " + n.id })]
          }));
          return [table([col("Node"), col("State"), col("Sending IPs"), col("To hand over"), col("Leases", true), col("Last heartbeat"), col("Action")],
            rows, { id: "nodes", empty: "No node has joined." }),
            h("p", {}, h("a", { href: "/ui/rebalance", id: "rebalance-link" }, "Plan a rebalance…"),
              " — shows the moves first; nothing changes until you confirm.")];
        }
        async function rebalancePage() {
          const d = await api("rebalance");
          const moves = d.moves || [];
          return [h("p", {}, "Rebalancing evens out the sending IPs over the active nodes with the fewest moves. Each move is a handover: " +
              "the old owner finishes its deliveries from the IP before the new one starts."),
            table([col("Sending IP"), col("From"), col("To")], moves.map(m => ({ cells: [m.address, m.from || "(unowned)", m.to] })),
              { id: "plan", empty: "The IPs are balanced: nothing to move." }),
            moves.length ? h("p", {}, actionForm("rebalance", {}, "Confirm: apply these " + moves.length + " moves", { cls: "danger" }),
              " ", h("a", { href: "/ui/nodes" }, "Cancel")) : h("p", {}, h("a", { href: "/ui/nodes" }, "Back to the nodes"))];
        }

        // Sending IPs
        async function ipsPage() {
          const d = await api("ips");
          const ipRows = d.ips.map(ip => ({
            attrs: { "data-ip": ip.address },
            cells: [ip.address, ip.helo, ip.pool, ip.owner || "—", state(ip.state),
              ip.warmup_cap !== undefined && ip.warmup_cap !== null
                ? h("span", {}, "day " + ip.warmup_day + ": ", h("progress", { max: ip.warmup_cap, value: Math.min(ip.warmup_sent || 0, ip.warmup_cap),
                    "aria-label": "warm-up " + ip.address }), " " + (ip.warmup_sent || 0) + " / " + ip.warmup_cap)
                : "warm",
              h("span", {}, state(ip.health || "ok"), ip.health_reason ? h("div", { class: "reply" }, ip.health_reason) : null)]
          }));
          const susp = d.suspensions.map(b => ({
            attrs: { "data-suspension": b.sending_ip + " " + b.provider },
            cells: [b.sending_ip, b.provider, state(b.action) , b.rate_per_minute ? b.rate_per_minute + "/min" : "—",
              h("span", { class: "reply" }, b.reason), time(b.until),
              actionForm("suspensions/lift", { ip: b.sending_ip, provider: b.provider }, "Lift", { aria: "Lift " + b.provider + " on " + b.sending_ip })]
          }));
          const pauses = (d.pauses.pauses || d.pauses || []);
          return [table([col("Address"), col("HELO"), col("Pool"), col("Owner"), col("State"), col("Warm-up today"), col("Health")], ipRows, { id: "ips" }),
            h("h2", {}, "Backoffs and suspensions"),
            table([col("Sending IP"), col("Provider"), col("Action"), col("Rate"), col("Reason"), col("Until"), col("")], susp,
              { id: "suspensions", empty: "No provider is throttling or suspending any IP." }),
            h("h2", {}, "Operator pauses"),
            table([col("Kind"), col("Name"), col("By"), col("Reason"), col("Since")],
              (Array.isArray(pauses) ? pauses : []).map(p => ({ cells: [p.kind || (p.target && p.target.kind), p.name || (p.target && p.target.name), p.by, p.reason, time(p.at)] })),
              { id: "pauses", empty: "Nothing paused (hato-coordinator pause)." })];
        }
        """#
}
