"""HTML pages of the dictionary, rendered from the catalog's dicts (the JSON API's bodies).

One template set for both `gleanpipe serve` (/dictionary/...) and `gleanpipe dictionary build`:
every link is relative and names the .html file, so a static copy works from file:// too.
Everything from definitions or pings is escaped; the page's JSON is embedded with ``<``
escaped. CSS and JS are inline: no network at all.
"""

from __future__ import annotations

import re
from html import escape

import orjson

from .charts import chart_svg

PAGE_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")

CSS = """
*{box-sizing:border-box}body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f7f8fa}
header{background:#1d2330;color:#fff;padding:10px 24px}header a{color:#fff;text-decoration:none;margin-right:8px}
main{max-width:1040px;margin:0 auto;padding:16px 24px 48px}h1{font-size:1.6em;margin:.4em 0}h2{font-size:1.2em;margin-top:1.6em}
table{border-collapse:collapse;width:100%;background:#fff}th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #e3e6eb;vertical-align:top}
th{background:#eef1f5;font-weight:600}code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px}
pre{background:#fff;border:1px solid #d9dde3;padding:10px;overflow:auto;white-space:pre-wrap}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;background:#e7f5ff;color:#1864ab;white-space:nowrap}
.badge.undocumented{background:#fff4e6;color:#d9480f}.badge.nodata{background:#f1f3f5;color:#495057}
.badge.builtin{background:#f3f0ff;color:#5f3dc4}.desc{white-space:pre-wrap}.muted{color:#667}
input[type=search]{width:100%;padding:8px 10px;font-size:15px;border:1px solid #c4cad3;border-radius:6px;margin:8px 0}
button.copy{float:right;margin:4px;padding:3px 10px;cursor:pointer}.sql{position:relative}
svg.chart{background:#fff;border:1px solid #d9dde3;max-width:100%;height:auto}svg .grid{stroke:#e9ecef}
svg .axis,svg .legend,svg .empty{font-size:11px;fill:#555}dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px}
dt{font-weight:600}dd{margin:0}h1 code{font-size:inherit}td.when{white-space:nowrap}
"""

JS = """
(function(){
  var box=document.getElementById('metric-search');
  if(box){
    var rows=Array.prototype.slice.call(document.querySelectorAll('#metrics tbody tr'));
    var count=document.getElementById('metric-count');
    var apply=function(){
      var words=box.value.toLowerCase().split(/\\s+/).filter(Boolean);var shown=0;
      rows.forEach(function(r){var t=r.getAttribute('data-search')||'';
        var ok=words.every(function(w){return t.indexOf(w)>=0;});r.hidden=!ok;if(ok)shown++;});
      if(count)count.textContent=shown+' of '+rows.length+' metrics';
    };
    box.addEventListener('input',apply);apply();
  }
  Array.prototype.forEach.call(document.querySelectorAll('button.copy'),function(b){
    b.addEventListener('click',function(){
      var pre=document.getElementById(b.getAttribute('data-target'));var text=pre?pre.textContent:'';
      var done=function(){b.textContent='Copied';b.setAttribute('data-copied',String((+b.getAttribute('data-copied')||0)+1));
        setTimeout(function(){b.textContent='Copy';},1500);};
      if(navigator.clipboard&&window.isSecureContext){navigator.clipboard.writeText(text).then(done,function(){fallback();});}
      else{fallback();}
      function fallback(){var ta=document.createElement('textarea');ta.value=text;document.body.appendChild(ta);
        ta.select();try{document.execCommand('copy');done();}catch(e){b.textContent='Select and copy';}
        document.body.removeChild(ta);}
    });
  });
})();
"""


def e(value) -> str:
    return escape("" if value is None else str(value), quote=True)


def embed_json(data) -> str:
    raw = orjson.dumps(data, default=str).decode()
    return raw.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def app_href(root: str, dataset: str) -> str:
    return f"{root}apps/{e(dataset)}/index.html"


def ping_href(root: str, dataset: str, name: str) -> str | None:
    return f"{root}apps/{e(dataset)}/pings/{e(name)}.html" if PAGE_ID_RE.fullmatch(name or "") else None


def metric_href(root: str, dataset: str, metric_id: str) -> str | None:
    return f"{root}apps/{e(dataset)}/metrics/{e(metric_id)}.html" if PAGE_ID_RE.fullmatch(metric_id or "") else None


def link(href: str | None, text) -> str:
    return f'<a href="{href}">{e(text)}</a>' if href else e(text)


def url_link(url) -> str:
    """Bugs and data reviews: a link only for http(s) URLs, text otherwise."""
    text = str(url)
    return f'<a href="{e(text)}" rel="noopener noreferrer">{e(text)}</a>' if re.match(r"https?://", text) else e(text)


def badge(status: str) -> str:
    cls = "undocumented" if "undocumented" in status else "nodata" if status == "no data yet" else \
        "builtin" if "built-in" in status else ""
    return f'<span class="badge {cls}">{e(status)}</span>'


