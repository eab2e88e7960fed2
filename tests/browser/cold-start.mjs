// Cold-start benchmark (not a test): page load to model ready and to the first result, fresh
// browser context each time, builds compared in alternating rounds on one browser.
//   VARIANTS=name=DIST[:block],...  (":block" blocks the service worker)
//   IMAGE=radiograph  [ROUNDS=5]  node cold-start.mjs
// Prints each round (with the worker's load stages) and per variant the median.
import { serve, launch, modelState, finishedItems, median } from "./harness.mjs";

const variants = (process.env.VARIANTS ?? "").split(",").filter(Boolean).map((spec) => {
  const [name, rest] = spec.split("=");
  const [dist, block] = rest.split(":");
  return { name, dist, block: block === "block" };
});
const image = process.env.IMAGE;
if (variants.length === 0 || !image) throw new Error("set VARIANTS and IMAGE");
const rounds = Number(process.env.ROUNDS ?? 5);

const browser = await launch();
const results = new Map(variants.map((v) => [v.name, []]));
for (let round = 0; round < rounds; round++) {
  for (const { name, dist, block } of variants) {
    const server = await serve(dist);
    const context = await browser.newContext(block ? { serviceWorkers: "block" } : {});
    const page = await context.newPage();
    const start = performance.now();
    await page.goto(server.origin);
    await page.getByTestId("file-input").setInputFiles([image]);
    if ((await modelState(page)) !== "ready") throw new Error(`${name}: the model did not load`);
    const ready = performance.now() - start;
    await finishedItems(page, 1);
    const first = performance.now() - start;
    const stages = await page.getByTestId("model-status").getAttribute("data-load-stages");
    results.get(name).push({ ready, first });
    console.log(`${name}: ready ${ready.toFixed(0)} ms, first result ${first.toFixed(0)} ms, stages ${stages}`);
    await context.close();
    await server.close();
  }
}
await browser.close();
for (const [name, runs] of results) {
  const firsts = runs.map((r) => r.first);
  console.log(
    `${name}: median ready ${median(runs.map((r) => r.ready)).toFixed(0)} ms, first result ` +
      `${median(firsts).toFixed(0)} ms (min ${Math.min(...firsts).toFixed(0)}, max ${Math.max(...firsts).toFixed(0)})`,
  );
}
