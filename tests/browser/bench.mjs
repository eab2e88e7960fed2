// Browser benchmark (not a test): our page beside onnxruntime-web, same Chromium, same weights.
//   cargo bench -p trainer --bench inference     (writes PEER: model.onnx, inputs, our logits)
//   DIST=target/bench-dist IMAGES=a.jpeg:b.jpeg:... [CROPS=112,144,224] [SIMD=auto,baseline] [PEER=dir] node bench.mjs
// Ours: cold start (page load to the first result, fresh profile) at the card's input size, then
// per image the worker's own timing of everything it does, stage by stage, at each of CROPS (the
// card's preprocessing moved to that size): in a batch (two workers at once), then one image at
// a time, as onnxruntime-web's forward pass is timed. onnxruntime-web: its forward pass alone, one thread
// (SIMD), on the inputs our native preprocessing made, with its logits checked against ours.
// SIMD: our worker build per column, "auto" (the one the browser picks: relaxed SIMD in Chromium)
// and/or "baseline" (the page's `?simd=baseline`), each at every crop, alternating.
// onnxruntime-web is not in package.json (139 MB, benchmark only):
//   (cd tests/browser && npm install --no-save onnxruntime-web@1.30.0)
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { serve, launch, modelState, finishedItems, median, fetchedBeforeServiceWorker } from "./harness.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const IMAGES = (process.env.IMAGES ?? "").split(":").filter(Boolean);
if (!process.env.DIST || IMAGES.length === 0) throw new Error("set DIST and IMAGES");
const DIST = process.env.DIST;
const PEER = process.env.PEER ?? resolve(HERE, "../../target/bench/inference");
const ORT_DIST = join(HERE, "node_modules/onnxruntime-web/dist");
const card = JSON.parse(readFileSync(join(DIST, "model.json"), "utf8"));
const shipped = card.preprocessing.crop;
const CROPS = (process.env.CROPS ?? `${shipped}`).split(",").map(Number);
const BUILDS = (process.env.SIMD ?? "auto").split(",");
const FORWARD = ["stem", "layer1", "layer2", "layer3", "layer4", "head"];

/** The card with its preprocessing moved to `crop`, the resize keeping the card's ratio. */
function cardAt(crop) {
  const moved = structuredClone(card);
  const ratio = card.preprocessing.resize_shorter / card.preprocessing.crop;
  moved.preprocessing.resize_shorter = Math.round(crop * ratio);
  moved.preprocessing.crop = crop;
  return JSON.stringify(moved);
}

/** Waits until `n` results are done and each has its heat map (LayerCAM, computed once no
 * image waits). */
async function heatMapsIn(page, n) {
  await page.waitForFunction(
    (n) => {
      const done = [...document.querySelectorAll("[data-testid=result][data-status=done]")];
      return done.length >= n && done.every((item) => item.dataset.topFineMap);
    },
    n,
    { timeout: 300_000, polling: 10 },
  );
}

/** An item's forward pass, stem to head, from its stage times. */
const forwardMillis = (item) => FORWARD.reduce((sum, s) => sum + (item.stages[s] ?? 0), 0);

