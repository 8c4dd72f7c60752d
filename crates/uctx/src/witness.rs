//! Retention per slice and eviction: pure functions of slice metadata.
//!
//! A slice starts at its salience (importance at write time). It fades with
//! age, counted in slices written since it was last used, with an exponential
//! half-life. Each time the model actually uses a paged-in copy, the slice
//! hardens: its retention rises (bounded) and it fades more slowly (bounded).
//! When it becomes relevant again ([`crate::pool::WitnessEvent::Recalled`]),
//! its age resets. Pinned slices never fade and are never evicted.
//!
//! Nothing here touches the disk: the pool feeds these functions its metadata
//! and writes the victims they name as tombstones.

use crate::slice::SliceMeta;

/// What retention depends on: a slice's standing in the pool.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Standing {
    pub id: u64,
    /// Bytes on disk that evicting the slice frees.
    pub bytes: u64,
    pub salience: f32,
    pub uses: u32,
    pub last_used_seq: u64,
    pub pinned: bool,
}

impl From<&SliceMeta> for Standing {
    fn from(m: &SliceMeta) -> Standing {
        Standing {
            id: m.id,
            bytes: m.bytes,
            salience: m.salience,
            uses: m.uses,
            last_used_seq: m.last_used_seq,
            pinned: m.pinned,
        }
    }
}

/// Knobs of the retention curve.
#[derive(Clone, Debug, PartialEq)]
pub struct WitnessParams {
    /// Slices written after which an unused slice keeps half its retention.
    pub half_life: f64,
    /// Retention added by the first use; later uses add less, geometrically.
    pub use_boost: f32,
    /// Ratio by which each further use's boost shrinks, in (0, 1).
    pub use_decay: f32,
    /// Factor by which each use lengthens the half-life.
    pub use_half_life_gain: f64,
    /// Uses beyond this count harden no further.
    pub max_uses: u32,
}

impl Default for WitnessParams {
    fn default() -> Self {
        WitnessParams {
            half_life: 200_000.0,
            use_boost: 0.5,
            use_decay: 0.5,
            use_half_life_gain: 0.5,
            max_uses: 16,
        }
    }
}