def page(title: str, root: str, body: str, data, crumbs: list[tuple[str | None, str]]) -> str:
    nav = " / ".join(link(h, t) for h, t in [(f"{root}index.html", "Dictionary"), *crumbs])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{e(title)} · gleanpipe dictionary</title><style>{CSS}</style></head><body>"
        f"<header>{nav}</header><main>{body}</main>"
        f'<script type="application/json" id="page-data">{embed_json(data)}</script>'
        f"<script>{JS}</script></body></html>\n"
    )


def _when(value) -> str:
    return e(str(value)[:19].replace("T", " ") + " UTC") if value else '<span class="muted">never</span>'


def render_index(apps: list[dict]) -> str:
    root = ""
    rows = "".join(
        f"<tr><td>{link(app_href(root, a['dataset']), a['app_id'])}</td><td><code>{e(a['dataset'])}</code></td>"
        f"<td>{a['ping_types']}</td><td>{a['pings_received']}</td><td>{a['metrics_defined']}</td>"
        f"<td>{_when(a['last_seen'])}</td><td>{'' if a['defined'] else badge('undocumented')}</td></tr>"
        for a in apps)
    body = ("<h1>Applications</h1>"
            + ("<table id=\"apps\"><thead><tr><th>app</th><th>dataset</th><th>ping types with data</th><th>pings received</th>"
               f"<th>metrics defined</th><th>last seen</th><th></th></tr></thead><tbody>{rows}</tbody></table>"
               if apps else "<p>No apps yet: send a ping, or run <code>gleanpipe apps add</code>.</p>"))
    return page("Applications", root, body, apps, [])


def render_app(app: dict) -> str:
    root, ds = "../../", app["dataset"]
    ping_rows = "".join(
        f"<tr><td>{link(ping_href(root, ds, p['name']), p['name'])}</td><td class=\"desc\">{e(p.get('description'))}</td>"
        f"<td><code>{e(ds)}.{e(p['table'])}</code></td><td>{p['rows']}</td><td>{_when(p['last_seen'])}</td>"
        f"<td>{badge(p['status'])}</td></tr>" for p in app["pings"])
    metric_rows = "".join(
        f"<tr data-search=\"{e((m['id'] + ' ' + (m.get('description') or '') + ' ' + m['type']).lower())}\">"
        f"<td>{link(metric_href(root, ds, m['id']), m['id'])}</td><td>{e(m['type'])}</td>"
        f"<td class=\"desc\">{e(m.get('description'))}</td><td>{m['values_seen']}</td><td>{badge(m['status'])}</td></tr>"
        for m in app["metrics"])
    body = (
        f"<h1>{e(app['app_id'])}</h1><p class=\"muted\">Dataset <code>{e(ds)}</code>. "
        + ("Definitions from metrics.yaml / pings.yaml." if app["defined"]
           else "No definitions: add them with <code>gleanpipe apps add</code>.") + "</p>"
        "<h2>Daily active clients</h2><p class=\"muted\">Distinct client ids in baseline pings "
        f"(view <code>{e(ds)}.daily_active_clients</code>).</p>"
        + chart_svg([{"name": "clients", "points": [[d["day"], d["clients"]] for d in app.get("daily_active_clients", [])]}],
                    title="daily active clients", bars=True, css_class="chart dau")
        + f"<h2>Pings</h2><table id=\"pings\"><thead><tr><th>ping</th><th>description</th><th>table</th><th>rows</th>"
        f"<th>last seen</th><th></th></tr></thead><tbody>{ping_rows}</tbody></table>"
        "<h2>Metrics</h2><label for=\"metric-search\">Search metric names and descriptions</label>"
        "<input type=\"search\" id=\"metric-search\" placeholder=\"e.g. launch, counter, theme\" autocomplete=\"off\">"
        "<p class=\"muted\" id=\"metric-count\"></p>"
        f"<table id=\"metrics\"><thead><tr><th>metric</th><th>type</th><th>description</th><th>values seen</th>"
        f"<th></th></tr></thead><tbody>{metric_rows}</tbody></table>")
    return page(app["app_id"], root, body, app, [(app_href(root, ds), app["app_id"])])


def _sql_blocks(queries: list[dict], prefix: str) -> str:
    out = []
    for qi, q in enumerate(queries):
        where = f"<code>{e(q['table'])}</code>" + (f", column <code>{e(q['column'])}</code>" if q.get("column") else "")
        out.append(f"<h3>{where}</h3>")
        for dialect, label in (("duckdb", "DuckDB (gleanpipe query)"), ("bigquery", "BigQuery")):
            pid = f"{prefix}-{qi}-{dialect}"
            out.append(f'<div class="sql"><button class="copy" type="button" data-target="{pid}">Copy</button>'
                       f"<strong>{label}</strong><pre id=\"{pid}\" class=\"sql-{dialect}\">{e(q['sql'][dialect])}</pre></div>")
    return "".join(out)


def _list(values) -> str:
    if not values:
        return '<span class="muted">none</span>'
    return "<ul>" + "".join(f"<li>{url_link(v)}</li>" for v in values) + "</ul>"


