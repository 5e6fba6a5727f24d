// gleanpipe debug ping viewer: keeps /debug and /debug/<tag> live by polling /debug/api/...
// Every value from a ping is put into the page with textContent, never as markup.
(function () {
  "use strict";
  var main = document.getElementById("viewer");
  if (!main) { return; }
  var base = main.getAttribute("data-base") || "";
  var mode = main.getAttribute("data-mode");
  var pollMs = parseInt(main.getAttribute("data-poll-ms"), 10) || 2000;

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    if (cls) { node.className = cls; }
    return node;
  }

  function getJSON(url, done) {
    var xhr = new XMLHttpRequest();
    xhr.open("GET", url);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.onload = function () {
      if (xhr.status === 200) {
        try { done(JSON.parse(xhr.responseText)); } catch (e) { /* keep the page as it is */ }
      }
      schedule();
    };
    xhr.onerror = schedule;
    xhr.send();
  }

  function schedule() { window.setTimeout(poll, pollMs); }

  function renderTags(data) {
    var body = document.querySelector("#tags tbody");
    while (body.firstChild) { body.removeChild(body.firstChild); }
    data.tags.forEach(function (t) {
      var tr = el("tr");
      tr.setAttribute("data-tag", t.tag);
      var td = el("td");
      var a = el("a", t.valid ? t.tag : "invalid tags");
      a.setAttribute("href", base + "/" + encodeURIComponent(t.tag));
      td.appendChild(a);
      tr.appendChild(td);
      tr.appendChild(el("td", t.count));
      tr.appendChild(el("td", t.latest));
      body.appendChild(tr);
    });
    document.getElementById("empty").hidden = data.tags.length > 0;
  }

  function field(dl, label, value) {
    if (value === undefined || value === null || value === "") { return; }
    dl.appendChild(el("dt", label));
    dl.appendChild(el("dd", value));
  }

  function block(summary, text, open) {
    var d = el("details");
    d.open = !!open;
    d.appendChild(el("summary", summary));
    d.appendChild(el("pre", text, "json"));
    return d;
  }

  function renderPing(p) {
    var li = el("li", null, "ping " + String(p.status) + " fresh" + (p.pending ? " pending" : ""));
    li.setAttribute("data-id", p.id);
    var head = el("div", null, "head");
    head.appendChild(el("span", String(p.status) + " " + (p.http_status || ""), "status"));
    head.appendChild(document.createTextNode(" "));
    head.appendChild(el("span", [p.received, p.app_id, p.doc_type].filter(Boolean).join(" "), "what"));
    li.appendChild(head);
    var dl = el("dl");
    field(dl, "document id", p.document_id);
    field(dl, "debug tag", p.tag);
    field(dl, "object", p.object_key);
    field(dl, "error type", p.error_type);
    field(dl, "error message", p.error_message);
    field(dl, "note", p.note);
    li.appendChild(dl);
    if (p.ping !== null && p.ping !== undefined) {
      li.appendChild(block("ping JSON", JSON.stringify(p.ping, null, 2), true));
    } else if (p.body_text !== null && p.body_text !== undefined) {
      li.appendChild(block("body (not JSON)", p.body_text, true));
    }
    if (p.metadata !== null && p.metadata !== undefined) {
      li.appendChild(block("metadata", JSON.stringify(p.metadata, null, 2), false));
    }
    return li;
  }

  function cursorId(list) {
    // The newest ping shown whole with no pending one older than it: the page asks for the pings
    // after it, so a pending ping is asked for again even below a newer complete one.
    var items = list.querySelectorAll("li.ping");  // newest first
    var cursor = "";
    for (var i = items.length - 1; i >= 0; i--) {
      if (items[i].classList.contains("pending")) { break; }
      cursor = items[i].getAttribute("data-id");
    }
    return cursor;
  }

  function renderTag(data) {
    var list = document.getElementById("pings");
    var live = {};
    data.ids.forEach(function (id) { live[id] = true; });
    Array.prototype.slice.call(list.querySelectorAll("li.ping")).forEach(function (li) {
      if (!live[li.getAttribute("data-id")]) { list.removeChild(li); }  // pruned or expired
    });
    // data.pings is newest first: insert from the oldest so the newest ends on top
    data.pings.slice().reverse().forEach(function (p) {
      var have = list.querySelector('li.ping[data-id="' + String(p.id).replace(/[^0-9a-f-]/g, "") + '"]');
      if (have && have.classList.contains("pending") && !p.pending) {
        list.replaceChild(renderPing(p), have);  // its object is written now: show the ping
        return;
      }
      if (have) { return; }
      list.insertBefore(renderPing(p), list.firstChild);
    });
    document.getElementById("empty").hidden = data.ids.length > 0;
  }

  function poll() {
    if (mode === "tags") {
      getJSON(base + "/api/tags", renderTags);
    } else if (mode === "tag") {
      var list = document.getElementById("pings");
      var tag = encodeURIComponent(main.getAttribute("data-tag"));
      getJSON(base + "/api/tags/" + tag + "?after=" + encodeURIComponent(cursorId(list)), renderTag);
    }
  }

  schedule();
})();
