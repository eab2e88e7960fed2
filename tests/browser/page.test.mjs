// The page in a real browser (headless Debian Chromium). Run by scripts/test-browser.sh, which
// builds dist/ with a model and writes `trainer predict --json` for the same files to $EXPECTED.
//
//   DIST       the built page, model included
//   EXPECTED   trainer predict --json output for $IMAGES
//   IMAGES     images, separated by ":": radiographs, then images unlike them (for the gate)
//   DICOM      DICOM files, separated by ":" (trainer predict's results for them are in $EXPECTED)
//   ARTIFACTS  where the screenshot goes
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { basename, join, resolve } from "node:path";
import { tmpdir } from "node:os";
import AxeBuilder from "@axe-core/playwright";
import { serve, launch, modelState, finishedItems, workersReady, fetchedPaths, fetchedBeforeServiceWorker } from "./harness.mjs";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run scripts/test-browser.sh`);
  return value;
};
const DIST = env("DIST");
const IMAGES = env("IMAGES").split(":");
const ARTIFACTS = env("ARTIFACTS");
const DICOM = env("DICOM").split(":");
const expected = JSON.parse(await readFile(env("EXPECTED"), "utf8"));
const card = JSON.parse(await readFile(join(DIST, "model.json"), "utf8"));
const TOLERANCE = 1e-3;

let server, browser, context, page, workers, loadRequests;
const requests = [];
const images = await Promise.all(IMAGES.map((path) => readFile(path)));

// Bad files that must fail on their own while the rest of the batch goes on.
const scratch = join(tmpdir(), `pneumoscope-browser-${process.pid}`);
await mkdir(scratch, { recursive: true });
const bad = {
  "truncated.jpeg": images.find((_, i) => IMAGES[i].endsWith(".jpeg")).subarray(0, 2000),
  "empty.png": Buffer.alloc(0),
  "notes.txt": Buffer.from("not an image at all\n"),
};
for (const [name, bytes] of Object.entries(bad)) await writeFile(join(scratch, name), bytes);

function expectedFor(path) {
  const entry = expected.find((e) => resolve(e.file) === resolve(path));
  assert.ok(entry && entry.probabilities, `trainer predict has no result for ${path}`);
  return card.classes.map((c) => entry.probabilities[c]);
}

function assertClose(actual, wanted, what) {
  assert.equal(actual.length, wanted.length, `${what}: class count`);
  actual.forEach((value, i) =>
    assert.ok(
      Math.abs(value - wanted[i]) <= TOLERANCE,
      `${what}: class ${card.classes[i]} is ${value} in the browser, ${wanted[i]} natively`,
    ),
  );
}

before(async () => {
  server = await serve(DIST);
  browser = await launch();
  context = await browser.newContext();
  // Every request of the page, its worker and its service worker.
  context.on("request", (request) =>
    requests.push({ url: request.url(), method: request.method(), body: request.postDataBuffer() }),
  );
  page = await context.newPage();
  page.on("pageerror", (error) => console.error("page error:", error));
  await page.goto(server.origin);
  assert.equal(await modelState(page), "ready", "the model did not load");
  loadRequests = server.log.map((r) => new URL(r.url, server.origin).pathname);
  // A batch brings one worker per core (at most 4); a single image keeps one.
  workers = await page.evaluate(() => Math.min(navigator.hardwareConcurrency, 4));
});

after(async () => {
  await browser?.close();
  await server?.close();
});

test("the page classifies radiographs exactly like trainer predict, bad files fail alone", async () => {
  const files = [...IMAGES, ...Object.keys(bad).map((name) => join(scratch, name))];
  await page.getByTestId("file-input").setInputFiles(files);
  const items = await finishedItems(page, files.length);
  assert.equal(items.length, files.length);
  let worst = 0;
  // Items appear in the order the files were given (names repeat across class folders).
  for (const [index, path] of IMAGES.entries()) {
    const item = items[index];
    assert.equal(item.name, basename(path));
    assert.equal(item.status, "done", `${path}: ${item.error}`);
    const wanted = expectedFor(path);
    assertClose(item.probabilities, wanted, `${path} (exact)`);
    if (!item.flagged) assertClose(item.shown, wanted, `${path} (as displayed)`);
    item.probabilities.forEach((p, i) => (worst = Math.max(worst, Math.abs(p - wanted[i]))));
  }
  console.log(`largest |browser - native| probability difference: ${worst.toExponential(2)}`);
  // Each class's verdict at the card's operating point, in words, as trainer predict gives it.
  const points = new Set((card.operating_points ?? []).map((p) => p.class));
  let verdicts = 0;
  for (const [index, path] of IMAGES.entries()) {
    if (items[index].flagged) continue;
    const native = expected.find((e) => resolve(e.file) === resolve(path));
    card.classes.forEach((c, i) => {
      const wanted = points.has(c)
        ? native.positive[c] ? "positive at operating point" : "below operating point"
        : null;
      assert.equal(items[index].verdicts[i], wanted, `${path}: ${c} at the operating point`);
      verdicts += wanted === null ? 0 : 1;
    });
  }
  console.log(`operating-point verdicts compared: ${verdicts} (card has ${points.size} points)`);
  // The gate's verdict is the same on both sides, and a flagged image shows the warning instead
  // of a diagnosis.
  const flagged = IMAGES.filter((path, index) => {
    const native = expected.find((e) => resolve(e.file) === resolve(path));
    assert.equal(items[index].flagged, native.in_distribution === false, `${path}: gate verdict`);
    return items[index].flagged;
  });
  assert.ok(flagged.length > 0, "no image was flagged: the warning path went untested");
  console.log(`flagged by the gate: ${flagged.map((p) => basename(p)).join(", ")}`);
  // The pool grew while the batch waited (the first worker may finish a short batch alone); a
  // second batch then runs on every worker, each result says which, and each worker's model
  // gives the first batch's answers.
  await workersReady(page, workers);
  assert.ok(items.every((i) => i.status !== "done" || i.worker !== null), "a result names no worker");
  await page.getByTestId("file-input").setInputFiles(IMAGES);
  const again = (await finishedItems(page, files.length + IMAGES.length)).slice(files.length);
  const used = new Set(again.map((i) => i.worker));
  assert.ok(!used.has(null), "a classified image names no worker");
  assert.equal(used.size, Math.min(workers, IMAGES.length), `workers used: ${[...used]}`);
  for (const [index, item] of again.entries()) {
    assert.deepEqual(item.probabilities, items[index].probabilities, `${item.name}: worker ${item.worker}`);
  }
  console.log(`workers in the pool: ${workers}, used by the second batch: ${used.size}`);
  for (const [offset, name] of Object.keys(bad).entries()) {
    const item = items[IMAGES.length + offset];
    assert.equal(item.name, name);
    assert.equal(item.status, "error", `${name} should have failed`);
    assert.ok(item.error.length > 10, `${name}: the error says why`);
  }
});

test("Chromium runs the relaxed-SIMD worker build; ?simd=baseline the plain one, with the same answers", async () => {
  const relaxed = fetchedBeforeServiceWorker(server);
  assert.ok(
    relaxed.includes("/worker_relaxed_bg.wasm") && !relaxed.includes("/worker_bg.wasm"),
    `the page's workers fetched: ${relaxed.join(" ")}`,
  );
  const mark = server.log.length;
  const fresh = await browser.newContext();
  try {
    const baseline = await fresh.newPage();
    await baseline.goto(`${server.origin}/?simd=baseline`);
    assert.equal(await modelState(baseline), "ready", "the baseline build did not load");
    await baseline.getByTestId("file-input").setInputFiles(IMAGES);
    const items = await finishedItems(baseline, IMAGES.length);
    // The workers may still be fetching their wasm when the service worker registers, so the
    // plain build is looked for in every request since `mark` (the service worker precaches
    // only the browser's own pick, the relaxed build, so only the page asks for the plain one);
    // the relaxed build must not appear before the registration.
    const all = fetchedPaths(server, mark);
    const fetched = fetchedBeforeServiceWorker(server, mark);
    assert.ok(
      all.includes("/worker_bg.wasm") && !fetched.includes("/worker_relaxed_bg.wasm"),
      `with ?simd=baseline the workers fetched: ${all.join(" ")}`,
    );
    for (const [index, path] of IMAGES.entries()) {
      assert.equal(items[index].status, "done", `${path}: ${items[index].error}`);
      assertClose(items[index].probabilities, expectedFor(path), `${path} (baseline build)`);
    }
  } finally {
    await fresh.close();
  }
});

