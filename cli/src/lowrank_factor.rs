//! The linear algebra of `kvedge compress` (Palu, arXiv 2407.21118; whitening as in
//! SVD-LLM, arXiv 2403.07378), on `faer`'s SVD and Cholesky factorizations.
//!
//! A group's projection W (n_out × d, k = W·x) is factored as W ≈ A·D with A (n_out × r)
//! and D (r × d). Plain: the truncated SVD W = U·S·Vᵀ, A = U_r, D = S_r·V_rᵀ; the
//! Frobenius error is the norm of the dropped singular values (Eckart–Young). Whitened:
//! with the Gram matrix G = Σ x·xᵀ of calibration inputs and its Cholesky factor
//! G = L·Lᵀ, the error that matters is Σ‖(W − A·D)·x‖² = ‖(W − A·D)·L‖²_F, minimized
//! by the truncated SVD of W·L = U·S·Vᵀ: A = U_r, D = S_r·V_rᵀ·L⁻¹, and the error is
//! again the norm of the dropped singular values, now of W·L. A has orthonormal columns in
//! both, so an error in a stored latent reaches the keys unamplified.
//!
//! Rank allocation under a global budget of latent values: `uniform` gives every layer
//! ratio·g·head_dim (rounded to the multiple); `energy` gives out the budget one multiple
//! at a time to the matrix whose next singular values retain the largest share of its own
//! energy (Σ s², whitened when calibrated). Palu allocates by Fisher information, which
//! needs gradients of a loss; kvedge has no backward pass, and the retained-energy share is
//! the training-free criterion SVD-LLM-style methods use instead.

use faer::linalg::triangular_solve::solve_upper_triangular_in_place;
use faer::{Mat, MatRef, Par, Side};

/// The thin SVD of one group's (possibly whitened) projection, kept until ranks are known.
pub struct Spectrum {
    /// n_out × k left singular vectors.
    u: Mat<f64>,
    /// Singular values, non-increasing.
    pub s: Vec<f64>,
    /// d × k right singular vectors (of W·L when whitened).
    v: Mat<f64>,
}

/// A factor pair: `down` (r × d, row-major) and `up` (n_out × r, row-major).
pub struct Factors {
    pub down: Vec<f32>,
    pub up: Vec<f32>,
    /// ‖dropped singular values‖: the Frobenius error of W (whitened: of W·L).
    pub error: f64,
}

/// The Cholesky factor of a Gram matrix, with a small ridge so a rank-deficient sample
/// still factors.
pub fn whitener(gram: &Mat<f64>) -> Result<Mat<f64>, String> {
    let d = gram.nrows();
    let mean_diag = (0..d).map(|i| gram[(i, i)]).sum::<f64>() / d.max(1) as f64;
    let ridge = 1e-6 * mean_diag.max(1e-30);
    let g = Mat::from_fn(d, d, |i, j| gram[(i, j)] + if i == j { ridge } else { 0.0 });
    let llt = g
        .llt(Side::Lower)
        .map_err(|e| format!("calibration Gram matrix does not factor: {e:?}"))?;
    Ok(llt.L().to_owned())
}

/// The SVD of `w` (n_out × d, row-major f32), times `l` when whitening.
pub fn spectrum(
    w: &[f32],
    n_out: usize,
    d: usize,
    l: Option<&Mat<f64>>,
) -> Result<Spectrum, String> {
    let w = Mat::from_fn(n_out, d, |i, j| w[i * d + j] as f64);
    let m = match l {
        Some(l) => &w * l,
        None => w,
    };
    let svd = m
        .thin_svd()
        .map_err(|e| format!("SVD did not converge: {e:?}"))?;
    let s = svd.S().column_vector();
    Ok(Spectrum {
        u: svd.U().to_owned(),
        s: (0..s.nrows()).map(|i| s[i]).collect(),
        v: svd.V().to_owned(),
    })
}

impl Spectrum {
    /// The most a rank can be (min(n_out, d)).
    pub fn max_rank(&self) -> usize {
        self.s.len()
    }

    /// Σ s² of the first `r` values over Σ s² of all.
    pub fn energy(&self, r: usize) -> f64 {
        let total: f64 = self.s.iter().map(|x| x * x).sum();
        if total == 0.0 {
            return 1.0;
        }
        self.s[..r.min(self.s.len())]
            .iter()
            .map(|x| x * x)
            .sum::<f64>()
            / total
    }

