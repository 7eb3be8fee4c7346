//! Writes memory.x: the netduinoplus2 memory map with the footprint budget as its sizes
//! (FLASH 16 KiB at 0x0800_0000, RAM 4 KiB at 0x2000_0000), so an image that exceeds the
//! budget fails to link ("will not fit in region").
use std::io::Write;

fn main() {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let mut f = std::fs::File::create(out.join("memory.x")).expect("create memory.x");
    // HYPHA_FW_UNBUDGETED=1 links against the board's real sizes (1 MiB, 128 KiB): only to
    // look at an image that does not fit yet (`nm --size-sort`), never in CI.
    let (flash, ram) = match std::env::var("HYPHA_FW_UNBUDGETED").as_deref() {
        Ok("1") => ("1024K", "128K"),
        _ => ("16K", "4K"),
    };
    let text = format!(
        "/* netduinoplus2, capped at the footprint budget */\n\
         MEMORY\n{{\n  FLASH : ORIGIN = 0x08000000, LENGTH = {flash}\n  RAM : ORIGIN = 0x20000000, LENGTH = {ram}\n}}\n"
    );
    f.write_all(text.as_bytes()).expect("write memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=HYPHA_FW_UNBUDGETED");
}