/** Waits for the top class's heat map of every classified image: the workers compute them
 * apart from the classification, once no image waits. */
async function heatMapsArrived() {
  await page.waitForFunction(
    (n) => {
      const done = [...document.querySelectorAll("[data-testid=result][data-status=done]")];
      return done.length >= n && done.every((item) => item.dataset.topFineMap);
    },
    IMAGES.length,
    { timeout: 120_000, polling: 200 },
  );
}

test("a heat map is drawn over each classified image", async () => {
  await heatMapsArrived();
  const painted = await page.$$eval("[data-testid=heatmap]", (canvases) =>
    canvases.map((canvas) => {
      const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
      let alpha = 0;
      for (let i = 3; i < data.length; i += 4) alpha += data[i];
      return { alpha, visible: getComputedStyle(canvas).display !== "none" };
    }),
  );
  const unflagged = (await finishedItems(page, IMAGES.length)).filter((i) => i.status === "done" && !i.flagged);
  assert.equal(painted.length, unflagged.length);
  for (const canvas of painted) {
    assert.ok(canvas.visible, "heat map hidden");
    assert.ok(canvas.alpha > 0, "heat map is blank");
  }
  await page.getByTestId("heatmap-toggle").uncheck();
  const hidden = await page.$$eval("[data-testid=heatmap]", (c) =>
    c.every((canvas) => getComputedStyle(canvas).display === "none"),
  );
  assert.ok(hidden, "the toggle hides the heat maps");
  await page.getByTestId("heatmap-toggle").check();
});

