//! Trains a softmax-regression classifier on synthetic data with a loss written in the lossc
//! language (`examples/linear_softmax.loss`). The weight matrix is an input of the loss, so
//! lossc derives its gradient: the loop below is plain gradient descent on what `call` returns.
//!
//!     cargo run --release --example train_softmax

use lossc::runtime::{Array, Call, Data, Library, Reduction};

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
    let x = Array::real(vec![n, d], x);
    let labels = Array::int(vec![n], y.clone());
    let mut w = vec![0.0; d * c];
    let mut b = vec![0.0; c];
    let lr = 0.5;

    println!("step  loss      accuracy");
    for step in 0..=60 {
        let call = Call::new()
            .input("labels", labels.clone())
            .input("x", x.clone())
            .input("w", Array::real(vec![d, c], w.clone()))
            .input("b", Array::real(vec![c], b.clone()))
            .reduction(Reduction::Mean)
            .grad("w")
            .grad("b");
        let out = lib.call("linear_softmax", &call).map_err(|e| e.message())?;
        let loss = out.value.to_f64()[0];
        if step % 10 == 0 {
            println!(
                "{step:>4}  {loss:.6}  {:.3}",
                accuracy(&x, &y, &w, &b, d, c)
            );
        }
        for (name, g) in &out.grads {
            let Data::Real(g) = &g.data else { continue };
            let params = if name == "w" { &mut w } else { &mut b };
            for (p, gi) in params.iter_mut().zip(g) {
                *p -= lr * gi;
            }
        }
    }
    Ok(())
}

fn accuracy(x: &Array, y: &[i64], w: &[f64], b: &[f64], d: usize, c: usize) -> f64 {
    let xs = x.to_f64();
    let mut right = 0;
    for (k, label) in y.iter().enumerate() {
        let scores: Vec<f64> = (0..c)
            .map(|j| (0..d).map(|i| xs[k * d + i] * w[i * c + j]).sum::<f64>() + b[j])
            .collect();
        let best = (0..c)
            .max_by(|a, b| scores[*a].total_cmp(&scores[*b]))
            .unwrap_or(0);
        right += (best as i64 == *label) as usize;
    }
    right as f64 / y.len() as f64
}
