//! The `hypha` command line: see `hypha --help` (feature `cli`, on by default).

fn main() {
    hypha::cli::main()
}