test("every image gets its fine heat map (LayerCAM on layer2), equal to trainer predict's", async () => {
  await heatMapsArrived();
  const items = (await finishedItems(page, IMAGES.length)).slice(0, IMAGES.length);
  const side = card.preprocessing.crop / 8;
  assert.ok(side >= 14, `the fine map is ${side}x${side}`);
  let worst = 0;
  let sum = 0;
  let count = 0;
  for (const [index, path] of IMAGES.entries()) {
    const native = expected.find((e) => resolve(e.file) === resolve(path));
    const [width, height, values] = items[index].topFineMap;
    assert.deepEqual([width, height], [side, side], `${path}: fine map size`);
    assert.deepEqual([native.fine_map_width, native.fine_map_height], [side, side], `${path}: native size`);
    values.forEach((v, i) => {
      const diff = Math.abs(v - native.top_fine_map[i]);
      worst = Math.max(worst, diff);
      sum += diff;
      count += 1;
    });
  }
  // A gradient map crosses ReLU boundaries, where the page's and native's different summation
  // orders can flip a unit that sits at zero: allowed up to 1e-2 anywhere (2.5 of the colour
  // scale's 255 steps), and 1e-3 on average.
  assert.ok(worst <= 1e-2, `fine maps differ by up to ${worst}`);
  assert.ok(sum / count <= 1e-3, `fine maps differ by ${sum / count} on average`);
  console.log(`fine heat map: ${side}x${side}, |browser - native| largest ${worst.toExponential(2)}, mean ${(sum / count).toExponential(2)}`);
  // The thumbnails draw it (those whose heat map shows: the gate's flagged images hide theirs).
  const sizes = await page.$$eval("[data-testid=heatmap]", (c) => c.map((canvas) => canvas.dataset.mapSize));
  assert.ok(sizes.every((s) => s === `${side}x${side}`), `drawn: ${sizes}`);
  // In the viewer, another class's fine map is asked for at once and replaces the coarse one.
  // The second image (the first stays unrevealed for the next test), revealed if the gate flagged it.
  const target = page.getByTestId("result").nth(1);
  const reveal = target.getByRole("button", { name: "Show probabilities anyway" });
  if (await reveal.count()) await reveal.click();
  await target.getByTestId("open-viewer").click();
  const legend = page.getByTestId("viewer-map-method");
  await legend.filter({ hasText: `LayerCAM on layer2, ${side}x${side}` }).waitFor();
  const chooser = page.getByTestId("viewer-class");
  const shownClass = Number(await chooser.inputValue());
  const other = (shownClass + 1) % card.classes.length;
  await chooser.selectOption(String(other));
  await page.waitForFunction(
    (other) =>
      document.querySelector("[data-testid=viewer-class]").value === String(other) &&
      document.querySelector("[data-testid=viewer-map-method]").textContent.includes("LayerCAM on layer2"),
    other,
    { timeout: 60_000 },
  );
  await chooser.selectOption(String(shownClass));
  await page.getByTestId("viewer").press("Escape");
  await page.getByTestId("viewer").waitFor({ state: "detached" });
});