    /// The rank-`r` factors; `l` the same whitener the spectrum was taken with.
    pub fn factors(&self, r: usize, l: Option<&Mat<f64>>) -> Factors {
        let r = r.min(self.s.len());
        let (n_out, d) = (self.u.nrows(), self.v.nrows());
        // Dᵀ (d × r) = V_r·S_r, then Dᵀ ← L⁻ᵀ·Dᵀ when whitened (solve Lᵀ·Y = V_r·S_r).
        let mut dt = Mat::from_fn(d, r, |i, j| self.v[(i, j)] * self.s[j]);
        if let Some(l) = l {
            solve_upper_triangular_in_place(l.transpose(), dt.as_mut(), Par::Seq);
        }
        let error = self.s[r..].iter().map(|x| x * x).sum::<f64>().sqrt();
        Factors {
            down: row_major_t(dt.as_ref()),
            up: (0..n_out)
                .flat_map(|i| (0..r).map(move |j| (i, j)))
                .map(|(i, j)| self.u[(i, j)] as f32)
                .collect(),
            error,
        }
    }
}

/// The transpose of `m` in row-major f32.
fn row_major_t(m: MatRef<'_, f64>) -> Vec<f32> {
    let mut out = Vec::with_capacity(m.nrows() * m.ncols());
    for j in 0..m.ncols() {
        for i in 0..m.nrows() {
            out.push(m[(i, j)] as f32);
        }
    }
    out
}

/// Round `x` to the nearest positive multiple of `multiple`, at most `max` (itself
/// rounded down to the multiple, or `max` when smaller than one multiple).
pub fn round_rank(x: f64, multiple: usize, max: usize) -> usize {
    let top = if max >= multiple {
        max / multiple * multiple
    } else {
        max
    };
    let r = ((x / multiple as f64).round() as usize).max(1) * multiple;
    r.min(top).max(1)
}