def render_ping(ping: dict) -> str:
    root, ds = "../../../", ping["dataset"]
    reasons = "".join(f"<dt><code>{e(k)}</code></dt><dd class=\"desc\">{e(v)}</dd>" for k, v in ping["reasons"].items())
    cid = ping.get("include_client_id")
    metrics = "".join(f"<li>{link(metric_href(root, ds, m), m)}</li>" for m in ping["metrics"])
    body = (
        f"<h1>{e(ping['name'])} {badge(ping['status'])}</h1><p class=\"desc\">{e(ping.get('description'))}</p>"
        "<dl>"
        f"<dt>table</dt><dd><code>{e(ds)}.{e(ping['table'])}</code></dd>"
        f"<dt>rows</dt><dd id=\"row-count\">{ping['rows']}</dd><dt>last seen</dt><dd>{_when(ping['last_seen'])}</dd>"
        f"<dt>carries client_id</dt><dd>{'unknown' if cid is None else ('yes' if cid else 'no')}</dd>"
        f"<dt>sent if empty</dt><dd>{e('unknown' if ping.get('send_if_empty') is None else ping['send_if_empty'])}</dd>"
        f"<dt>bugs</dt><dd>{_list(ping['bugs'])}</dd><dt>data reviews</dt><dd>{_list(ping['data_reviews'])}</dd>"
        "</dl>"
        + (f"<h2>Reasons</h2><dl>{reasons}</dl>" if reasons else "")
        + "<h2>Daily volume</h2>"
        + chart_svg([{"name": "pings", "points": [[d["day"], d["pings"]] for d in ping["daily"]]}],
                    title="pings per day", bars=True)
        + "<h2>Query</h2>" + _sql_blocks([{"table": ping["table"], "column": None, "sql": ping["sql"]}], "ping-sql")
        + f"<h2>Metrics in this ping</h2><ul>{metrics or '<li class=muted>none seen or defined</li>'}</ul>")
    return page(ping["name"], root, body, ping,
                [(app_href(root, ds), ping["app_id"]), (None, ping["name"])])


def render_metric(m: dict) -> str:
    root, ds = "../../../", m["dataset"]
    labels = m.get("labels")
    extra = m.get("extra_keys") or {}
    extra_html = "".join(f"<dt><code>{e(k)}</code></dt><dd class=\"desc\">{e((v or {}).get('description') if isinstance(v, dict) else v)}"
                         f"{' (' + e(v.get('type')) + ')' if isinstance(v, dict) and v.get('type') else ''}</dd>"
                         for k, v in extra.items())
    rows = [("type", f"<code>{e(m['type'])}</code>"), ("status", badge(m["status"])),
            ("lifetime", e(m.get("lifetime") or "unknown")), ("expires", e(m.get("expires") or "unknown")),
            ("sent in pings", ", ".join(link(ping_href(root, ds, p) if p in m.get("app_pings", []) else None, p)
                                       for p in m.get("send_in_pings") or [])
             or '<span class="muted">not defined</span>'),
            ("labels", ", ".join(f"<code>{e(x)}</code>" for x in labels) if isinstance(labels, list) and labels
             else ('<span class="muted">dynamic</span>' if m["type"].startswith("labeled_") else '<span class="muted">none</span>')),
            ("unit", e(m.get("unit") or m.get("time_unit") or m.get("memory_unit") or "") or '<span class="muted">none</span>'),
            ("values seen", str(m["values_seen"])), ("last seen", _when(m["last_seen"])),
            ("data reviews", _list(m.get("data_reviews"))), ("bugs", _list(m.get("bugs"))),
            ("data sensitivity", e(", ".join(m.get("data_sensitivity") or [])) or '<span class="muted">unknown</span>'),
            ("notification emails", e(", ".join(m.get("notification_emails") or [])) or '<span class="muted">none</span>')]
    where = "".join(f"<li><code>{e(ds)}.{e(w['table'])}</code>" + (f" column <code>{e(w['column'])}</code>" if w["column"] else "")
                    + "</li>" for w in m["where"])
    chart = m.get("chart")
    body = (
        f"<h1><code>{e(m['id'])}</code></h1><p class=\"desc\" id=\"metric-description\">"
        f"{e(m.get('description')) or '<span class=muted>No description: this metric is not in the definitions.</span>'}</p>"
        "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"
        + (f"<h2>Extra keys</h2><dl>{extra_html}</dl>" if extra_html else "")
        + f"<h2>Where it is stored</h2><ul>{where or '<li class=muted>nowhere yet</li>'}</ul>"
        + "<h2>Values over time</h2>"
        + ("".join(f"<p class=\"muted\">{e(c['title'])} · <code>{e(c['table'])}</code></p>"
                   + chart_svg(c["series"], title=c["title"]) for c in (m.get("charts") or [chart]))
           if chart else chart_svg([], title="no data"))
        + "<h2>Query it</h2>" + _sql_blocks(m.get("queries") or [], "metric-sql"))
    return page(m["id"], root, body, m, [(app_href(root, ds), m["app_id"]), (None, m["id"])])
