// Browser benchmark (not a test): cold start and time per image in headless Chromium.
//   DIST=target/browser/dist IMAGES=a.jpeg:b.jpeg:... node bench.mjs
// Cold start: page load to the first result, fresh profile (no caches, no service worker).
// Per image: the worker's own timing (decode + preprocess + forward + maps), a second batch.
import { basename } from "node:path";
import { serve, launch, modelState, finishedItems } from "./harness.mjs";

const IMAGES = (process.env.IMAGES ?? "").split(":").filter(Boolean);
if (!process.env.DIST || IMAGES.length === 0) throw new Error("set DIST and IMAGES");
const server = await serve(process.env.DIST);
const browser = await launch();
const page = await (await browser.newContext()).newPage();

const start = performance.now();
await page.goto(server.origin);
await page.getByTestId("file-input").setInputFiles([IMAGES[0]]);
if ((await modelState(page)) !== "ready") throw new Error("the model did not load");
const loaded = performance.now();
await finishedItems(page, 1);
const first = performance.now();

await page.getByTestId("file-input").setInputFiles(IMAGES);
const items = (await finishedItems(page, IMAGES.length + 1)).slice(1);
const times = items.map((i) => i.millis).sort((a, b) => a - b);
const mean = times.reduce((a, b) => a + b, 0) / times.length;
const card = JSON.parse(await (await fetch(`${server.origin}/model.json`)).text());
const crop = card.preprocessing.crop;

console.log(`| measure (headless Chromium ${browser.version()}, ${IMAGES.length} images, ${crop}x${crop}) | ms |`);
console.log("|---|---|");
console.log(`| cold start: page load to model ready (${(card.weights.bytes / 1048576).toFixed(1)} MB weights, localhost) | ${(loaded - start).toFixed(0)} |`);
console.log(`| cold start: page load to first result | ${(first - start).toFixed(0)} |`);
console.log(`| per image, mean (decode + preprocess + forward + maps, in the worker) | ${mean.toFixed(0)} |`);
console.log(`| per image, median | ${times[Math.floor(times.length / 2)].toFixed(0)} |`);
console.log(`| per image, min / max | ${times[0].toFixed(0)} / ${times.at(-1).toFixed(0)} |`);
console.log(`images: ${items.map((i) => basename(i.name)).join(", ")}`);
await browser.close();
await server.close();