/// Ranks per matrix: `spectra[i]` are the groups of matrix i (one layer's K or V), all
/// given the same rank. `budget` is the total of rank × groups over all matrices.
pub fn allocate_energy(spectra: &[Vec<&Spectrum>], multiple: usize, budget: usize) -> Vec<usize> {
    let max: Vec<usize> = spectra
        .iter()
        .map(|g| {
            let m = g.iter().map(|s| s.max_rank()).min().unwrap_or(0);
            if m >= multiple {
                m / multiple * multiple
            } else {
                m
            }
        })
        .collect();
    let mut ranks: Vec<usize> = max.iter().map(|&m| multiple.min(m)).collect();
    let cost = |i: usize| spectra[i].len();
    let mut spent: usize = (0..spectra.len()).map(|i| ranks[i] * cost(i)).sum();
    // The share of a matrix's energy its groups gain from `r0` to `r1`, on average.
    let gain = |i: usize, r0: usize, r1: usize| -> f64 {
        let g = &spectra[i];
        g.iter().map(|s| s.energy(r1) - s.energy(r0)).sum::<f64>() / g.len().max(1) as f64
    };
    loop {
        let best = (0..spectra.len())
            .filter(|&i| ranks[i] + multiple <= max[i] && spent + multiple * cost(i) <= budget)
            .map(|i| (i, gain(i, ranks[i], ranks[i] + multiple)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let Some((i, _)) = best else { break };
        ranks[i] += multiple;
        spent += multiple * cost(i);
    }
    ranks
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvedge_runtime::rng::SplitMix64;

    fn random(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
        rng.vec_f32(n, -1.0, 1.0)
    }

    /// ‖(W − A·D)·L‖_F computed directly, in f64.
    fn residual(w: &[f32], f: &Factors, n_out: usize, d: usize, l: Option<&Mat<f64>>) -> f64 {
        let r = f.up.len() / n_out;
        let diff = Mat::from_fn(n_out, d, |i, j| {
            let ad: f64 = (0..r)
                .map(|c| f.up[i * r + c] as f64 * f.down[c * d + j] as f64)
                .sum();
            w[i * d + j] as f64 - ad
        });
        let m = match l {
            Some(l) => &diff * l,
            None => diff,
        };
        m.norm_l2()
    }

    /// Each factor pair's error is the norm of the singular values it drops (the bound
    /// Eckart–Young gives), plain and whitened, on odd shapes; full rank is exact.
    #[test]
    fn factor_error_is_the_dropped_singular_values() {
        let mut rng = SplitMix64::new(11);
        for (n_out, d, n_x) in [(24, 40, 200), (40, 24, 100), (37, 53, 300)] {
            let w = random(&mut rng, n_out * d);
            // Correlated inputs, so whitening changes the answer.
            let mix = random(&mut rng, d * d);
            let mut gram = Mat::<f64>::zeros(d, d);
            for _ in 0..n_x {
                let z = random(&mut rng, d);
                let x: Vec<f64> = (0..d)
                    .map(|i| (0..d).map(|j| mix[i * d + j] as f64 * z[j] as f64).sum())
                    .collect();
                for i in 0..d {
                    for j in 0..d {
                        gram[(i, j)] += x[i] * x[j];
                    }
                }
            }
            let l = whitener(&gram).unwrap();
            for l in [None, Some(&l)] {
                let sp = spectrum(&w, n_out, d, l).unwrap();
                for r in [1, sp.max_rank() / 3, sp.max_rank() / 2, sp.max_rank()] {
                    let f = sp.factors(r, l);
                    let got = residual(&w, &f, n_out, d, l);
                    let scale = sp.s[0];
                    assert!(
                        (got - f.error).abs() <= 1e-5 * scale,
                        "{n_out}x{d} r {r} whitened {}: residual {got}, bound {}",
                        l.is_some(),
                        f.error
                    );
                    if r == sp.max_rank() {
                        assert!(got <= 1e-5 * scale, "full rank must be exact: {got}");
                    }
                }
            }
        }
    }

    /// Whitening lowers the error on the calibration inputs at the same rank.
    #[test]
    fn whitening_lowers_the_error_on_calibration_inputs() {
        let mut rng = SplitMix64::new(5);
        let (n_out, d, r) = (32, 48, 8);
        let w = random(&mut rng, n_out * d);
        // Inputs living mostly in a few directions.
        let basis = random(&mut rng, 6 * d);
        let mut gram = Mat::<f64>::zeros(d, d);
        for _ in 0..400 {
            let c = random(&mut rng, 6);
            let noise = random(&mut rng, d);
            let x: Vec<f64> = (0..d)
                .map(|j| {
                    (0..6)
                        .map(|k| c[k] as f64 * basis[k * d + j] as f64)
                        .sum::<f64>()
                        + 0.01 * noise[j] as f64
                })
                .collect();
            for i in 0..d {
                for j in 0..d {
                    gram[(i, j)] += x[i] * x[j];
                }
            }
        }
        let l = whitener(&gram).unwrap();
        let plain = spectrum(&w, n_out, d, None).unwrap().factors(r, None);
        let white = spectrum(&w, n_out, d, Some(&l))
            .unwrap()
            .factors(r, Some(&l));
        let (ep, ew) = (
            residual(&w, &plain, n_out, d, Some(&l)),
            residual(&w, &white, n_out, d, Some(&l)),
        );
        assert!(
            ew < 0.5 * ep,
            "whitened {ew} vs plain {ep} on the calibration inputs"
        );
    }

    #[test]
    fn ranks_round_to_the_multiple_within_bounds() {
        assert_eq!(round_rank(96.0, 32, 192), 96);
        assert_eq!(round_rank(57.6, 32, 192), 64);
        assert_eq!(round_rank(3.0, 32, 192), 32);
        assert_eq!(round_rank(300.0, 32, 192), 192);
        assert_eq!(round_rank(19.2, 8, 64), 16);
        assert_eq!(round_rank(10.0, 32, 20), 20);
    }

    /// Energy allocation spends the budget where the spectrum is flat, never exceeds it,
    /// and gives a steep spectrum less.
    #[test]
    fn energy_allocation_favours_flat_spectra_and_holds_the_budget() {
        let mk = |s: Vec<f64>| Spectrum {
            u: Mat::zeros(s.len(), s.len()),
            v: Mat::zeros(s.len(), s.len()),
            s,
        };
        let steep = mk((0..64).map(|i| 0.5f64.powi(i)).collect());
        let flat = mk(vec![1.0; 64]);
        let spectra = vec![vec![&steep], vec![&flat]];
        let ranks = allocate_energy(&spectra, 8, 64);
        assert_eq!(ranks.iter().sum::<usize>(), 64);
        assert!(ranks[1] > ranks[0], "{ranks:?}");
        assert_eq!(ranks[0], 8);
    }
}
