//! The inference worker built with relaxed SIMD (trunk builds it with feature `relaxed-simd`);
//! `worker_loader.js` starts it in browsers that validate relaxed SIMD, `worker` elsewhere.

fn main() {
    webapp::inference::run();
}
