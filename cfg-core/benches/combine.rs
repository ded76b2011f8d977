//! CPU linear combine of 2 and 4 bf16 branches over 4.8M elements, side by side
//! with a memcpy of the same bytes (single-threaded and rayon-parallel).
//!
//! Throughput counts the minimum bytes each moves: a combine of N branches reads
//! N tensors and writes one; a copy of B bytes reads B and writes B.

use cfg_core::cpu::combine_into;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use rayon::prelude::*;
use std::hint::black_box;

const ELEMENTS: usize = 4_800_000;

fn inputs(n: usize) -> Vec<Vec<bf16>> {
    (0..n)
        .map(|b| (0..ELEMENTS).map(|i| bf16::from_f32(((i * 7 + b * 13) % 1000) as f32 / 500.0 - 1.0)).collect())
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("combine_bf16_4.8M");
    group.sample_size(20);
    for branches in [2usize, 4] {
        let xs = inputs(branches);
        let weights = [7.5f32, -6.5, 3.0, -2.0];
        let terms: Vec<(&[bf16], f32)> = xs.iter().zip(weights).map(|(x, w)| (x.as_slice(), w)).collect();
        let mut out = vec![bf16::ZERO; ELEMENTS];
        let bytes = ((branches + 1) * ELEMENTS * 2) as u64;
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function(BenchmarkId::new("combine", branches), |b| {
            b.iter(|| combine_into(black_box(&terms), black_box(&mut out)))
        });
        // A copy that moves the same number of bytes: read half, write half.
        // Written, not zeroed: a zeroed allocation maps one shared page and reads from cache.
        let src: Vec<u8> = (0..bytes as usize / 2).map(|i| (i * 31) as u8).collect();
        let mut dst = vec![1u8; bytes as usize / 2];
        group.bench_function(BenchmarkId::new("memcpy", branches), |b| b.iter(|| dst.copy_from_slice(black_box(&src))));
        group.bench_function(BenchmarkId::new("memcpy_parallel", branches), |b| {
            b.iter(|| dst.par_chunks_mut(1 << 20).zip(src.par_chunks(1 << 20)).for_each(|(d, s)| d.copy_from_slice(s)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
