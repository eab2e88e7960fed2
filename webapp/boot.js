// Starts the page's wasm. A file rather than trunk's inline script, so the Content-Security-Policy
// can forbid inline scripts.
import init from "./webapp.js";
await init({ module_or_path: "./webapp_bg.wasm" });