/// Retention of one slice at pool sequence `now_seq`: higher is kept longer.
///
/// Starts at the slice's salience, halves every `half_life` slices written
/// since `last_used_seq`, rises with uses (at most `salience + 2 * use_boost`
/// under the default decay), and is `f32::INFINITY` for pinned slices.
pub fn retention(meta: &Standing, now_seq: u64, params: &WitnessParams) -> f32 {
    if meta.pinned {
        return f32::INFINITY;
    }
    let salience = if meta.salience.is_finite() {
        meta.salience.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let uses = meta.uses.min(params.max_uses);
    let decay = if params.use_decay.is_finite() {
        params.use_decay.clamp(0.0, 0.999)
    } else {
        0.5
    };
    // Geometric series: boost * (1 + d + d^2 + ... ) over `uses` terms.
    let boost = params.use_boost.max(0.0) * (1.0 - decay.powi(uses as i32)) / (1.0 - decay);
    let base = salience + boost;
    let gain = params.use_half_life_gain.max(0.0);
    let half_life = params.half_life.max(1.0) * (1.0 + gain * uses as f64);
    let age = now_seq.saturating_sub(meta.last_used_seq) as f64;
    let fade = (-(age / half_life) * std::f64::consts::LN_2).exp();
    (base as f64 * fade) as f32
}

/// The slices to evict so that `bytes_on_disk` falls to `budget_bytes` or
/// below: lowest retention first (oldest id first among equals), never a
/// pinned slice. Empty when already under budget. When even evicting every
/// unpinned slice cannot reach the budget, all unpinned slices are returned.
pub fn victims(
    metas: &[Standing],
    bytes_on_disk: u64,
    budget_bytes: u64,
    now_seq: u64,
    params: &WitnessParams,
) -> Vec<u64> {
    if bytes_on_disk <= budget_bytes {
        return Vec::new();
    }
    let mut ranked: Vec<(f32, u64, u64)> = metas
        .iter()
        .filter(|m| !m.pinned)
        .map(|m| (retention(m, now_seq, params), m.id, m.bytes))
        .collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut left = bytes_on_disk;
    let mut out = Vec::new();
    for (_, id, bytes) in ranked {
        if left <= budget_bytes {
            break;
        }
        left = left.saturating_sub(bytes);
        out.push(id);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta(id: u64, salience: f32, uses: u32, last_used_seq: u64, pinned: bool) -> Standing {
        Standing {
            id,
            bytes: 100,
            salience,
            uses,
            last_used_seq,
            pinned,
        }
    }

    #[test]
    fn starts_at_salience_and_halves_each_half_life() {
        let p = WitnessParams {
            half_life: 100.0,
            ..WitnessParams::default()
        };
        let m = meta(1, 0.8, 0, 1, false);
        assert!((retention(&m, 1, &p) - 0.8).abs() < 1e-6);
        assert!((retention(&m, 101, &p) - 0.4).abs() < 1e-5);
        assert!((retention(&m, 201, &p) - 0.2).abs() < 1e-5);
    }

    #[test]
    fn pinned_never_fades() {
        let p = WitnessParams::default();
        let m = meta(1, 0.0, 0, 0, true);
        assert_eq!(retention(&m, u64::MAX, &p), f32::INFINITY);
    }

    #[test]
    fn uses_harden_but_are_bounded() {
        let p = WitnessParams::default();
        let r0 = retention(&meta(1, 0.5, 0, 1, false), 1, &p);
        let r1 = retention(&meta(1, 0.5, 1, 1, false), 1, &p);
        let r2 = retention(&meta(1, 0.5, 2, 1, false), 1, &p);
        let rmax = retention(&meta(1, 0.5, u32::MAX, 1, false), 1, &p);
        assert!(r0 < r1 && r1 < r2 && r2 <= rmax);
        assert!(rmax <= 0.5 + 2.0 * p.use_boost + 1e-6);
    }

    #[test]
    fn recalled_rehardens_by_resetting_age() {
        let p = WitnessParams {
            half_life: 10.0,
            ..WitnessParams::default()
        };
        let stale = meta(1, 0.5, 0, 1, false);
        let recalled = meta(1, 0.5, 0, 1000, false);
        assert!(retention(&recalled, 1000, &p) > retention(&stale, 1000, &p) * 100.0);
    }

    #[test]
    fn victims_lowest_first_and_stop_under_budget() {
        let p = WitnessParams::default();
        let metas = vec![
            meta(1, 0.9, 0, 1, false),
            meta(2, 0.1, 0, 2, false),
            meta(3, 0.5, 0, 3, false),
            meta(4, 0.0, 0, 4, true),
        ];
        assert!(victims(&metas, 400, 400, 4, &p).is_empty());
        assert_eq!(victims(&metas, 400, 300, 4, &p), vec![2]);
        assert_eq!(victims(&metas, 400, 150, 4, &p), vec![2, 3, 1]);
        // Cannot reach the budget: every unpinned slice, never the pinned one.
        assert_eq!(victims(&metas, 400, 0, 4, &p), vec![2, 3, 1]);
    }

    fn arb_meta() -> impl Strategy<Value = Standing> {
        (
            0u64..1000,
            0.0f32..=1.0,
            0u32..40,
            0u64..1000,
            any::<bool>(),
            1u64..5000,
        )
            .prop_map(|(id, s, uses, last, pinned, bytes)| {
                let mut m = meta(id, s, uses, id.max(last), pinned);
                m.bytes = bytes;
                m
            })
    }

    proptest! {
        #[test]
        fn never_evicts_pinned(metas in prop::collection::vec(arb_meta(), 0..60), budget in 0u64..100_000) {
            let total: u64 = metas.iter().map(|m| m.bytes).sum();
            let v = victims(&metas, total, budget, 2000, &WitnessParams::default());
            for id in v {
                prop_assert!(metas.iter().any(|m| m.id == id && !m.pinned));
            }
        }

        #[test]
        fn gets_under_budget_when_possible(metas in prop::collection::vec(arb_meta(), 0..60), budget in 0u64..100_000) {
            // Make ids unique so that victims map back to one slice each.
            let metas: Vec<Standing> = metas.into_iter().enumerate().map(|(i, mut m)| { m.id = i as u64; m }).collect();
            let total: u64 = metas.iter().map(|m| m.bytes).sum();
            let pinned: u64 = metas.iter().filter(|m| m.pinned).map(|m| m.bytes).sum();
            let v = victims(&metas, total, budget, 2000, &WitnessParams::default());
            let freed: u64 = metas.iter().filter(|m| v.contains(&m.id)).map(|m| m.bytes).sum();
            if pinned <= budget {
                prop_assert!(total - freed <= budget);
            }
            // Never more than needed: without the last victim we would still be over.
            if let Some(last) = v.last() {
                let last_bytes = metas.iter().find(|m| m.id == *last).map(|m| m.bytes).unwrap_or(0);
                prop_assert!(total - (freed - last_bytes) > budget);
            }
        }

        #[test]
        fn monotonic_in_age(m in arb_meta(), a in 0u64..1_000_000, b in 0u64..1_000_000) {
            let p = WitnessParams::default();
            let (young, old) = (a.min(b), a.max(b));
            let r_young = retention(&m, m.last_used_seq + young, &p);
            let r_old = retention(&m, m.last_used_seq + old, &p);
            prop_assert!(r_old <= r_young);
        }

        #[test]
        fn used_beats_unused(m in arb_meta(), now in 0u64..10_000, uses in 1u32..30) {
            let p = WitnessParams::default();
            let mut unused = m;
            unused.pinned = false;
            unused.uses = 0;
            let mut used = unused;
            used.uses = uses;
            prop_assert!(retention(&used, now, &p) > retention(&unused, now, &p));
        }
    }
}
