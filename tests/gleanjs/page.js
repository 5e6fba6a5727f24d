// The Glean.js test page's script (tests/test_gleanjs.py), bundled by `make gleanjs` with esbuild
// into build/gleanjs/page.bundle.js. It is a web app's instrumentation as Glean.js's docs show it:
// the web entry point, and the metrics and ping glean_parser generated from metrics.yaml and
// pings.yaml (build/gleanjs/generated/). The test calls window.webtool.* through Playwright.
import Glean from "@mozilla/glean/web";

import * as webtool from "./generated/webtool.js";
import { webtoolUsage } from "./generated/pings.js";

window.webtool = {
  // Glean.initialize's own errors (an http: serverEndpoint) reach the caller as they are thrown.
  start(serverEndpoint, { debugViewTag, sourceTags } = {}) {
    Glean.setLogPings(true);  // each ping's JSON goes to the console, where the test reads it
    if (debugViewTag) Glean.setDebugViewTag(debugViewTag);
    if (sourceTags) Glean.setSourceTags(sourceTags);
    Glean.initialize("org.example.webtool", true, {
      serverEndpoint,
      channel: "nightly",
      appBuild: "2026.12.1",
      appDisplayVersion: "3.1.4",
    });
  },
  use() {
    webtool.launchCount.add(3);
    webtool.toolUsed.hammer.add(2);
    webtool.toolUsed.pliers.add(1);
    webtool.toolUsed["saw"].add(4);  // not among the defined labels: Glean.js counts it under __other__
    webtool.activeTheme.set("solarized");
    webtool.buttonClicked.record({ button: "save", times: 2 });  // maxEvents is 1: submits `events`
    webtoolUsage.submit("manual");
  },
};
