//! Criterion benchmarks: compiled value+gradient (f32, reduction mean, one thread) of the
//! stdlib losses the JIT issue names, at sizes small enough for a quick run, plus compile
//! time. `lossc bench` measures the full sizes; `bench/compare.py` sets them against JAX.
//!
//!     cargo bench --bench losses

use criterion::{criterion_group, criterion_main, Criterion};
use lossc::runtime::{DType, Library, Options, Reduction, View};

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 10007) as f32 / 10007.0 * 4.0
                - 2.0
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let lib = Library::with_stdlib().expect("stdlib");
    let opts = |g: &str| Options::new().dtype(DType::F32).grad(g);

    let n = 1_000_000;
    let (y, p) = (data(n, 1), data(n, 2));
    let labels01: Vec<f32> = y.iter().map(|v| (*v > 0.0) as u8 as f32).collect();
    let shape = [n];
    let mut value = [0f32; 1];
    let mut g = vec![0f32; n];

    let mse = lib
        .compile("mean_squared_error", opts("predictions"))
        .expect("compile");
    c.bench_function("mean_squared_error n=1e6", |b| {
        b.iter(|| {
            let inputs = [
                ("labels", View::f32(&shape, &y)),
                ("predictions", View::f32(&shape, &p)),
            ];
            mse.call_into(
                &inputs,
                &[],
                Reduction::Mean,
                None,
                &mut value,
                &mut [&mut g],
            )
            .expect("call")
        })
    });

    let focal = lib.compile("focal_loss", opts("logits")).expect("compile");
    c.bench_function("focal_loss n=1e6", |b| {
        b.iter(|| {
            let inputs = [
                ("labels", View::f32(&shape, &labels01)),
                ("logits", View::f32(&shape, &p)),
            ];
            focal
                .call_into(
                    &inputs,
                    &[],
                    Reduction::Mean,
                    None,
                    &mut value,
                    &mut [&mut g],
                )
                .expect("call")
        })
    });

    let (rows, cols) = (1024usize, 1000usize);
    let logits = data(rows * cols, 3);
    let mut onehot = vec![0f32; rows * cols];
    for r in 0..rows {
        onehot[r * cols + (r * 7) % cols] = 1.0;
    }
    let s2 = [rows, cols];
    let mut g2 = vec![0f32; rows * cols];
    let sce = lib
        .compile("softmax_cross_entropy", opts("logits"))
        .expect("compile");
    c.bench_function("softmax_cross_entropy 1024x1000", |b| {
        b.iter(|| {
            let inputs = [
                ("labels", View::f32(&s2, &onehot)),
                ("logits", View::f32(&s2, &logits)),
            ];
            sce.call_into(
                &inputs,
                &[],
                Reduction::Mean,
                None,
                &mut value,
                &mut [&mut g2],
            )
            .expect("call")
        })
    });

    c.bench_function("compile focal_loss value+grad", |b| {
        b.iter(|| {
            lossc::runtime::native::clear_cache();
            let lib =
                Library::from_source("focal.loss", &lib.loss("focal_loss").expect("loss").source)
                    .expect("parse");
            lib.compile("focal_loss", opts("logits")).expect("compile")
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
