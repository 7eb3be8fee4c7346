//! The `hypha` command line, built for the multi-process tests (needs hypha's `cli` feature,
//! which tests/Cargo.toml enables).

fn main() {
    hypha::cli::main()
}
