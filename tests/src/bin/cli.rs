//! The `hypha` command line, built for the multi-process tests.

fn main() {
    hypha::cli::main()
}
