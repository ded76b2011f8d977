//! The `ops` bench with mimalloc as the global allocator (what the `cfg`
//! binary uses); `--serve` answers `scripts/bench-cpu.sh`.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(dead_code)] // the table rows are read by `ops` only
mod ops_common;

fn main() {
    if std::env::args().any(|a| a == "--serve") {
        ops_common::serve();
    }
}
