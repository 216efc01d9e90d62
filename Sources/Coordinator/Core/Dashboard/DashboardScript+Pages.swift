extension DashboardScript {
    /// The queue and search, message and suppression pages.
    static let pagesSource = #"""

        // Queue and search
        function searchForm(q, by) {
          const sel = h("select", { id: "search-by", name: "by" },
            [["recipient", "Recipient"], ["id", "Message id"], ["sender", "Sender"], ["tenant", "Tenant"]].map(o => h("option", { value: o[0], selected: o[0] === by }, o[1])));
          return h("form", { method: "get", action: "/ui/queue", class: "toolbar", role: "search" },
            h("label", {}, "Search", h("input", { id: "search-q", name: "q", value: q, required: true, maxlength: 512, type: "search" })),
            h("label", {}, "by", sel), h("button", { type: "submit", id: "search-go" }, "Search"));
        }
        function messageLink(id) { return h("a", { href: "/ui/messages/" + encodeURIComponent(id), class: "message-link" }, id); }
        function recipientStates(m) {
          const counts = {};
          for (const r of m.recipients) counts[r.state] = (counts[r.state] || 0) + 1;
          return Object.keys(counts).map(k => h("span", {}, state(k), " " + counts[k] + " "));
        }
        async function queuePage() {
          const params = new URLSearchParams(location.search);
          const q = params.get("q") || "", by = params.get("by") || "recipient";
          const out = [searchForm(q, by)];
          if (q) {
            const d = await api("messages?q=" + encodeURIComponent(q) + "&by=" + encodeURIComponent(by));
            let rows;
            if (d.messages) {
              rows = d.messages.map(m => ({ cells: [messageLink(m.id), m.reverse_path || "<>", m.recipients.map(r => r.address).join(", "),
                recipientStates(m), time(m.received_at)] }));
            } else if (d.waiting) {
              rows = d.waiting.recipients.map(r => ({ cells: [messageLink(r.message_id), r.sender || "<>", r.address, state(r.state),
                h("span", { class: "reply" }, r.reason)] }));
            } else {
              rows = (d.received || []).filter(e => e.event === "received").reverse().slice(0, 50)
                .map(e => ({ cells: [messageLink(e.message_id), e.reverse_path || "<>", String(e.recipients || ""), "—", isoTime(e.ts)] }));
            }
            out.push(h("h2", {}, "Results for " + by + " “" + q + "”"),
              table([col("Message"), col("Sender"), col("Recipients"), col("States"), col("Received")], rows,
                { id: "results", empty: "No message found." }));
          }
          const [qd] = await Promise.all([api("queue")]);
          out.push(h("h2", {}, "Waiting recipients by provider"),
            table([col("Provider"), col("Queued", true), col("Deferred", true), col("Leased", true), col("Held", true), col("Oldest")],
              qd.providers.groups.map(g => ({ cells: [g.key, String(g.queued), String(g.deferred), String(g.leased), String(g.held),
                h("span", {}, messageLink(g.oldest_message_id), " " + duration(g.oldest_age))] })),
              { id: "providers", empty: "Nothing is waiting.", caption: qd.providers.group_count + " providers, " + qd.providers.total + " recipients waiting" }),
            h("h2", {}, "Recent messages"),
            h("ul", { id: "recent" }, qd.recent.map(id => h("li", {}, messageLink(id)))));
          return out;
        }

        // One message
        async function messagePage(id) {
          const d = await api("messages/" + encodeURIComponent(id));
          const m = d.message, events = d.events || [];
          const reply = e => e.code ? [e.code, e.enhanced, e.reply].filter(x => x).join(" ") : (e.reply || e.note || "");
          const attempts = events.filter(e => e.recipient);
          const dsns = events.filter(e => e.dsn_message_id);
          return [
            h("dl", { class: "facts", id: "message-facts" },
              h("dt", {}, "Id"), h("dd", {}, m.id), h("dt", {}, "Sender"), h("dd", {}, m.reverse_path || "<>"),
              h("dt", {}, "Pool"), h("dd", {}, m.pool), h("dt", {}, "Size"), h("dd", {}, m.size + " octets"),
              h("dt", {}, "Received"), h("dd", {}, time(m.received_at)), h("dt", {}, "Client"), h("dd", {}, m.client_address),
              m.tenant ? [h("dt", {}, "Tenant"), h("dd", {}, m.tenant)] : null),
            h("h2", {}, "Recipients"),
            table([col("Recipient"), col("State"), col("Attempts", true), col("Last reply"), col("Node"), col("Sending IP"), col("MX"), col("Next attempt")],
              m.recipients.map(r => ({ attrs: { "data-recipient": r.address },
                cells: [r.address, state(r.state), String(r.attempts), h("span", { class: "reply" }, r.last_code ? [r.last_code, r.last_enhanced, r.last_text].filter(x => x).join(" ") : (r.last_text || "—")),
                  r.node || "—", r.sending_ip || "—", r.mx_host || "—", time(r.next_attempt_at)] })), { id: "recipients" }),
            h("h2", {}, "Attempts and events (delivery log)"),
            table([col("Time"), col("Event"), col("Recipient"), col("Node"), col("Sending IP"), col("MX"), col("Reply"), col("TLS"), col("DKIM")],
              attempts.map(e => ({ cells: [isoTime(e.ts), state(e.event), e.recipient, e.node || "—", e.sending_ip || "—", e.mx || "—",
                h("span", { class: "reply" }, reply(e) || "—"), e.tls === undefined ? "—" : e.tls ? (e.tls_version || "yes") : "no",
                (e.dkim || []).join(", ") || "—"] })), { id: "attempts", empty: "No attempt logged yet." }),
            h("h2", {}, "Delivery status notifications"),
            table([col("Time"), col("DSN message")], dsns.map(e => ({ cells: [isoTime(e.ts), messageLink(e.dsn_message_id)] })),
              { id: "dsns", empty: "No DSN was sent for this message." })];
        }

        // Tenants (operator view)
        async function tenantsPage() {
          const q = (new URLSearchParams(location.search).get("q") || "").toLowerCase();
          const d = await api("tenants");
          const domains = {};
          for (const x of d.domains) (domains[x.tenant] = domains[x.tenant] || []).push(x.domain);
          const use = (n, l) => String(n || 0) + " / " + (l ? String(l) : "—");
          const search = h("form", { method: "get", action: "/ui/tenants", class: "toolbar", role: "search" },
            h("label", {}, "Tenant", h("input", { name: "q", value: q, type: "search", id: "tenant-q" })), h("button", { type: "submit" }, "Search"));
          const rows = d.tenants.filter(t => !q || t.name.includes(q)).map(t => ({ attrs: { "data-tenant": t.name },
            cells: [t.name, t.state, t.state_reason || "", t.pool || "(routing)",
              use(t.usage && t.usage.hour, t.limits.messages_per_hour), use(t.usage && t.usage.day, t.limits.messages_per_day),
              use(t.usage && t.usage.month, t.limits.messages_per_month), (domains[t.name] || []).join(", ") || "—",
              h("a", { href: "/ui/queue?by=tenant&q=" + encodeURIComponent(t.name) }, "Waiting mail"),
              t.state === "active"
                ? actionForm("tenants/suspend", { name: t.name, reason: "suspended from the dashboard" }, "Suspend", { aria: "Suspend " + t.name, cls: "secondary" })
                : actionForm("tenants/resume", { name: t.name }, "Resume", { aria: "Resume " + t.name }),
              actionForm("tenants/delete", { name: t.name }, "Delete", { aria: "Delete " + t.name, cls: "secondary" })] }));
          const add = h("form", { method: "post", action: "/ui/actions/tenants/create", class: "toolbar", id: "add-tenant" },
            h("input", { type: "hidden", name: "csrf", value: csrf }),
            h("label", {}, "Name", h("input", { name: "name", required: true, maxlength: 64, pattern: "[a-z0-9._\\-]+", id: "tenant-name" })),
            h("label", {}, "Pool", h("input", { name: "pool", maxlength: 64 })),
            h("label", {}, "Per hour", h("input", { name: "per_hour", type: "number", min: 0 })),
            h("label", {}, "Per day", h("input", { name: "per_day", type: "number", min: 0 })),
            h("label", {}, "Per month", h("input", { name: "per_month", type: "number", min: 0 })),
            h("label", {}, "Recipients per message", h("input", { name: "max_recipients", type: "number", min: 0 })),
            h("button", { type: "submit", id: "tenant-go" }, "Create"));
          return [search, table([col("Tenant"), col("State"), col("Reason"), col("Pool"), col("This hour"), col("Today"), col("This month"),
              col("Sending domains"), col(""), col(""), col("")], rows, { id: "tenants", empty: q ? "No tenant matches." : "No tenant yet." }),
            h("h2", {}, "Create a tenant"), add];
        }

        // Suppressions
        async function suppressionsPage() {
          const q = new URLSearchParams(location.search).get("q") || "";
          const d = await api("suppressions" + (q ? "?q=" + encodeURIComponent(q) : ""));
          const add = h("form", { method: "post", action: "/ui/actions/suppressions/add", class: "toolbar", id: "add-suppression" },
            h("input", { type: "hidden", name: "csrf", value: csrf }),
            h("label", {}, "Address", h("input", { name: "address", type: "email", required: true, maxlength: 320, id: "add-address" })),
            h("label", {}, "Sender domain (empty: every sender)", h("input", { name: "scope", maxlength: 253 })),
            h("label", {}, "Reason", h("input", { name: "reason", maxlength: 200 })),
            h("button", { type: "submit", id: "add-go" }, "Suppress"));
          const search = h("form", { method: "get", action: "/ui/suppressions", class: "toolbar", role: "search" },
            h("label", {}, "Address", h("input", { name: "q", value: q, type: "search", id: "supp-q" })), h("button", { type: "submit" }, "Search"));
          return [search, table([col("Address"), col("Scope"), col("Source"), col("Reason"), col("Added"), col("Expires"), col("")],
            d.entries.map(e => ({ attrs: { "data-address": e.address },
              cells: [e.address, e.scope || "every sender", e.source, h("span", { class: "reply" }, e.reason || e.category || "—"), time(e.created_at),
                time(e.expires_at), actionForm("suppressions/remove", { address: e.address, scope: e.scope || "global" }, "Remove",
                  { aria: "Remove " + e.address, cls: "secondary" })] })),
            { id: "suppressions", empty: q ? "Not suppressed." : "The suppression list is empty." }),
            h("h2", {}, "Add an address"), add];
        }
        """#

    /// Starts the page named by `<body data-page>`.
    static let boot = #"""

        document.addEventListener("DOMContentLoaded", () => {
          if (!app) return;
          showNotice();
          const page = document.body.dataset.page, param = document.body.dataset.param || "";
          const pages = { overview: [overview, 5000], nodes: [nodesPage, 0], rebalance: [rebalancePage, 0], ips: [ipsPage, 5000],
            queue: [queuePage, 0], message: [() => messagePage(param), 0], suppressions: [suppressionsPage, 0], tenants: [tenantsPage, 0],
            "t-overview": [tenantOverview, 5000], "t-messages": [tenantMessages, 0], "t-message": [() => tenantMessage(param), 0],
            "t-domains": [tenantDomains, 0], "t-keys": [tenantKeys, 0], "t-suppressions": [tenantSuppressions, 0] };
          const p = pages[page];
          if (p) render(p[0], p[1]);
        });
        """#
}
