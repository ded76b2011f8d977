//! Every library operator on the CPU evaluator (system allocator), at three
//! sizes, f32 and bf16, beside the memcpy floor of its bytes. With `--serve`
//! it answers `scripts/bench-cpu.sh` instead (see `ops_common::serve`).

mod ops_common;

use cfg_core::DType;
use criterion::{BenchmarkId, Criterion, Throughput};
use ops_common::{floor_bytes, program, Row, OPS, SIZES};

fn bench(c: &mut Criterion) {
    for &n in SIZES {
        for dtype in [DType::F32, DType::BF16] {
            let mut group = c.benchmark_group(format!("ops_{dtype}_{n}"));
            group.sample_size(10);
            for op in OPS {
                let branches = program(op).0.branches.len();
                group.throughput(Throughput::Bytes(floor_bytes(op, branches, n, dtype.size()) as u64));
                let mut row = Row::new(op, dtype, n);
                group.bench_function(BenchmarkId::new(*op, "evaluate_into"), |b| b.iter(|| row.run_into()));
                group.bench_function(BenchmarkId::new(*op, "memcpy_floor"), |b| b.iter(|| row.copy(true)));
            }
            group.finish();
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--serve") {
        return ops_common::serve();
    }
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