test("a flagged image hides its diagnosis until asked", async () => {
  const item = page.locator("[data-testid=result]", { has: page.getByTestId("ood-warning") }).first();
  await item.waitFor();
  assert.equal(await item.getByTestId("top-class").count(), 0, "no diagnosis shown");
  assert.equal(await item.getByTestId("probability").count(), 0, "probabilities hidden");
  await item.getByRole("button", { name: "Show probabilities anyway" }).click();
  assert.equal(await item.getByTestId("probability").count(), card.classes.length);
  await item.getByRole("button", { name: "Hide probabilities" }).click();
  assert.equal(await item.getByTestId("probability").count(), 0);
});

test("each answer shows its track record on the card's largest evaluation; a flagged image none", async () => {
  // The rule of shared/src/track_record.rs, computed here from the card on its own: the largest
  // evaluation of images as they are that has the class, and that class's column of its confusion.
  const images = (e) => e.report.confusion.flat().reduce((a, b) => a + b, 0);
  const expectedRecord = (cls) => {
    const sets = card.evaluations.filter((e) => (e.zoom ?? 1) === 1 && e.report.labels.includes(cls));
    const set = sets.reduce((best, e) => (best && images(best) >= images(e) ? best : e), null);
    const column = set.report.labels.indexOf(cls);
    const counts = set.report.confusion.map((row) => row[column]);
    const answers = counts.reduce((a, b) => a + b, 0);
    const wrong = set.report.labels.filter((label, i) => i !== column && counts[i] > 0);
    return {
      start: `Track record: On ${set.name}: ${counts[column]} of ${answers} ${cls} answers were right (`,
      wrong: wrong.map((label) => `${counts[set.report.labels.indexOf(label)]} ${label}`),
    };
  };
  const items = (await finishedItems(page, IMAGES.length)).filter((i) => i.status === "done");
  let compared = 0;
  for (const item of items) {
    if (item.flagged) {
      assert.equal(item.trackRecord, null, `${item.name}: a flagged image gets no track record`);
      continue;
    }
    const top = item.probabilities.indexOf(Math.max(...item.probabilities));
    const wanted = expectedRecord(card.classes[top]);
    assert.ok(item.trackRecord?.startsWith(wanted.start), `${item.name}: ${item.trackRecord}`);
    for (const part of wanted.wrong) assert.ok(item.trackRecord.includes(part), `${item.name}: ${part}`);
    compared += 1;
  }
  assert.ok(compared > 0, "no answer shown to compare");
  console.log(`track records compared: ${compared}`);
});

test("a file dropped on the page, or pasted, is classified too", async () => {
  const before = await page.locator("[data-testid=result]").count();
  const bytes = [...images[0]];
  const names = [`dropped-${basename(IMAGES[0])}`, `pasted-${basename(IMAGES[0])}`];
  await page.evaluate(
    ({ bytes, names: [dropped, pasted] }) => {
      const transfer = (name) => {
        const data = new DataTransfer();
        data.items.add(new File([new Uint8Array(bytes)], name, { type: "image/jpeg" }));
        return data;
      };
      document
        .querySelector(".drop-zone")
        .dispatchEvent(new DragEvent("drop", { dataTransfer: transfer(dropped), bubbles: true, cancelable: true }));
      window.dispatchEvent(new ClipboardEvent("paste", { clipboardData: transfer(pasted), cancelable: true }));
    },
    { bytes, names },
  );
  const items = await finishedItems(page, before + 2);
  for (const name of names) {
    const item = items.find((i) => i.name === name);
    assert.ok(item, `${name} was not added`);
    assert.equal(item.status, "done", item.error);
    assertClose(item.probabilities, expectedFor(IMAGES[0]), name);
  }
});

