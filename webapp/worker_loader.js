// Starts the inference worker. The weights are fetched at once, while the worker's wasm is still
// compiling; the worker uses this response when the model card names the same file (see
// `inference::fetch`), else it fetches what the card names. Same origin only: a relative URL.
self.weightsPrefetch = { file: "model.safetensors", response: fetch("./model.safetensors") };
// A failed prefetch is reported when the worker reads it, not as an unhandled rejection.
self.weightsPrefetch.response.catch(() => {});
importScripts("./wasm_features.js");
const build = pneumoscopeWorkerBuild(new URL(self.location.href).searchParams.get("simd"));
importScripts(`./${build}.js`);
wasm_bindgen(`./${build}_bg.wasm`);
