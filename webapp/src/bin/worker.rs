//! The inference worker's entry point; trunk builds it as a web worker beside the page.

fn main() {
    webapp::inference::run();
}