test("the model card lists what the gate was checked on, in words", async () => {
  const rejection = card.ood_gate?.rejection ?? [];
  const shown = await page.locator(".gate-rejection li").allTextContents();
  // The percentage is Rust's rounding; the counts say the same.
  const wanted = rejection.map((r) => `${r.description ?? r.kind}: flags ${r.flagged} of ${r.total} (`);
  assert.deepEqual(
    shown.map((text) => text.slice(0, text.lastIndexOf("(") + 1)),
    wanted,
  );
  console.log(`gate checks on the card: ${shown.length}`);
});

test("the model card states the network's input as the card's preprocessing has it", async () => {
  const input = await page.getByTestId("input").textContent();
  const p = card.preprocessing;
  assert.ok(input.includes(`${p.resize_shorter} pixels`) && input.includes(`${p.crop}x${p.crop}`), input);
  assert.equal(input.includes("histogram-equalised"), Boolean(p.equalize), input);
});

test("the model card shows each evaluation per source and age group", async () => {
  const withGroups = (card.evaluations ?? []).filter((e) => (e.groups ?? []).length > 1);
  const tables = page.getByTestId("evaluation-groups");
  assert.equal(await tables.count(), withGroups.length);
  for (const [index, evaluation] of withGroups.entries()) {
    const rows = await tables.nth(index).locator("tbody tr").allTextContents();
    assert.equal(rows.length, evaluation.groups.length, evaluation.name);
    for (const [row, group] of evaluation.groups.entries()) {
      assert.ok(rows[row].includes(group.name), `${evaluation.name}: ${rows[row]}`);
      assert.ok(rows[row].includes(group.report.accuracy.toFixed(3)), `${evaluation.name}: ${rows[row]}`);
    }
  }
  console.log(`evaluations with per-source tables: ${withGroups.length}`);
});

test("the model card says which evaluations are framing checks, and how each reframed the images", async () => {
  const checks = (card.evaluations ?? []).filter((e) => e.zoom !== undefined && e.zoom !== 1);
  assert.ok(checks.length >= 2, "the shipped card records framing checks, wider and tighter");
  const evaluations = page.getByTestId("evaluation");
  assert.equal(await evaluations.count(), card.evaluations.length);
  for (const [index, evaluation] of card.evaluations.entries()) {
    const framing = evaluations.nth(index).getByTestId("framing-check");
    const isCheck = checks.includes(evaluation);
    assert.equal(await framing.count(), isCheck ? 1 : 0, evaluation.name);
    if (isCheck) {
      const text = await framing.textContent();
      assert.ok(text.includes(`${evaluation.zoom}x`), `${evaluation.name}: ${text}`);
      assert.ok(text.includes(evaluation.zoom < 1 ? "black margin" : "enlarged"), text);
    }
  }
});

