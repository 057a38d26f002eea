//! Int8 quantization of unit vectors: one signed byte a dimension and one f32 scale
//! (`x ≈ q * scale`, `scale = max|x| / 127`). A 384-dimension MiniLM vector takes 384 bytes
//! instead of 1,536, so 100,000 posts fit in 38 MB and an exact scan reads a quarter of the
//! memory; the dot product of two quantized vectors is an integer sum the compiler
//! vectorizes.

/// A quantized vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    pub data: Vec<i8>,
    pub scale: f32,
}

/// Quantizes `v`; an all-zero (or non-finite) vector gets scale 0 and matches nothing.
pub fn quantize(v: &[f32]) -> Quantized {
    let max = v
        .iter()
        .filter(|x| x.is_finite())
        .fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 {
        return Quantized {
            data: vec![0; v.len()],
            scale: 0.0,
        };
    }
    let scale = max / 127.0;
    let data = v
        .iter()
        .map(|x| {
            if x.is_finite() {
                (x / scale).round().clamp(-127.0, 127.0) as i8
            } else {
                0
            }
        })
        .collect();
    Quantized { data, scale }
}

/// The integer dot product of two quantized vectors of one length.
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    // Sixteen independent i32 lanes: the compiler turns them into SIMD multiply-adds, where
    // a single running sum stays scalar (twice the time over 100,000 vectors). Exact for up
    // to 2^31 / 127^2 (about 133,000) dimensions.
    let mut acc = [0i32; 16];
    for (ca, cb) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
        for i in 0..16 {
            acc[i] += ca[i] as i32 * cb[i] as i32;
        }
    }
    let tail = a.len().min(b.len()) / 16 * 16;
    let rest: i32 = a[tail..]
        .iter()
        .zip(&b[tail..])
        .map(|(x, y)| *x as i32 * *y as i32)
        .sum();
    acc.iter().sum::<i32>() + rest
}

/// The approximate dot product (the cosine, for unit vectors) of two quantized vectors.
pub fn similarity(a: &Quantized, b_data: &[i8], b_scale: f32) -> f32 {
    dot_i8(&a.data, b_data) as f32 * a.scale * b_scale
}

/// The dot product of an exact vector with a quantized one: the near-duplicate check
/// compares this way, with one side's error only.
pub fn similarity_f32(a: &[f32], b_data: &[i8], b_scale: f32) -> f32 {
    a.iter()
        .zip(b_data)
        .map(|(x, y)| x * *y as f32)
        .sum::<f32>()
        * b_scale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let v: Vec<f32> = (0..dim)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    #[test]
    fn quantized_cosines_stay_within_a_hundredth_of_the_exact_ones() {
        let mut worst = 0f32;
        for i in 0..200 {
            let (a, b) = (unit(i, 384), unit(i + 1000, 384));
            // Half the pairs close together, as near-duplicates are.
            let b: Vec<f32> = if i % 2 == 0 {
                let m: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + 0.2 * y).collect();
                let n = m.iter().map(|x| x * x).sum::<f32>().sqrt();
                m.into_iter().map(|x| x / n).collect()
            } else {
                b
            };
            let exact: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let (qa, qb) = (quantize(&a), quantize(&b));
            worst = worst.max((similarity(&qa, &qb.data, qb.scale) - exact).abs());
            worst = worst.max((similarity_f32(&a, &qb.data, qb.scale) - exact).abs());
        }
        assert!(worst < 0.01, "worst cosine error {worst}");
    }

    #[test]
    fn the_lane_dot_product_is_the_plain_one_tail_included() {
        for len in [0, 3, 16, 17, 384, 390] {
            let a: Vec<i8> = (0..len).map(|i| (i * 37 % 255) as i8).collect();
            let b: Vec<i8> = (0..len).map(|i| (i * 91 % 251) as i8).collect();
            let plain: i32 = a.iter().zip(&b).map(|(x, y)| *x as i32 * *y as i32).sum();
            assert_eq!(dot_i8(&a, &b), plain, "length {len}");
        }
    }

    #[test]
    fn zero_and_non_finite_vectors_match_nothing() {
        let z = quantize(&[0.0; 8]);
        assert_eq!(z.scale, 0.0);
        let n = quantize(&[f32::NAN, 1.0, f32::INFINITY]);
        assert_eq!(n.data, vec![0, 127, 0]);
        assert_eq!(similarity(&z, &n.data, n.scale), 0.0);
    }
}
