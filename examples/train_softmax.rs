//! Trains a softmax-regression classifier on synthetic data with a loss written in the lossc
//! language (`examples/linear_softmax.loss`). The weight matrix is an input of the loss, so
//! lossc derives its gradient. The loss is compiled once to a native kernel (value and the
//! gradients of `w` and `b` in one call); each step calls it into buffers the loop owns and
//! takes a plain gradient-descent step. Step 0 is checked against the reference interpreter.
//!
//!     cargo run --release --example train_softmax

use lossc::runtime::{Array, Backend, Call, DType, Library, Options, Reduction, View};

/// A small deterministic generator (xorshift) so the example is reproducible.
struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        // Box-Muller
        let (u, v) = (self.uniform().max(1e-12), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/linear_softmax.loss");
    let lib = Library::from_file(&path).map_err(|e| e.message())?;

    // Three Gaussian blobs in 2-D.
    let (n, d, c) = (300usize, 2usize, 3usize);
    let centres = [[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]];
    let mut rng = Rng(0x2545f4914f6cdd1d);
    let mut x = Vec::with_capacity(n * d);
    let mut y = Vec::with_capacity(n);
    for k in 0..n {
        let class = k % c;
        for centre in &centres[class][..d] {
            x.push(centre + 0.8 * rng.normal());
        }
        y.push(class as i64);
    }
    let xs: Vec<f32> = x.iter().map(|v| *v as f32).collect();
    let mut w = vec![0f32; d * c];
    let mut b = vec![0f32; c];
    let lr = 0.5f32;

    let t0 = std::time::Instant::now();
    let kernel = lib
        .compile(
            "linear_softmax",
            Options::new().dtype(DType::F32).grad("w").grad("b"),
        )
        .map_err(|e| e.message())?;
    println!(
        "compiled linear_softmax (value + dw + db) in {:.2} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );

    let (mut value, mut gw, mut gb) = ([0f32; 1], vec![0f32; d * c], vec![0f32; c]);
    let (sx, sy, sw, sb) = ([n, d], [n], [d, c], [c]);
    println!("step  loss      accuracy");
    for step in 0..=60 {
        let inputs = [
            ("labels", View::i64(&sy, &y)),
            ("x", View::f32(&sx, &xs)),
            ("w", View::f32(&sw, &w)),
            ("b", View::f32(&sb, &b)),
        ];
        kernel
            .call_into(
                &inputs,
                &[],
                Reduction::Mean,
                None,
                &mut value,
                &mut [&mut gw, &mut gb],
            )
            .map_err(|e| e.message())?;
        if step == 0 {
            // The same loss through the interpreter.
            let call = Call::new()
                .backend(Backend::Interp)
                .input("labels", Array::int(vec![n], y.clone()))
                .input("x", Array::real(vec![n, d], x.clone()))
                .input("w", Array::real(vec![d, c], vec![0.0; d * c]))
                .input("b", Array::real(vec![c], vec![0.0; c]))
                .reduction(Reduction::Mean)
                .dtype(DType::F32);
            let want = lib.call("linear_softmax", &call).map_err(|e| e.message())?;
            println!(
                "step 0: compiled {:.6}, interpreter {:.6}",
                value[0],
                want.value.to_f64()[0]
            );
        }
        if step % 10 == 0 {
            println!(
                "{step:>4}  {:.6}  {:.3}",
                value[0],
                accuracy(&xs, &y, &w, &b, d, c)
            );
        }
        for (p, g) in w.iter_mut().zip(&gw) {
            *p -= lr * g;
        }
        for (p, g) in b.iter_mut().zip(&gb) {
            *p -= lr * g;
        }
    }
    Ok(())
}

fn accuracy(xs: &[f32], y: &[i64], w: &[f32], b: &[f32], d: usize, c: usize) -> f64 {
    let mut right = 0;
    for (k, label) in y.iter().enumerate() {
        let scores: Vec<f32> = (0..c)
            .map(|j| (0..d).map(|i| xs[k * d + i] * w[i * c + j]).sum::<f32>() + b[j])
            .collect();
        let best = (0..c)
            .max_by(|a, b| scores[*a].total_cmp(&scores[*b]))
            .unwrap_or(0);
        right += (best as i64 == *label) as usize;
    }
    right as f64 / y.len() as f64
}