test("DICOM files, named or not, dropped or picked, read as trainer predict reads them", async () => {
  const before = await page.locator("[data-testid=result]").count();
  const [first, ...rest] = DICOM;
  const dicom = await Promise.all(DICOM.map((path) => readFile(path)));
  const truncated = dicom[0].subarray(0, Math.floor(dicom[0].length / 2));
  // The first without an extension and with no type, as a PACS export often is, and a
  // truncated copy: both dropped. The others through the file picker.
  const dropped = ["radiograph-without-extension", "truncated.dcm"];
  await page.evaluate(
    ({ files }) => {
      const data = new DataTransfer();
      for (const [name, bytes] of files) data.items.add(new File([new Uint8Array(bytes)], name));
      document
        .querySelector(".drop-zone")
        .dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
    },
    { files: [[dropped[0], [...dicom[0]]], [dropped[1], [...truncated]]] },
  );
  await page.getByTestId("file-input").setInputFiles(rest);
  const items = await finishedItems(page, before + 2 + rest.length);
  const named = [[dropped[0], first], ...rest.map((path) => [basename(path), path])];
  for (const [name, path] of named) {
    const item = items.find((i) => i.name === name);
    assert.ok(item, `${name} was not added`);
    assert.equal(item.status, "done", `${name}: ${item.error}`);
    assertClose(item.probabilities, expectedFor(path), name);
    const result = page.locator(`[data-testid=result][data-name="${name}"]`);
    // Shown through the worker's rendering (the browser cannot show DICOM), with how it was read.
    const src = await result.locator("img").getAttribute("src");
    assert.ok(src.startsWith("data:image/png;base64,"), `${name}: the image shown is ${src.slice(0, 40)}`);
    const info = await result.getByTestId("dicom-info").textContent();
    assert.match(info, /DICOM/);
    assert.match(info, /Explicit VR Little Endian|JPEG Lossless/);
  }
  const mono1 = await page.locator(`[data-testid=result][data-name="${dropped[0]}"]`).getByTestId("dicom-info").textContent();
  assert.match(mono1, /MONOCHROME1 \(inverted/);
  const broken = items.find((i) => i.name === dropped[1]);
  assert.equal(broken.status, "error");
  assert.match(broken.error, /DICOM/);
  // The fixtures name a test patient; the page must show neither name nor id.
  const text = await page.locator("body").innerText();
  assert.ok(!text.includes("NOT-SHOWN"), "the page shows the DICOM patient's name or id");
});

test("the viewer: opened by click and keyboard, window/level redraws, zoom, previous/next", async () => {
  const viewer = page.getByTestId("viewer");
  const image = page.getByTestId("viewer-image");
  // Mean red value and size of what the viewer's canvas holds.
  const drawn = () =>
    image.evaluate((canvas) => {
      const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
      let sum = 0;
      for (let i = 0; i < data.length; i += 4) sum += data[i];
      return { width: canvas.width, height: canvas.height, mean: sum / (data.length / 4) };
    });
  const opener = page.getByTestId("open-viewer").first();
  await opener.click();
  await viewer.waitFor();
  await page.waitForFunction(() => document.querySelector("[data-testid=viewer-image]")?.width > 0);
  const first = await page.getByTestId("viewer-name").textContent();
  const before = await drawn();
  assert.ok(before.width > 0 && before.height > 0);
  assert.equal(await page.getByTestId("window-level").textContent(), "window 1.00, level 0.50");

  // Window/level by drag: a narrower, darker window changes the pixels drawn; reset restores them.
  const stage = await page.locator(".viewer-stage").boundingBox();
  const [cx, cy] = [stage.x + stage.width / 2, stage.y + stage.height / 2];
  await page.mouse.move(cx, cy);
  await page.mouse.down();
  await page.mouse.move(cx - 150, cy + 60, { steps: 5 });
  await page.mouse.up();
  const windowed = await drawn();
  assert.notEqual(await page.getByTestId("window-level").textContent(), "window 1.00, level 0.50");
  assert.ok(Math.abs(windowed.mean - before.mean) > 1, `${windowed.mean} vs ${before.mean}`);
  await page.getByTestId("window-reset").click();
  assert.equal((await drawn()).mean, before.mean);
  // ... and by keyboard.
  await viewer.press("]");
  assert.notEqual(await page.getByTestId("window-level").textContent(), "window 1.00, level 0.50");
  await viewer.press("r");

  // Zoom by keyboard, the crop outline shown, the heat map's colour scale in words.
  await viewer.press("+");
  const transform = await page.locator(".viewer-frame").evaluate((f) => f.style.transform);
  assert.ok(transform.includes("scale(1.25)"), transform);
  assert.equal(await page.locator(".crop-outline").count(), 1);
  assert.ok((await page.locator(".viewer-legend").textContent()).includes("not where disease is"));
  await viewer.press("0");
  await mkdir(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, "viewer.png") });

  // Previous/next through the batch, by key and by button.
  await viewer.press("ArrowRight");
  const second = await page.getByTestId("viewer-name").textContent();
  assert.notEqual(second, first);
  await page.getByTestId("viewer-previous").click();
  assert.equal(await page.getByTestId("viewer-name").textContent(), first);

  // Escape closes; Enter on a focused thumbnail opens it again; the close button closes.
  await viewer.press("Escape");
  assert.equal(await viewer.count(), 0);
  await opener.focus();
  await page.keyboard.press("Enter");
  await viewer.waitFor();
  assert.equal(await page.getByTestId("viewer-name").textContent(), first);
  await page.getByTestId("viewer-close").click();
  assert.equal(await viewer.count(), 0);
});

