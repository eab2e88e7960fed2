// Profiler (not a test): where the page's worker spends its time, function by function, from
// V8's sampling profiler in the same headless Chromium the tests use.
//   DIST=target/bench-dist IMAGES=/abs/a.jpeg:/abs/b.jpeg:... [ROUNDS=3] node profile.mjs
//   node --prof-process /tmp/pneumoscope-v8.log | head -40
// Classifies IMAGES ROUNDS times after the first result (heat maps included, as a user gets
// them); the log covers the whole session, model loading too.
import { chromium } from "playwright-core";
import { CHROMIUM, CHROMIUM_ARGS, serve, finishedItems, modelState } from "./harness.mjs";

const IMAGES = (process.env.IMAGES ?? "").split(":").filter(Boolean);
if (!process.env.DIST || IMAGES.length === 0) throw new Error("set DIST and IMAGES (absolute paths)");
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const LOG = process.env.LOG ?? "/tmp/pneumoscope-v8.log";

const server = await serve(process.env.DIST);
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: [...CHROMIUM_ARGS, `--js-flags=--prof --no-logfile-per-isolate --logfile=${LOG}`],
});
const page = await (await browser.newContext()).newPage();
await page.goto(server.origin);
await page.getByTestId("file-input").setInputFiles([IMAGES[0]]);
if ((await modelState(page)) !== "ready") throw new Error("the model did not load");
await finishedItems(page, 1);
for (let round = 1; round <= ROUNDS; round++) {
  await page.getByTestId("file-input").setInputFiles(IMAGES);
  await finishedItems(page, 1 + round * IMAGES.length, 300_000, 50);
}
await browser.close();
await server.close();
console.log(`V8 log: ${LOG}; read it with: node --prof-process ${LOG} | head -40`);
