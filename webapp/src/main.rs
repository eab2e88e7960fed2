//! The page's entry point.

fn main() {
    webapp::app::mount();
}