test("Save report writes the shared PDF report in the browser, per image and for the batch", async () => {
  const before = requests.length;
  const item = page.locator("[data-testid=result]").first();
  const name = await item.getAttribute("data-name");
  const probabilities = JSON.parse(await item.getAttribute("data-probabilities"));
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    item.getByTestId("save-report").click(),
  ]);
  assert.equal(download.suggestedFilename(), `${name.replace(/\.[^.]+$/, "")}-report.pdf`);
  const pdf = await readFile(await download.path());
  const text = pdf.toString("latin1");
  assert.ok(text.startsWith("%PDF-"), "a PDF");
  for (const needle of [
    `Weights SHA-256: ${card.weights.sha256}`,
    "A research tool, not a diagnostic device",
    `File: ${name}`,
    `Model: ${card.name}`,
    "Date: 20",
    "/DCTDecode",
  ]) {
    assert.ok(text.includes(needle), `the report should say ${needle}`);
  }
  // It says which heat map its picture carries: the page's, the fine one, or none for an image
  // the gate flagged (every image, with the random-weight test model).
  if (await item.getByTestId("ood-warning").count()) {
    assert.match(text, /Heat map: not shown \(the out-of-distribution gate flagged the image\)/);
  } else {
    assert.match(text, /Heat map: LayerCAM on layer2, \d+x\d+ for /, "the report names its heat map");
  }
  // The probabilities it states are the page's, to the 0.1% it prints.
  card.classes.forEach((c, i) => {
    const match = text.match(new RegExp(`  ${c}: ([0-9.]+)%`));
    assert.ok(match, `${c}'s probability is in the report`);
    assert.ok(Math.abs(Number(match[1]) - probabilities[i] * 100) <= 0.051, `${c}: ${match[1]}%`);
  });
  await mkdir(ARTIFACTS, { recursive: true });
  await writeFile(join(ARTIFACTS, "report.pdf"), pdf);

  const [batch] = await Promise.all([
    page.waitForEvent("download"),
    page.getByTestId("save-batch-report").click(),
  ]);
  const batchText = (await readFile(await batch.path())).toString("latin1");
  const done = await page.locator("[data-testid=result][data-status=done]").count();
  assert.equal((batchText.match(/\/Type \/Page\n/g) ?? []).length, done, "one page per classified image");
  // Nothing was fetched to make them (blob: links are the page's own).
  const fetched = requests.slice(before).filter((r) => !r.url.startsWith("blob:"));
  assert.deepEqual(fetched.map((r) => r.url), []);
  console.log(`report: ${pdf.length} bytes for one image, batch of ${done} pages`);
});

test("a report that cannot be made says why on the page", async () => {
  const tab = await context.newPage();
  await tab.goto(server.origin);
  assert.equal(await modelState(tab), "ready");
  await tab.getByTestId("save-batch-report").click();
  const error = tab.getByTestId("report-error");
  await error.waitFor();
  assert.match(await error.textContent(), /could not be saved: no classified image/);
  await tab.close();
});

test("axe-core finds no serious or critical accessibility violation, on the page and in the viewer", async () => {
  for (const state of ["page with results", "viewer open"]) {
    if (state === "viewer open") {
      await page.getByTestId("open-viewer").first().click();
      await page.getByTestId("viewer").waitFor();
    }
    const results = await new AxeBuilder({ page }).analyze();
    const serious = results.violations.filter((v) => ["serious", "critical"].includes(v.impact));
    assert.deepEqual(
      serious.map((v) => `${v.id} (${v.impact}): ${v.help}, ${v.nodes.map((n) => n.target.join(" ")).join("; ")}`),
      [],
      state,
    );
    console.log(
      `axe-core, ${state}: ${results.passes.length} rules pass, ${results.violations.length} minor or moderate: ${results.violations.map((v) => v.id).join(", ") || "none"}`,
    );
  }
  await page.getByTestId("viewer-close").click();
});

test("the screenshot is kept", async () => {
  await mkdir(ARTIFACTS, { recursive: true });
  const path = join(ARTIFACTS, "page.png");
  await page.screenshot({ path, fullPage: true });
  assert.ok((await readFile(path)).length > 10_000, "screenshot written");
});

