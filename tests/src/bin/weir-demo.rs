//! `cargo xtask demo` runs this after `cargo xtask setup` (see weir_tests::demo).
fn main() -> anyhow::Result<()> {
    weir_tests::demo::run()
}
