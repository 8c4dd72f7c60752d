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

/// Dot products of `q` with each `q.len()`-wide row of `rows`, into `out`
/// (cleared first).
pub fn dots_i8(q: &[i8], rows: &[i8], out: &mut Vec<i32>) {
    out.clear();
    if q.is_empty() {
        return;
    }
    out.reserve(rows.len() / q.len());
    #[cfg(target_arch = "x86_64")]
    if q.len().is_multiple_of(32) && std::arch::is_x86_feature_detected!("avx2") {
        avx2::dots(q, rows, out);
        return;
    }
    for r in rows.chunks_exact(q.len()) {
        out.push(dot_i8(q, r));
    }
}

/// `acc += k × codes`, element by element (the encoder adds its int8 table rows so). The
/// same products and sums on every CPU: the AVX2 path multiplies, then adds, as the plain
/// one does.
#[inline]
pub fn add_scaled_i8(acc: &mut [f32], codes: &[i8], k: f32) {
    #[cfg(target_arch = "x86_64")]
    if acc.len() == codes.len()
        && acc.len().is_multiple_of(8)
        && std::arch::is_x86_feature_detected!("avx2")
    {
        avx2::add_scaled(acc, codes, k);
        return;
    }
    for (a, &c) in acc.iter_mut().zip(codes) {
        *a += c as f32 * k;
    }
}

/// The i8 dot product in AVX2: `maddubs` multiplies unsigned by signed
/// bytes, so |q| meets each row byte carrying q's sign; codes stay within
/// ±127, so the pairwise i16 sums (at most 2·127·127) cannot saturate.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;

    pub fn dots(q: &[i8], rows: &[i8], out: &mut Vec<i32>) {
        // SAFETY: the caller checked `is_x86_feature_detected!("avx2")`.
        unsafe { dots_avx2(q, rows, out) }
    }

    pub fn add_scaled(acc: &mut [f32], codes: &[i8], k: f32) {
        // SAFETY: the caller checked `is_x86_feature_detected!("avx2")` and that both
        // slices have the same length, a multiple of 8.
        unsafe { add_scaled_avx2(acc, codes, k) }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn add_scaled_avx2(acc: &mut [f32], codes: &[i8], k: f32) {
        let kk = _mm256_set1_ps(k);
        let mut i = 0;
        while i + 8 <= acc.len() {
            // SAFETY: i + 8 <= acc.len() = codes.len(); unaligned loads and stores.
            let c8 = _mm_loadl_epi64(codes.as_ptr().add(i) as *const __m128i);
            let c = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c8));
            let a = _mm256_loadu_ps(acc.as_ptr().add(i));
            _mm256_storeu_ps(
                acc.as_mut_ptr().add(i),
                _mm256_add_ps(a, _mm256_mul_ps(c, kk)),
            );
            i += 8;
        }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn dots_avx2(q: &[i8], rows: &[i8], out: &mut Vec<i32>) {
        let dim = q.len();
        let ones = _mm256_set1_epi16(1);
        for r in rows.chunks_exact(dim) {
            let mut acc = _mm256_setzero_si256();
            let mut i = 0;
            while i + 32 <= dim {
                // SAFETY: i + 32 <= dim = q.len() = r.len(); unaligned loads.
                let a = _mm256_loadu_si256(q.as_ptr().add(i) as *const __m256i);
                let b = _mm256_loadu_si256(r.as_ptr().add(i) as *const __m256i);
                let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p16, ones));
                i += 32;
            }
            let hi = _mm256_extracti128_si256(acc, 1);
            let s = _mm_add_epi32(_mm256_castsi256_si128(acc), hi);
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
            out.push(_mm_cvtsi128_si32(s));
        }
    }
}

/// Dot product of two i8 rows, exact in i32.
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    // Thirty-two independent i32 lanes over fixed-size blocks: the shape
    // the compiler turns into wide vector multiplies (measured fastest of
    // the variants tried, about 8 GB/s on one core).
    let mut acc = [0i32; 32];
    let mut ca = a.chunks_exact(32);
    let mut cb = b.chunks_exact(32);
    for (x, y) in (&mut ca).zip(&mut cb) {
        let (Ok(x), Ok(y)) = (<&[i8; 32]>::try_from(x), <&[i8; 32]>::try_from(y)) else {
            continue;
        };
        for l in 0..32 {
            acc[l] += x[l] as i32 * y[l] as i32;
        }
    }
    let mut sum = 0i32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        sum += *x as i32 * *y as i32;
    }
    for x in acc {
        sum += x;
    }
    sum
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
        assert!(
            (approx - exact).abs() < 0.05 * (1.0 + exact.abs()),
            "{approx} {exact}"
        );
        let mut back = vec![0f32; 256];
        dequantize(&qa, sa, &mut back);
        assert!(back.iter().zip(&a).all(|(x, y)| (x - y).abs() <= sa));
        let rows: Vec<i8> = qb.iter().chain(&qa).copied().collect();
        // Extremes too: every pair of ±127.
        let ext: Vec<i8> = (0..256)
            .map(|i| if i % 3 == 0 { -127 } else { 127 })
            .collect();
        let mut out = Vec::new();
        dots_i8(&ext, &ext, &mut out);
        assert_eq!(out, vec![256 * 127 * 127]);
        let mut out = Vec::new();
        dots_i8(&qa, &rows, &mut out);
        assert_eq!(out, vec![dot_i8(&qa, &qb), dot_i8(&qa, &qa)]);
        // Both paths of add_scaled_i8 give the same bits.
        let mut fast = vec![0.25f32; 256];
        add_scaled_i8(&mut fast, &qa, 0.013);
        let mut plain = vec![0.25f32; 256];
        for (p, &c) in plain.iter_mut().zip(&qa) {
            *p += c as f32 * 0.013;
        }
        assert_eq!(fast, plain);
        let mut z = Vec::new();
        assert_eq!(quantize(&[0.0, f32::NAN], &mut z), 0.0);
        assert_eq!(z, vec![0, 0]);
    }
}
