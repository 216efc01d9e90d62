import HatoCoordinator

/// `hato-coordinator COMMAND --help` (and `help COMMAND`) for the commands outside queue
/// control (those pages are `QueueCommands.help(for:)`): usage, what it does, its arguments
/// and an example.
enum CommandHelp {
    /// The page of `command`, nil when there is none.
    static func page(_ command: String) -> String? {
        if let page = QueueCommands.help(for: command) {
            // `resume NODE` shares its name with `resume --provider|--pool|--ip`: show both.
            return command == "resume" ? pages["resume"]! + "\n\n" + page : page
        }
        return pages[command]
    }

    private static let configOption = "  --config PATH        cluster configuration (default ./cluster.yml)"
    /// Every command that talks to the admin API: which coordinator to ask.
    private static let configAndIDOptions = configOption + """

          --id ID              with several coordinators: ask this one (default: the first of
                               coordinators: that answers; a standby forwards to the leader)
        """

    private static let pages: [String: String] = [
        "operator": """
            usage: hato-coordinator operator add NAME | list | remove NAME [--config PATH] [--id ID] [--json]

            The web dashboard's operator accounts (/ui/ on admin_listen; docs/dashboard.md). `add` reads
            the password from standard input (its first line), or prompts twice with echo off on a
            terminal, and sends only its PBKDF2 hash; an existing NAME gets the new password and its
            dashboard sessions end. `remove` ends the account's sessions too. Names: 1-64 of
            A-Z a-z 0-9 . _ @ -

            arguments:
            \(configAndIDOptions)
              --json               print the admin API's JSON

            example:
              hato-coordinator operator add alice
              echo "$PASSWORD" | hato-coordinator operator add deploy-bot
            """,
        "serve": """
            usage: hato-coordinator serve [--config PATH] [--id ID]

            Runs the coordinator: the SMTP submission listener, the durable queue, the scheduler that
            leases mail to the nodes, the cluster listener and the admin API. Logs one JSON object per
            line on standard error (HATO_LOG_LEVEL=debug|info|warning|error). SIGHUP reloads cluster.yml
            (like `reload`); SIGTERM or SIGINT stops it cleanly (exit 0).

            arguments:
            \(configOption)
              --id ID              with a coordinators: list, which one this is (its listen, admin_listen
                                   and smtp_listen); optional when the list has one entry

            example:
              hato-coordinator serve --config /etc/hato/cluster.yml
            """,
        "check": """
            usage: hato-coordinator check [--config PATH] [--id ID]

            Validates what `serve` needs without starting it: cluster.yml, every file it names (TLS
            certificates and keys, CA bundles, DKIM keys, admin_token_file), data_dir, and that the listen
            addresses can be bound. One line per item (ok, warning, error); exit status 1 on an error.

            arguments:
            \(configOption)
              --id ID              with a coordinators: list, the coordinator of this host (its addresses are
                                   bind-tested)

            example:
              hato-coordinator check --config /etc/hato/cluster.yml && systemctl reload hato-coordinator
            """,
        "status": """
            usage: hato-coordinator status [--json] [--config PATH]

            Nodes, sending IPs and queue counts from the running coordinator's admin API.

            arguments:
              --json               print the admin API's JSON answer
            \(configAndIDOptions)

            example:
              hato-coordinator status
            """,
        "nodes": """
            usage: hato-coordinator nodes [--json] [--config PATH]

            Every configured node with its state (active, draining, drained, lost), the sending IPs it
            owns and its leases in flight.

            example:
              hato-coordinator nodes --json
            """,
        "ips": """
            usage: hato-coordinator ips [--detail] [--json] [--config PATH]

            The IP assignment table: each sending IP, its pool, its owner node (or unowned), handovers in
            progress, warm-up state, HEALTH (ok; listed: a DNS blocklist lists it; fcrdns: held by
            reputation.require_fcrdns) and FCRDNS (ok, or a warning: no_ptr, not_confirmed — the PTR does not
            resolve back —, helo_mismatch, unknown — the lookup failed, never acted upon).

            arguments:
              --detail             also WEIGHT (ips[].weight), TARGET (the share of its pool's mail the
                                   weights give it), LEASED (recipients leased to it since the coordinator
                                   started), SHARE (its real share of its pool's leased recipients),
                                   PROVIDER-CAPS (per-provider warm-up caps today: used/cap), WHY it
                                   is held, a second table of the rolling reputation signals per (IP,
                                   provider) with the pause or throttle a reputation rule set and why, and
                                   for each IP that is or was listed or fails FCrDNS: its
                                   listings (zone, return code, reason, since) and its stored history

            example:
              hato-coordinator ips --detail
            """,
        "doctor": """
            usage: hato-coordinator doctor [--json] [--config PATH]

            Every finding for the whole cluster, each with its severity (ok, warning, error) and a one-line
            fix: each sending IP's PTR and FCrDNS (fcrdns) and its HELO name against the PTR (helo); SPF of
            every sending domain (the tenants' and cluster.yml's dkim: domains) evaluated for each sending
            IP (RFC 7208, at most 10 lookups); the DKIM key records against the keys; the TLS certificates
            of the coordinator's listeners (warning under 14 days, error when expired); the clock of each
            node against the coordinator's (warning beyond 2 s). DNS goes through dns.nameservers only.

            Exit status 1 when any finding is an error (also with --json), else 0.

            example:
              hato-coordinator doctor
              hato-coordinator doctor --json | jq '.findings[] | select(.severity != "ok")'
            """,
        "messages": """
            usage: hato-coordinator messages [--limit N] [--json] [--config PATH]

            The most recent message queue ids, newest first.

            arguments:
              --limit N            how many (a whole number of at least 1; default 20)

            example:
              hato-coordinator messages --limit 50
            """,
        "message": """
            usage: hato-coordinator message ID [--json] [--config PATH]

            One message: its reverse-path, pool, size and each recipient's state, attempts, node, sending
            IP, MX and last reply.

            example:
              hato-coordinator message 1KX7Q2M4ZP9W3RTB8C
            """,
        "recipient": """
            usage: hato-coordinator recipient ADDRESS [--limit N] [--json] [--config PATH]

            The messages to one recipient address, newest first, with that recipient's state in each.

            example:
              hato-coordinator recipient user@example.com
            """,
        "drain": """
            usage: hato-coordinator drain NODE [--wait] [--timeout DURATION] [--config PATH]

            Stops leasing to NODE, lets its deliveries in flight finish and hands its floating sending IPs
            to other nodes (a handover: the old owner releases an IP before the new one uses it). The node
            stays connected; `resume NODE` makes it active again.

            arguments:
              NODE                 a node id from cluster.yml
              --wait               show progress and exit when drained (exit 1 on timeout)
              --timeout DURATION   with --wait: how long to wait (default 10m; e.g. 90s, 5m)

            example:
              hato-coordinator drain node-b --wait --timeout 5m
            """,
        "resume": """
            usage: hato-coordinator resume NODE [--config PATH]

            Makes a draining or drained node active again (it is leased mail and may own IPs).
            """,
        "rebalance": """
            usage: hato-coordinator rebalance [--dry-run] [--config PATH]

            Evens out the sending IPs over the active nodes with the fewest moves, each move a handover.

            arguments:
              --dry-run            print the moves without making them

            example:
              hato-coordinator rebalance --dry-run
            """,
        "reload": """
            usage: hato-coordinator reload [--config PATH]

            Makes the running coordinator re-read and check cluster.yml, apply every key that can change
            live, and tell the nodes (they re-read their own copy). Prints what applied live, what needs a
            restart of which process, and each node's answer. A file that fails the check is refused whole,
            naming the key and the file; nothing changes then. Same as SIGHUP to the coordinator.

            example:
              hato-coordinator reload
            """,
        "suspensions": """
            usage: hato-coordinator suspensions [--json] [--config PATH]

            Active backoffs per (sending IP, provider): suspensions and throttles, with the reply that
            caused each and when it ends.

            example:
              hato-coordinator suspensions
            """,
        "suppressions": """
            usage: hato-coordinator suppressions list [--address A] [--json]
                   hato-coordinator suppressions add ADDRESS [--scope DOMAIN] [--reason TEXT] [--expires DURATION]
                   hato-coordinator suppressions remove ADDRESS [--scope DOMAIN|global]

            The suppression list: addresses that hard-bounced (or were added by an operator) and are not
            tried again; mail to them is marked suppressed (or refused at RCPT, by configuration).

            arguments:
              --address A          list: only this address
              --scope DOMAIN       the sender domain the entry applies to (default: global)
              --reason TEXT        why (shown in list and the delivery log)
              --expires DURATION   add: remove the entry after this long (e.g. 90d)

            example:
              hato-coordinator suppressions add old@example.com --reason "customer request" --expires 180d
            """,
        "tls-reports": """
            usage: hato-coordinator tls-reports [--day YYYY-MM-DD] [--domain D] [--json] [--config PATH]

            TLS-RPT counts (RFC 8460) of outbound sessions under an MTA-STS (RFC 8461) or DANE (RFC 7672)
            policy: per UTC day and policy domain (the recipient domain for MTA-STS, the MX host for DANE),
            the successful sessions and the failures by result type (certificate-host-mismatch,
            validation-failure, starttls-not-supported, sts-policy-fetch-error, …). Counted in memory by
            the coordinator the nodes report to, since it started.

            arguments:
              --day YYYY-MM-DD     only this UTC day
              --domain D           only this policy domain

            example:
              hato-coordinator tls-reports --day 2026-12-05
            """,
        "complaints": """
            usage: hato-coordinator complaints [--since DURATION] [--json] [--config PATH]

            Complaints from mailbox providers' feedback loops (ARF reports sent to
            reputation.feedback_addresses) since DURATION ago: the total, and per sending IP,
            provider, sender domain and tenant. Each complaint also suppressed its recipient.

            arguments:
              --since DURATION     how far back (default 24h; e.g. 1h, 7d)

            example:
              hato-coordinator complaints --since 7d
            """,
        "log": """
            usage: hato-coordinator log --message ID | --recipient ADDRESS [--limit N] [--json] [--config PATH]

            Delivery log events (received, delivered, deferred, failed, expired, suppressed, dsn-sent and
            operator actions) of one message or one recipient, oldest first.

            arguments:
              --message ID         a message queue id
              --recipient ADDRESS  a recipient address
              --limit N            at most N events (a whole number of at least 1; default 100)

            example:
              hato-coordinator log --recipient user@example.com --limit 20
            """,
        "tenant": """
            usage: hato-coordinator tenant list
                   hato-coordinator tenant create NAME [--pool P] [--priority transactional|bulk] [--limit 10000/day[,500/hour,1000000/month,50/message]]
                                                [--webhook URL] [--webhook-secret-file FILE]
                   hato-coordinator tenant show NAME | set NAME [options of create] | delete NAME
                   hato-coordinator tenant suspend NAME [--reason TEXT] | resume NAME
                   hato-coordinator tenant smtp-user add TENANT USER | smtp-user remove TENANT USER
                   hato-coordinator tenant key create TENANT [--label TEXT] | key list TENANT | key revoke TENANT ID

            The customers of a relay service (docs/tenants.md). create prints the tenant's first API
            key once (Hato keeps only its hash); with --json: {"tenant": …, "api_key": …}. suspend
            refuses the tenant's new mail (550 5.7.1, HTTP 403) and holds its waiting mail; resume
            releases it. delete is refused while the tenant has waiting mail. smtp-user add reads
            the password from standard input (prompted twice on a terminal) and sends only its hash.

            arguments:
              --pool P             the pool of the tenant's mail (default: the routing rules)
              --priority C         transactional or bulk: the class of its mail (default: its pool's;
                                   a message may lower it to bulk, never raise it; "" resets)
              --limit N/W,…        messages per hour, day or month, recipients per message (0: none)
              --per-hour N, --per-day N, --per-month N, --max-recipients N   the same, one by one
              --webhook URL        where its delivery events are posted (signed with its own secret)
              --webhook-secret-file F   that secret (default: generated and printed once)
              --reason TEXT        why it is suspended (in the 550 reply and the 403 body)
              --label TEXT         what an API key is for
              --json               print the admin API's JSON
            \(configAndIDOptions)

            example:
              hato-coordinator tenant create acme --pool transactional --limit 10000/day,50/message
              echo "$PASSWORD" | hato-coordinator tenant smtp-user add acme acme-billing
            """,
        "domain": """
            usage: hato-coordinator domain add DOMAIN --tenant T | list [--tenant T] | records DOMAIN
                   hato-coordinator domain check DOMAIN | remove DOMAIN

            A tenant's sending domains (docs/tenants.md): the only domains its envelope sender and
            From: may use. add makes the domain's DKIM keys (ed25519 and rsa-2048, selectors with the
            date, sealed with the cluster secret), sends them to the nodes, and prints the DNS records
            to publish: DKIM TXT, SPF, a DMARC suggestion, PTR and forward records of the sending IPs.
            check looks each up through the dns: resolvers and prints ok, missing, wrong or
            lookup_failed; its exit status is 1 unless every record is ok.

            arguments:
              --tenant T           the owning tenant (add), or only its domains (list)
              --json               print the admin API's JSON
            \(configAndIDOptions)

            example:
              hato-coordinator domain add acme.example --tenant acme
              hato-coordinator domain check acme.example
            """,
        "store": StoreCommand.help,
        "hash-password": """
            usage: hato-coordinator hash-password [--iterations N]

            Reads a password from standard input (prompted, without echo, on a terminal) and prints its
            $pbkdf2-sha256$ hash for smtp.users[].password_hash. Needs no configuration file.

            arguments:
              --iterations N       PBKDF2 iterations (default 600000)

            example:
              hato-coordinator hash-password < password.txt
            """,
    ]
}