async function ours(browser, crop, build) {
  const server = await serve(DIST, { overrides: { "/model.json": cardAt(crop) } });
  const context = await browser.newContext();
  const page = await context.newPage();
  const start = performance.now();
  await page.goto(build === "baseline" ? `${server.origin}/?simd=baseline` : server.origin);
  await page.getByTestId("file-input").setInputFiles([IMAGES[0]]);
  if ((await modelState(page)) !== "ready") throw new Error("the model did not load");
  const ready = performance.now() - start;
  await finishedItems(page, 1);
  const first = performance.now() - start;
  const loadStages = JSON.parse(await page.getByTestId("model-status").getAttribute("data-load-stages"));
  const workers = await page.evaluate(() => Math.min(navigator.hardwareConcurrency, 4));
  const batchStart = performance.now();
  await page.getByTestId("file-input").setInputFiles(IMAGES);
  const items = (await finishedItems(page, IMAGES.length + 1, 300_000, 10)).slice(1);
  const batch = performance.now() - batchStart;
  // The heat maps follow once no image waits (LayerCAM: a second pass and a backward pass).
  const mapsStart = performance.now();
  await heatMapsIn(page, IMAGES.length + 1);
  const maps = performance.now() - mapsStart;
  // Then each image alone, as onnxruntime-web's forward pass is timed: given once the previous
  // image's result and heat map are in, so that no other image, heat map or model load shares
  // the cores (in the batch two workers classify at once, the second loading its model first).
  const alone = [];
  for (const image of IMAGES) {
    const before = IMAGES.length + 1 + alone.length;
    await page.getByTestId("file-input").setInputFiles([image]);
    alone.push((await finishedItems(page, before + 1, 300_000, 10))[before]);
    await heatMapsIn(page, before + 1);
  }
  const failed = [...items, ...alone].filter((i) => i.status !== "done");
  if (failed.length) throw new Error(`not classified: ${failed.map((i) => i.name).join(", ")}`);
  const worker = fetchedBeforeServiceWorker(server).includes("/worker_relaxed_bg.wasm") ? "relaxed" : "baseline";
  const stages = {};
  for (const name of Object.keys(alone[0].stages)) stages[name] = median(alone.map((i) => i.stages[name] ?? 0));
  await context.close();
  await server.close();
  return {
    crop,
    worker,
    ready,
    first,
    loadStages,
    stages,
    perImage: median(items.map((i) => i.millis)),
    workers,
    batch,
    maps,
    forward: median(items.map(forwardMillis)),
    perImageAlone: median(alone.map((i) => i.millis)),
    forwardAlone: median(alone.map(forwardMillis)),
  };
}

const PEER_PAGE = `<!doctype html><meta charset="utf-8"><title>onnxruntime-web peer</title>
<script src="/ort/ort.wasm.min.js"></script>`;

