//! Little-endian integers in the pool's files (the log's records and both
//! indexes' segments): read at an offset, unchecked where the caller has
//! checked the length, checked (`get_*`) where it has not.

/// The `u32` at `o`; the caller has checked that `b` holds it.
pub fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// The `u64` at `o`; the caller has checked that `b` holds it.
pub fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(x)
}

/// The `u32` at `o`, or `None` past the end of `b`.
pub fn get_u32(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The `u64` at `o`, or `None` past the end of `b`.
pub fn get_u64(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(o..o.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// `n` rounded up to a multiple of 8 (sections of a segment start 8-aligned).
pub fn pad8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_and_unchecked_agree_and_the_checked_stop_at_the_end() {
        let b: Vec<u8> = (1..=12).collect();
        assert_eq!(get_u32(&b, 8), Some(u32_at(&b, 8)));
        assert_eq!(get_u64(&b, 4), Some(u64_at(&b, 4)));
        assert_eq!(u32_at(&b, 0), 0x0403_0201);
        assert_eq!(get_u32(&b, 9), None);
        assert_eq!(get_u64(&b, 5), None);
        assert_eq!(get_u64(&b, usize::MAX - 2), None);
        assert_eq!((pad8(0), pad8(1), pad8(8), pad8(9)), (0, 8, 8, 16));
    }
}
