extension DashboardScript {
    /// The tenant view's pages (`/ui/t/…`, data from `/ui/api/t/…`).
    static let tenantSource = #"""

        // Tenant view
        function pct(part, whole) { return whole ? (100 * part / whole).toFixed(1) + " %" : "—"; }
        async function tenantOverview() {
          const d = await api("t/overview?range=" + range);
          const t = d.tenant, u = t.usage, l = t.limits || {};
          const sum = k => d.activity.reduce((a, p) => a + p[k], 0);
          const acc = sum("accepted"), del = sum("delivered"), bnc = sum("bounced"), dfr = sum("deferred");
          const cmp = (d.complaints || []).reduce((a, n) => a + n, 0);
          const limit = (n, cap) => cap ? n + " / " + cap : String(n);
          const toggle = h("div", { class: "toolbar", role: "group", "aria-label": "Chart range" },
            ["hour", "day"].map(r => {
              const b = h("button", { type: "button", class: r === range ? null : "secondary", "aria-pressed": String(r === range), id: "range-" + r },
                r === "hour" ? "Last hour" : "Last day");
              b.addEventListener("click", () => { range = r; render(tenantOverview); });
              return b;
            }));
          return [
            h("p", {}, "Tenant ", h("strong", { id: "tenant-name" }, t.name), " — ", state(t.state),
              t.state_reason ? " " + t.state_reason : "", t.pool ? " · pool " + t.pool : ""),
            h("section", { "aria-labelledby": "h-activity" }, h("h2", { id: "h-activity" }, "Your mail (" + (range === "day" ? "last day" : "last hour") + ")"),
              h("div", { class: "cards" }, KINDS.map(k => card(k[0][0].toUpperCase() + k[0].slice(1), sum(k[0]), "t-count-" + k[0])),
                card("Delivery rate", pct(del, del + bnc), "t-rate-delivered"), card("Bounce rate", pct(bnc, del + bnc), "t-rate-bounced"),
                card("Deferrals per message", acc ? (dfr / acc).toFixed(2) : "—"),
                card("Complaint rate (" + cmp + " complaint" + (cmp === 1 ? "" : "s") + ")", pct(cmp, del), "t-rate-complained")),
              toggle, chart(d.activity, d.range)),
            h("section", { "aria-labelledby": "h-usage" }, h("h2", { id: "h-usage" }, "Usage and limits (messages)"),
              h("div", { class: "cards" }, card("This hour", limit(u.hour, l.messages_per_hour), "t-usage-hour"),
                card("Today (UTC)", limit(u.day, l.messages_per_day)), card("This month", limit(u.month, l.messages_per_month)),
                card("Recipients per message", l.recipients_per_message || "no limit"))),
            h("section", { "aria-labelledby": "h-hook" }, h("h2", { id: "h-hook" }, "Webhook"),
              h("p", {}, t.webhook_url ? ["Events are posted to ", h("code", {}, t.webhook_url), " (signed; the secret is never shown here)."]
                : "No webhook: ask your relay's operator to set one."))
          ];
        }
        function eventRows(events, withMessage) {
          return events.map(e => ({ attrs: { "data-kind": e.kind },
            cells: [time(e.at), state(e.kind), withMessage ? h("a", { href: "/ui/t/messages/" + encodeURIComponent(e.message_id), class: "message-link" }, e.message_id) : null,
              e.recipient || "—", h("span", { class: "reply" }, e.reply || "—"),
              e.meaning ? h("span", {}, e.category ? h("strong", {}, e.category + ": ") : null, e.meaning) : "—"].filter(c => c !== null) }));
        }
        async function tenantMessages() {
          const params = new URLSearchParams(location.search);
          const id = (params.get("id") || "").trim();
          if (id) { location.href = "/ui/t/messages/" + encodeURIComponent(id); return []; }
          const since = params.get("since") || "0";
          const d = await api("t/events?since=" + encodeURIComponent(since));
          const find = h("form", { method: "get", action: "/ui/t/messages", class: "toolbar", role: "search" },
            h("label", {}, "Message id", h("input", { name: "id", id: "t-search-id", required: true, maxlength: 128 })),
            h("button", { type: "submit", id: "t-search-go" }, "Open"));
          return [find, h("h2", {}, "Events of your messages"),
            table([col("Time"), col("Event"), col("Message"), col("Recipient"), col("Reply"), col("What it means")], eventRows(d.events, true),
              { id: "t-events", empty: "No events yet." }),
            h("p", {}, since !== "0" ? [h("a", { href: "/ui/t/messages" }, "First page"), " "] : null,
              d.has_more ? h("a", { href: "/ui/t/messages?since=" + d.next, id: "t-next" }, "Next page") : null)];
        }
        async function tenantMessage(id) {
          const d = await api("t/messages/" + encodeURIComponent(id));
          const m = d.message;
          return [
            h("dl", { class: "facts", id: "message-facts" }, h("dt", {}, "Id"), h("dd", {}, m.id), h("dt", {}, "Sender"), h("dd", {}, m.reverse_path || "<>"),
              h("dt", {}, "Size"), h("dd", {}, m.size + " octets"), h("dt", {}, "Received"), h("dd", {}, time(m.received_at))),
            h("h2", {}, "Recipients"),
            table([col("Recipient"), col("State"), col("Attempts", true), col("Last reply"), col("Next attempt")],
              m.recipients.map(r => ({ attrs: { "data-recipient": r.address }, cells: [r.address, state(r.state), String(r.attempts),
                h("span", { class: "reply" }, r.last_code ? [r.last_code, r.last_enhanced, r.last_text].filter(x => x).join(" ") : (r.last_text || "—")),
                time(r.next_attempt_at)] })), { id: "recipients" }),
            h("h2", {}, "Events"),
            table([col("Time"), col("Event"), col("Recipient"), col("Reply"), col("What it means")], eventRows(d.events, false),
              { id: "t-message-events", empty: "No events yet." })];
        }
        async function tenantDomains() {
          const d = await api("t/domains");
          if (!d.length) return h("p", { id: "t-domains-none" }, "No sending domain yet: ask your relay's operator to add one.");
          return d.map(dom => h("section", { "data-domain": dom.domain }, h("h2", {}, dom.domain),
            h("p", { class: "muted" }, "Publish these records in your domain's DNS (suggested ones are marked)."),
            table([col("Kind"), col("Name"), col("Type"), col("Value")], dom.records.map(r => ({
              cells: [r.kind + (r.suggestion ? " (suggested)" : ""), h("code", {}, r.name), r.type, h("code", { class: "reply" }, r.value)] }))),
            checkButton(dom.domain)));
        }
        function checkButton(domain) {
          const out = h("div", { class: "check-result" });
          const b = h("button", { type: "button", class: "secondary", "data-check": domain }, "Check DNS now");
          b.addEventListener("click", async () => {
            b.disabled = true;
            out.replaceChildren(h("p", { role: "status" }, "Looking the records up…"));
            try {
              const items = await api("t/domains/" + encodeURIComponent(domain) + "/check");
              out.replaceChildren(table([col("Kind"), col("Name"), col("Status"), col("Found")], items.map(i => ({
                cells: [i.kind, h("code", {}, i.name), state(i.status), h("span", { class: "reply" }, (i.found || []).join(" ") || i.detail || "—")] }))));
            } catch (e) { out.replaceChildren(h("p", { class: "error", role: "alert" }, "Check failed: " + e.message)); }
            b.disabled = false;
          });
          return h("div", {}, h("p", {}, b), out);
        }
        async function tenantSuppressions() {
          const q = new URLSearchParams(location.search).get("q") || "";
          const entries = await api("t/suppressions" + (q ? "?q=" + encodeURIComponent(q) : ""));
          const search = h("form", { method: "get", action: "/ui/t/suppressions", class: "toolbar", role: "search" },
            h("label", {}, "Address", h("input", { name: "q", value: q, type: "search" })), h("button", { type: "submit" }, "Search"));
          return [h("p", { class: "muted" }, "Addresses that hard-bounced from your sending domains are not tried again. Remove one " +
              "when you know it works again (a new hard bounce puts it back)."), search,
            table([col("Address"), col("Domain"), col("Why"), col("Added"), col("Expires"), col("")],
              entries.map(e => ({ attrs: { "data-address": e.address }, cells: [e.address, e.scope || "—",
                h("span", {}, e.category ? h("strong", {}, e.category + ": ") : null, h("span", { class: "reply" }, e.reason || "—")),
                time(e.created_at), time(e.expires_at),
                actionForm("t/suppressions/remove", { address: e.address }, "Remove", { aria: "Remove " + e.address, cls: "secondary" })] })),
              { id: "t-suppressions", empty: q ? "Not on your list." : "Your suppression list is empty." })];
        }
        async function tenantKeys() {
          const keys = await api("t/keys");
          const create = h("form", { method: "post", action: "/ui/actions/t/keys/create", class: "toolbar", id: "t-create-key" },
            h("input", { type: "hidden", name: "csrf", value: csrf }),
            h("label", {}, "Label", h("input", { name: "label", maxlength: 100, id: "t-key-label" })),
            h("button", { type: "submit", id: "t-key-go" }, "Create an API key"));
          return [table([col("Id"), col("Label"), col("Created"), col("Last used"), col("State"), col("")],
            keys.map(k => ({ attrs: { "data-key": k.id }, cells: [k.id, k.label, time(k.created_at), time(k.last_used_at),
              state(k.revoked_at ? "revoked" : "active"),
              k.revoked_at ? "—" : actionForm("t/keys/" + encodeURIComponent(k.id) + "/revoke", {}, "Revoke", { aria: "Revoke " + k.id, cls: "danger" })] })),
            { id: "t-keys", empty: "No API key." }), h("h2", {}, "New key"), create];
        }
        """#
}
