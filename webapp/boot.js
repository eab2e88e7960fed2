// Starts the page's wasm. A file rather than trunk's inline script, so the Content-Security-Policy
// can forbid inline scripts.
import init from "./webapp.js";

// Every inference worker's script (`page::worker_url`). `?simd=baseline` on the page's URL
// passes on to it: the worker build without relaxed SIMD, even where the browser has it
// (benchmarks and tests compare the two builds).
globalThis.pneumoscopeWorkerUrl =
  new URLSearchParams(location.search).get("simd") === "baseline"
    ? "./worker_loader.js?simd=baseline"
    : "./worker_loader.js";

// The first inference worker starts now, so its wasm compiles and the weights download while the
// page's own wasm does; what it says before the page listens is kept for the page
// (`page::take_early_worker`).
try {
  const worker = new Worker(globalThis.pneumoscopeWorkerUrl);
  const early = { worker, messages: [], errors: [] };
  worker.onmessage = (event) => early.messages.push(event);
  worker.onerror = (event) => early.errors.push(event);
  globalThis.pneumoscopeEarlyWorker = early;
} catch {
  // The page starts its worker itself and reports why it cannot.
}

await init({ module_or_path: "./webapp_bg.wasm" });