test("every request goes to the page's origin and carries no body", async () => {
  assert.ok(requests.length > 5, "requests were recorded");
  const foreign = requests.filter((r) => new URL(r.url).origin !== server.origin);
  assert.deepEqual(foreign, [], "requests to another origin");
  const withBody = requests.filter((r) => r.method !== "GET" || (r.body && r.body.length > 0));
  assert.deepEqual(withBody, [], "requests that send data");
  // The server's own log agrees: nothing arrived with a body, and no image bytes in any URL.
  assert.ok(server.log.every((r) => r.bodyBytes === 0 && r.method === "GET"));
  const imageNames = IMAGES.map((p) => basename(p));
  assert.ok(server.log.every((r) => !imageNames.some((n) => r.url.includes(n))));
  // And the Content-Security-Policy would stop a request elsewhere if code ever tried one.
  const violated = await page.evaluate(
    () =>
      new Promise((done) => {
        document.addEventListener("securitypolicyviolation", (e) => done(e.effectiveDirective), { once: true });
        fetch("https://example.invalid/upload", { method: "POST", body: "x" }).catch(() => {});
        setTimeout(() => done(null), 5000);
      }),
  );
  assert.equal(violated, "connect-src", "the page's CSP does not block other origins");
});

test("the first worker downloads the weights once, from before its wasm has compiled", async () => {
  // The service worker is registered once the model is ready; its install fetches every file again.
  const firstLoad = loadRequests.slice(0, loadRequests.indexOf("/sw.js"));
  const listed = `${firstLoad.join(" ")} (then ${loadRequests.slice(firstLoad.length).join(" ")})`;
  assert.ok(firstLoad.length > 0, `no service worker registered: ${listed}`);
  const weights = firstLoad.filter((path) => path === "/model.safetensors");
  assert.equal(weights.length, 1, `weights requested ${weights.length} times: ${listed}`);
  // The card is asked for by the compiled worker; the weights were already on their way.
  const order = (path) => firstLoad.indexOf(path);
  assert.ok(order("/model.json") >= 0 && order("/worker_relaxed_bg.wasm") >= 0, listed);
  assert.ok(order("/model.safetensors") < order("/worker_relaxed_bg.wasm"), listed);
});

test("altered or missing weights are refused with a clear message", async () => {
  // A fresh context has no service worker: the routes below answer instead of the server.
  const fresh = await browser.newContext();
  const original = await readFile(join(DIST, "model.safetensors"));
  const altered = Buffer.from(original);
  altered[altered.length - 1] ^= 0xff;
  for (const [label, reply, message] of [
    ["altered", (route) => route.fulfill({ body: altered }), /SHA-256/],
    ["missing", (route) => route.fulfill({ status: 404, body: "not found" }), /missing|404/],
  ]) {
    const tab = await fresh.newPage();
    await tab.route("**/model.safetensors", reply);
    await tab.goto(server.origin);
    assert.equal(await modelState(tab), "error", `${label} weights were accepted`);
    const text = await tab.getByTestId("model-status").textContent();
    assert.match(text, message, `${label}: ${text}`);
    // An image given now fails at once, saying why, instead of waiting for a model.
    await tab.getByTestId("file-input").setInputFiles([IMAGES[0]]);
    const [item] = await finishedItems(tab, 1);
    assert.equal(item.status, "error", `${label}: the image was not refused`);
    assert.match(item.error, /no model to classify with/, `${label}: ${item.error}`);
    await tab.close();
  }
  await fresh.close();
});

// Last: it stops the server.
test("with the network off, a reload still classifies (service worker)", async () => {
  await page.evaluate(async () => {
    const registration = await navigator.serviceWorker.ready;
    // Wait until the install step has put everything in the cache.
    while (!registration.active || registration.active.state !== "activated") {
      await new Promise((ok) => setTimeout(ok, 100));
    }
  });
  // Network off twice over: the browser is offline and the server is gone (the browser's own
  // service-worker update check ignores the offline emulation).
  await context.setOffline(true);
  await server.close();
  server = null;
  await page.reload();
  assert.equal(await modelState(page), "ready", "the model did not load offline");
  await page.getByTestId("file-input").setInputFiles([IMAGES[1]]);
  const [item] = await finishedItems(page, 1);
  assert.equal(item.status, "done", item.error);
  assertClose(item.probabilities, expectedFor(IMAGES[1]), "offline");
});
