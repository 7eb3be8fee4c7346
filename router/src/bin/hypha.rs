//! The `hypha` command line: see `hypha --help`.

fn main() {
    hypha::cli::main()
}
