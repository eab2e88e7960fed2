// Which build of the inference worker this browser runs. Both compute the same results (exact
// int8 sums); `worker_relaxed` uses wasm relaxed SIMD's int8 dot product
// (`i32x4.relaxed_dot_i8x16_i7x16_add_s`), which a browser without relaxed SIMD refuses to
// compile, so it is chosen only where this probe validates. Loaded by worker_loader.js and sw.js.

// A module whose one function computes that dot product of three zero vectors.
const RELAXED_DOT_PROBE = (() => {
  const zeros = [0xfd, 0x0c, ...new Array(16).fill(0)]; // v128.const 0
  const body = [0x00, ...zeros, ...zeros, ...zeros, 0xfd, 0x93, 0x02, 0x1a, 0x0b]; // dot, drop, end
  const code = [0x01, body.length, ...body];
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // types: () -> ()
    0x03, 0x02, 0x01, 0x00, // one function of that type
    0x0a, code.length, ...code,
  ]);
})();

// "worker_relaxed" or "worker" (the file stem of the build's .js and _bg.wasm);
// `requested` "baseline" (the page's `?simd=baseline`) asks for the latter everywhere.
function pneumoscopeWorkerBuild(requested) {
  if (requested === "baseline") {
    return "worker";
  }
  try {
    return WebAssembly.validate(RELAXED_DOT_PROBE) ? "worker_relaxed" : "worker";
  } catch {
    return "worker";
  }
}
