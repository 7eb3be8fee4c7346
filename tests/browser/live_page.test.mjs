// The live page (`/` on the HTTP gateway) in a real browser: Debian's Chromium, headless, driven
// by playwright-core. Run by tests/tests/browser.rs, which starts the mesh (a router serving the
// gateway and two clients subscribed to demo/**) and passes:
//   HYPHA_PAGE        the page's URL (http://127.0.0.1:PORT/)
//   HYPHA_SCREENSHOT  where to save the PNG
//   HYPHA_CHROMIUM    the browser (default /usr/bin/chromium)
// The router counts two prefixes (`[metrics] prefixes = ["demo/**", "other/**"]`).
// The test waits for the three nodes and two links to be drawn and the router's two prefix rows,
// reads the idle rates, publishes through the gateway (PUT /api/v1/k/demo/load in a loop) and
// waits for the page to show a link rate and the demo/** prefix rate well above the idle ones
// (other/** staying at 0), then saves a screenshot.

import { test } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const PAGE = process.env.HYPHA_PAGE;
const SHOT = process.env.HYPHA_SCREENSHOT;
const CHROMIUM = process.env.HYPHA_CHROMIUM || "/usr/bin/chromium";

// The flags a sandboxed, offline CI machine needs (root: no sandbox; no network: none of
// Chromium's background fetches).
const ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

// What the page shows: nodes and edges drawn in the SVG, the busiest edge's msg/s, the status.
function drawn() {
  const rates = [...document.querySelectorAll("#links g.edge text.rate")].map((t) => parseFloat(t.textContent));
  return {
    nodes: document.querySelectorAll("#nodes g.node").length,
    edges: document.querySelectorAll("#links g.edge").length,
    modes: [...document.querySelectorAll("#nodes g.node")].map((g) => g.getAttribute("class")).sort(),
    maxRate: rates.length ? Math.max(...rates) : -1,
    rows: document.querySelectorAll("#table tr").length,
    prefixes: Object.fromEntries(
      [...document.querySelectorAll("#prefixes tr[data-prefix]")].map((r) => [r.dataset.prefix, parseFloat(r.querySelector("td.msgs").textContent)]),
    ),
    status: document.getElementById("status").textContent,
  };
}

test("the live page draws the mesh and its traffic", { timeout: 120_000 }, async () => {
  assert.ok(PAGE, "HYPHA_PAGE is not set (tests/tests/browser.rs sets it)");
  assert.ok(SHOT, "HYPHA_SCREENSHOT is not set");
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS });
  let publishing = true;
  let puts = 0;
  let loadError = null;
  let load = Promise.resolve();
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 640 } });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(PAGE);

    // Three nodes (a router, two clients) and two links, and a second update so that rates,
    // differences of two updates' counters, are computed.
    await page.waitForFunction(
      () => document.querySelectorAll("#nodes g.node").length === 3 && document.querySelectorAll("#links g.edge").length === 2,
      null,
      { timeout: 30_000, polling: 100 },
    );
    let seen = await page.evaluate(drawn);
    assert.deepEqual(seen.modes, ["node client", "node client", "node router self"], JSON.stringify(seen));
    assert.equal(seen.rows, 2, JSON.stringify(seen));
    const firstStatus = seen.status;
    await page.waitForFunction((s) => document.getElementById("status").textContent !== s, firstStatus, { timeout: 10_000 });
    const idleSeen = await page.evaluate(drawn);
    const idle = idleSeen.maxRate;
    assert.ok(idle >= 0 && idle < 40, `idle rate ${idle} msg/s`);
    // The router's per-prefix rows, fed by the same admin feed (its @/<id>/node).
    assert.deepEqual(Object.keys(idleSeen.prefixes).sort(), ["demo/**", "other/**"], JSON.stringify(idleSeen));
    const idlePrefix = idleSeen.prefixes["demo/**"];
    assert.ok(idlePrefix >= 0 && idlePrefix < 40, `idle demo/** rate ${idlePrefix} msg/s`);

    // Publish through the gateway until the page shows the traffic (or the test's deadline).
    // A PUT answers after a short wait for a neighbour's access-control refusal, so several
    // run at once: 40 writers, a few hundred samples a second.
    const writer = async () => {
      while (publishing) {
        const r = await fetch(new URL("/api/v1/k/demo/load", PAGE), {
          method: "PUT",
          headers: { "content-type": "text/plain" },
          body: String(puts),
        });
        if (r.status !== 204) throw new Error(`PUT answered ${r.status}: ${await r.text()}`);
        puts++;
      }
    };
    load = Promise.all(Array.from({ length: 40 }, writer)).catch((e) => {
      loadError = e;
    });
    const want = idle + 50;
    try {
      await page.waitForFunction(
        (want) => [...document.querySelectorAll("#links g.edge text.rate")].some((t) => parseFloat(t.textContent) >= want),
        want,
        { timeout: 30_000, polling: 100 },
      );
    } catch (e) {
      throw new Error(`no link reached ${want} msg/s after ${puts} puts (${loadError}): ${JSON.stringify(await page.evaluate(drawn))}: ${e}`);
    }
    // The prefix the puts fall under rises; the other stays idle.
    const wantPrefix = idlePrefix + 50;
    try {
      await page.waitForFunction(
        (want) => [...document.querySelectorAll('#prefixes tr[data-prefix="demo/**"] td.msgs')].some((t) => parseFloat(t.textContent) >= want),
        wantPrefix,
        { timeout: 30_000, polling: 100 },
      );
    } catch (e) {
      throw new Error(`demo/** never reached ${wantPrefix} msg/s after ${puts} puts: ${JSON.stringify(await page.evaluate(drawn))}: ${e}`);
    }
    seen = await page.evaluate(drawn);
    assert.equal(seen.prefixes["other/**"], 0, JSON.stringify(seen));
    assert.equal(seen.nodes, 3, JSON.stringify(seen));
    assert.equal(seen.edges, 2, JSON.stringify(seen));
    assert.match(seen.status, /^3 nodes · 2 links/);
    assert.ok((await page.locator("#links line.link.busy").count()) >= 1, "no link drawn as busy");
    // Both clients subscribe to demo/**: both links carry the samples.
    await page.waitForFunction(
      () => [...document.querySelectorAll("#links g.edge text.rate")].every((t) => parseFloat(t.textContent) >= 20),
      null,
      { timeout: 10_000, polling: 100 },
    );
    assert.equal(loadError, null);
    await page.screenshot({ path: SHOT });
    assert.deepEqual(errors, [], "errors on the page");
    console.log(`idle ${idle} msg/s; loaded ${JSON.stringify(await page.evaluate(drawn))} after ${puts} puts; screenshot ${SHOT}`);
  } finally {
    publishing = false;
    await load;
    await browser.close();
  }
});
