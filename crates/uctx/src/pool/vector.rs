//! Vector arithmetic shared by the log, the index and search: symmetric
//! per-row i8 quantisation and the dot products that score it.

/// Quantise `v` to i8 with one scale for the row (largest magnitude maps to
/// 127), appending the codes to `out`; returns the scale. Non-finite values
/// count as zero; an all-zero row gets scale 0.
pub fn quantize(v: &[f32], out: &mut Vec<i8>) -> f32 {
    let m = v
        .iter()
        .filter(|x| x.is_finite())
        .fold(0f32, |m, x| m.max(x.abs()));
    if m == 0.0 {
        out.extend(std::iter::repeat_n(0i8, v.len()));
        return 0.0;
    }
    let scale = m / 127.0;
    out.extend(v.iter().map(|x| {
        if x.is_finite() {
            (x / scale).round().clamp(-127.0, 127.0) as i8
        } else {
            0
        }
    }));
    scale
}

/// The f32 row a quantised row stands for.
pub fn dequantize(q: &[i8], scale: f32, out: &mut [f32]) {
    for (o, x) in out.iter_mut().zip(q) {
        *o = *x as f32 * scale;
    }
}

/// Dot product of two i8 rows, exact in i32.
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    // Products of codes in [-127, 127] fit in i16; sixteen independent
    // lanes let the compiler vectorise the sum.
    let mut acc = [0i32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..16 {
            acc[l] += (x[l] as i16 * y[l] as i16) as i32;
        }
    }
    let tail: i32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| *x as i32 * *y as i32)
        .sum();
    acc.iter().sum::<i32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::dot;

    #[test]
    fn quantised_dot_tracks_the_f32_dot() {
        let a: Vec<f32> = (0..256).map(|i| ((i as f32) * 0.37).sin()).collect();
        let b: Vec<f32> = (0..256).map(|i| ((i as f32) * 0.11).cos()).collect();
        let (mut qa, mut qb) = (Vec::new(), Vec::new());
        let sa = quantize(&a, &mut qa);
        let sb = quantize(&b, &mut qb);
        let approx = dot_i8(&qa, &qb) as f32 * sa * sb;
        let exact = dot(&a, &b);
        assert!((approx - exact).abs() < 0.05 * (1.0 + exact.abs()), "{approx} {exact}");
        let mut back = vec![0f32; 256];
        dequantize(&qa, sa, &mut back);
        assert!(back.iter().zip(&a).all(|(x, y)| (x - y).abs() <= sa));
        let mut z = Vec::new();
        assert_eq!(quantize(&[0.0, f32::NAN], &mut z), 0.0);
        assert_eq!(z, vec![0, 0]);
    }
}