/** onnxruntime-web's forward pass on our preprocessed inputs, one thread, in a page of its own. */
async function peer(browser, crop) {
  const server = await serve(PEER, { mounts: { "/ort/": ORT_DIST }, overrides: { "/index.html": PEER_PAGE } });
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${server.origin}/index.html`);
  const result = await page.evaluate(async (crop) => {
    // .npy: magic, version, header length (u16 in v1, u32 in v2), a header, little-endian f32.
    const npy = async (url) => {
      const buffer = await (await fetch(url)).arrayBuffer();
      const view = new DataView(buffer);
      const v1 = view.getUint8(6) === 1;
      const headerLength = v1 ? view.getUint16(8, true) : view.getUint32(8, true);
      const offset = (v1 ? 10 : 12) + headerLength;
      const header = new TextDecoder().decode(new Uint8Array(buffer, 0, offset));
      const shape = header.match(/shape': \(([^)]*)\)/)[1].split(",").filter((s) => s.trim()).map(Number);
      return { shape, data: new Float32Array(buffer.slice(offset)) };
    };
    /* global ort */
    ort.env.wasm.numThreads = 1;
    ort.env.wasm.wasmPaths = "/ort/";
    const session = await ort.InferenceSession.create("/model.onnx", {
      executionProviders: ["wasm"],
      graphOptimizationLevel: "all",
    });
    const input = await npy(`/input-${crop}.npy`);
    const logits = await npy(`/logits-${crop}.npy`);
    const [n, , , ] = input.shape;
    const per = input.data.length / n;
    const classes = logits.data.length / n;
    const run = (i) =>
      session.run({ image: new ort.Tensor("float32", input.data.subarray(i * per, (i + 1) * per), [1, 3, crop, crop]) });
    let maxDiff = 0;
    for (let i = 0; i < n; i++) {
      const out = (await run(i)).logits.data;
      for (let c = 0; c < classes; c++) maxDiff = Math.max(maxDiff, Math.abs(out[c] - logits.data[i * classes + c]));
    }
    const times = [];
    for (let i = 0; i < n; i++) {
      const t = performance.now();
      await run(i);
      times.push(performance.now() - t);
    }
    times.sort((a, b) => a - b);
    return { median: times[Math.floor(n / 2)], maxDiff, version: ort.env.versions?.web ?? "?" };
  }, crop);
  await context.close();
  await server.close();
  return result;
}

const browser = await launch();
const results = [];
const hasPeer = existsSync(ORT_DIST) && existsSync(join(PEER, "model.onnx"));
for (const crop of CROPS) {
  const peerResult = hasPeer ? await peer(browser, crop) : null;
  for (const build of BUILDS) results.push({ ours: await ours(browser, crop, build), peer: peerResult });
}

const cold = results.find((r) => r.ours.crop === shipped)?.ours;
console.log(`headless Chromium ${browser.version()}, ${IMAGES.length} images, localhost, this machine\n`);
if (cold) {
  console.log(`| cold start at ${shipped}x${shipped} (${(card.weights.bytes / 1048576).toFixed(1)} MB ${card.weights.dtype}) | ms |`);
  console.log("|---|---|");
  for (const [name, ms] of cold.loadStages) console.log(`| - ${name} | ${ms.toFixed(0)} |`);
  console.log(`| page load to model ready | ${cold.ready.toFixed(0)} |`);
  console.log(`| page load to first result | **${cold.first.toFixed(0)}** |\n`);
}
const crops = results.map((r) => `${r.ours.crop}x${r.ours.crop}, ${r.ours.worker}`);
console.log(`| stage in the worker, one image at a time (median ms) | ${crops.join(" | ")} |`);
console.log(`|---|${"---|".repeat(results.length)}`);
for (const name of Object.keys(results[0].ours.stages)) {
  console.log(`| ${name} | ${results.map((r) => (r.ours.stages[name] ?? 0).toFixed(1)).join(" | ")} |`);
}
console.log(`| per image, everything (in the batch) | ${results.map((r) => `**${r.ours.perImage.toFixed(1)}**`).join(" | ")} |`);
console.log(`| per image, everything (one image at a time) | ${results.map((r) => `**${r.ours.perImageAlone.toFixed(1)}**`).join(" | ")} |`);
console.log(`| batch of ${IMAGES.length}, wall (file pick to last result) | ${results.map((r) => r.ours.batch.toFixed(0)).join(" | ")} |`);
console.log(`| - workers / ideal wall (${IMAGES.length} / workers x per image) | ${results.map((r) => `${r.ours.workers} / ${((IMAGES.length / r.ours.workers) * r.ours.perImage).toFixed(0)}`).join(" | ")} |`);
console.log(`| then the batch's heat maps (LayerCAM), wall | ${results.map((r) => r.ours.maps.toFixed(0)).join(" | ")} |`);
console.log(`| - per map and worker (wall x workers / ${IMAGES.length}) | ${results.map((r) => ((r.ours.maps * r.ours.workers) / IMAGES.length).toFixed(0)).join(" | ")} |\n`);
if (!hasPeer) {
  console.log(`no onnxruntime-web column: needs ${ORT_DIST} (npm install --no-save onnxruntime-web@1.30.0)` +
    ` and ${PEER}/model.onnx (cargo bench -p trainer --bench inference)`);
  await browser.close();
  process.exit(0);
}
console.log(`| input, our worker build | ours: everything, one image at a time (forward) | ours: everything in the batch (forward) | onnxruntime-web ${results[0].peer.version}: forward (1 thread, one image at a time) | ours everything / onnxruntime-web: one at a time, in the batch | largest logit difference |`);
console.log("|---|---|---|---|---|---|");
for (const { ours: o, peer: p } of results) {
  console.log(`| ${o.crop}x${o.crop}, ${o.worker} | ${o.perImageAlone.toFixed(1)} ms (${o.forwardAlone.toFixed(1)}) | ${o.perImage.toFixed(1)} ms (${o.forward.toFixed(1)}) | ${p.median.toFixed(1)} ms | **${(o.perImageAlone / p.median).toFixed(2)}x**, ${(o.perImage / p.median).toFixed(2)}x | ${p.maxDiff.toExponential(1)} |`);
}
await browser.close();
