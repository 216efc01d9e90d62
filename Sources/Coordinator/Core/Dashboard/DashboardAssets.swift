import Foundation
import HatoHTTP

/// The dashboard's static files, embedded in the binary (no SwiftPM resources, nothing fetched
/// from the internet): `app.css` here, `app.js` in DashboardScript*.swift.
enum DashboardAssets {
    /// The response for `/ui/assets/{name}`, nil for an unknown name.
    static func response(for name: String) -> HTTPResponse? {
        let (type, text): (String, String)
        switch name {
        case "app.css": (type, text) = ("text/css; charset=utf-8", css)
        case "app.js": (type, text) = ("text/javascript; charset=utf-8", DashboardScript.source)
        default: return nil
        }
        return HTTPResponse(status: 200, contentType: type, body: Array(text.utf8), headers: ["Cache-Control": "no-cache"])
    }

    static let css = """
        :root { --bg: #f6f7f9; --fg: #1b1f24; --muted: #5b6470; --card: #fff; --line: #d8dde3; --accent: #1f5fbf;
          --ok: #1a7f37; --warn: #9a6700; --bad: #c62828; --focus: #ffbf47;
          font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
        * { box-sizing: border-box; }
        body { margin: 0; line-height: 1.45; }
        a { color: var(--accent); }
        :focus-visible { outline: 3px solid var(--focus); outline-offset: 1px; }
        .skip { position: absolute; left: -999px; top: 0; background: var(--card); padding: .5rem; }
        .skip:focus { left: .5rem; z-index: 10; }
        header.top { display: flex; flex-wrap: wrap; align-items: center; gap: .5rem 1.5rem; padding: .6rem 1rem;
          background: #14213d; color: #fff; }
        header.top a { color: #fff; }
        .brand { font-weight: 700; text-decoration: none; font-size: 1.1rem; }
        nav ul { display: flex; flex-wrap: wrap; gap: .25rem 1rem; list-style: none; margin: 0; padding: 0; }
        nav a { text-decoration: none; padding: .2rem 0; border-bottom: 2px solid transparent; }
        nav a[aria-current="page"] { border-bottom-color: var(--focus); }
        .logout { margin-left: auto; display: flex; align-items: center; gap: .5rem; }
        .who { opacity: .85; font-size: .9rem; }
        main { padding: 1rem; max-width: 1200px; margin: 0 auto; }
        h1 { font-size: 1.4rem; margin: .3rem 0 1rem; }
        h2 { font-size: 1.1rem; margin: 1.4rem 0 .5rem; }
        .cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: .75rem; }
        .card { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: .75rem; }
        .card .label { color: var(--muted); font-size: .85rem; }
        .card .value { font-size: 1.5rem; font-weight: 600; }
        .table-wrap { overflow-x: auto; background: var(--card); border: 1px solid var(--line); border-radius: 6px; }
        table { border-collapse: collapse; width: 100%; font-size: .9rem; }
        th, td { text-align: left; padding: .4rem .6rem; border-bottom: 1px solid var(--line); vertical-align: top; }
        th { background: #eef1f4; font-weight: 600; white-space: nowrap; }
        td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
        .state { display: inline-block; padding: 0 .4rem; border-radius: 3px; font-size: .8rem; font-weight: 600; background: #e6e9ed; }
        .state-active, .state-delivered, .state-ok, .state-owned { background: #dcf3e3; color: var(--ok); }
        .state-draining, .state-drained, .state-deferred, .state-handover, .state-throttle, .state-held { background: #fff3cd; color: var(--warn); }
        .state-down, .state-failed, .state-expired, .state-listed, .state-suspend, .state-bounced, .state-revoked,
          .state-missing, .state-wrong, .state-lookup_failed, .state-suspended { background: #fde2e1; color: var(--bad); }
        button, .button { font: inherit; padding: .3rem .8rem; border: 1px solid var(--accent); border-radius: 4px;
          background: var(--accent); color: #fff; cursor: pointer; }
        button.secondary { background: var(--card); color: var(--accent); }
        button.danger { background: var(--bad); border-color: var(--bad); }
        form.inline { display: inline; margin: 0; }
        .toolbar { display: flex; flex-wrap: wrap; gap: .5rem; align-items: end; margin: .5rem 0 1rem; }
        .toolbar label { display: flex; flex-direction: column; font-size: .85rem; color: var(--muted); }
        input, select { font: inherit; padding: .3rem .4rem; border: 1px solid #9aa4af; border-radius: 4px; min-width: 0; }
        #notice { background: #e8f0fe; border: 1px solid #b6cdf7; padding: .5rem .75rem; border-radius: 4px; }
        .error { color: var(--bad); }
        .muted { color: var(--muted); }
        .chart { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: .5rem; }
        .chart { margin: 0; }
        .chart svg { width: 100%; height: auto; max-height: 320px; display: block; }
        .legend { display: flex; flex-wrap: wrap; gap: .75rem; font-size: .85rem; list-style: none; padding: 0; margin: .25rem 0 0; }
        .swatch { display: inline-block; width: .8rem; height: .8rem; border-radius: 2px; margin-right: .3rem; vertical-align: -1px; }
        .sw-accepted { background: #1f5fbf; } .sw-delivered { background: #1a7f37; }
        .sw-deferred { background: #d4a72c; } .sw-bounced { background: #c62828; }
        progress { width: 8rem; height: .9rem; vertical-align: middle; }
        dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; background: var(--card);
          border: 1px solid var(--line); border-radius: 6px; padding: .75rem; margin: 0; }
        dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; word-break: break-all; }
        .reply { font-family: ui-monospace, monospace; font-size: .8rem; word-break: break-word; }
        body.login main { max-width: 380px; margin-top: 8vh; }
        .login-form { display: flex; flex-direction: column; gap: .4rem; }
        .login-form button { margin-top: .6rem; }
        @media (max-width: 600px) {
          header.top { padding: .5rem; } .logout { margin-left: 0; } main { padding: .6rem; }
          th, td { padding: .3rem .4rem; } .card .value { font-size: 1.2rem; }
        }
        """
}
