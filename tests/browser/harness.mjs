// Shared by the browser test and the browser benchmark: serve dist/ on localhost and drive
// Debian's Chromium (never a downloaded browser) through playwright-core.
import { createServer } from "node:http";
import { readFile, stat } from "node:fs/promises";
import { extname, join, normalize, resolve } from "node:path";
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
];

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".mjs": "text/javascript",
  ".wasm": "application/wasm",
  ".css": "text/css",
  ".json": "application/json",
  ".safetensors": "application/octet-stream",
  ".png": "image/png",
};

/**
 * A static file server for `root` on 127.0.0.1 and a free port; it logs every request.
 * `mounts` serves other folders under URL prefixes ({"/ort/": dir}); `overrides` answers single
 * paths with given bytes ({"/model.json": text}).
 */
export async function serve(root, { mounts = {}, overrides = {} } = {}) {
  const base = resolve(root);
  const log = [];
  const server = createServer(async (request, response) => {
    const chunks = [];
    for await (const chunk of request) chunks.push(chunk);
    log.push({ method: request.method, url: request.url, bodyBytes: Buffer.concat(chunks).length });
    const path = decodeURIComponent(new URL(request.url, "http://x").pathname);
    if (path in overrides) {
      const body = Buffer.from(overrides[path]);
      response.writeHead(200, { "content-type": TYPES[extname(path)] ?? "application/octet-stream", "content-length": body.length, "cache-control": "no-cache" });
      response.end(body);
      return;
    }
    const mount = Object.keys(mounts).find((prefix) => path.startsWith(prefix));
    const dir = mount ? resolve(mounts[mount]) : base;
    const relative = mount ? path.slice(mount.length) : path;
    let file = normalize(join(dir, relative === "/" ? "index.html" : relative));
    if (!file.startsWith(dir)) {
      response.writeHead(403).end();
      return;
    }
    try {
      if ((await stat(file)).isDirectory()) file = join(file, "index.html");
      const body = await readFile(file);
      response.writeHead(200, {
        "content-type": TYPES[extname(file)] ?? "application/octet-stream",
        "content-length": body.length,
        "cache-control": "no-cache",
      });
      response.end(body);
    } catch {
      response.writeHead(404, { "content-type": "text/plain" }).end("not found");
    }
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  const origin = `http://127.0.0.1:${server.address().port}`;
  const close = () =>
    new Promise((ok) => {
      server.close(ok);
      server.closeAllConnections();
    });
  return { origin, log, close };
}

export async function launch() {
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
}

/** Waits until `count` workers hold the model (the first loads alone, the others after it). */
export async function workersReady(page, count, timeout = 180_000) {
  await page.locator(`[data-testid=model-status][data-workers="${count}"]`).waitFor({ timeout });
}

/** Waits until the model card is loaded (or failed) and returns the status element's state. */
export async function modelState(page, timeout = 180_000) {
  const status = page.getByTestId("model-status");
  await status.and(page.locator("[data-state=ready], [data-state=error]")).waitFor({ timeout });
  return status.getAttribute("data-state");
}

/** Waits until every result item is finished and returns them in page order. */
export async function finishedItems(page, count, timeout = 300_000, polling = 200) {
  await page.waitForFunction(
    (n) => {
      const items = [...document.querySelectorAll("[data-testid=result]")];
      return items.length >= n && items.every((i) => ["done", "error"].includes(i.dataset.status));
    },
    count,
    { timeout, polling },
  );
  return page.$$eval("[data-testid=result]", (items) =>
    items.map((item) => ({
      name: item.dataset.name,
      status: item.dataset.status,
      probabilities: item.dataset.probabilities ? JSON.parse(item.dataset.probabilities) : null,
      // [width, height, values] of the top class's fine map, once the worker has sent it.
      topFineMap: item.dataset.topFineMap ? JSON.parse(item.dataset.topFineMap) : null,
      millis: item.dataset.millis ? Number(item.dataset.millis) : null,
      worker: item.dataset.worker === undefined ? null : Number(item.dataset.worker),
      stages: item.dataset.stages ? Object.fromEntries(JSON.parse(item.dataset.stages)) : null,
      shown: [...item.querySelectorAll("[data-testid=probability] .value")].map((v) =>
        Number(v.textContent.replace("%", "")) / 100,
      ),
      error: item.querySelector("[data-testid=item-error]")?.textContent ?? null,
      flagged: item.querySelector("[data-testid=ood-warning]") !== null,
      trackRecord: item.querySelector("[data-testid=track-record]")?.textContent ?? null,
      // Per class as displayed: the words at the card's operating point, or null.
      verdicts: [...item.querySelectorAll("[data-testid=probability]")].map(
        (bar) => bar.querySelector("[data-testid=operating-verdict]")?.textContent ?? null,
      ),
    })),
  );
}

/** The paths `server` was asked for since its log held `from` entries. */
export function fetchedPaths(server, from = 0) {
  return server.log.slice(from).map((r) => new URL(r.url, server.origin).pathname);
}

/** `fetchedPaths` up to the service worker's registration (whose install fetches every file
 * again, and caches the worker build the browser itself would pick). */
export function fetchedBeforeServiceWorker(server, from = 0) {
  const paths = fetchedPaths(server, from);
  const sw = paths.indexOf("/sw.js");
  return sw < 0 ? paths : paths.slice(0, sw);
}

/** The middle value (the upper one of an even count), for the benchmarks' tables. */
export const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
