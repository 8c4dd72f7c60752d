//! The best `k` (score, id) of a search: higher scores first, ties to the
//! smaller (older) id. Both indexes rank with it.

use std::collections::BinaryHeap;

/// The best `k` (score, id) seen so far.
pub struct Top {
    k: usize,
    heap: BinaryHeap<Scored>,
}

#[derive(PartialEq)]
struct Scored(f32, u64);

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    /// Better first: higher score, then the older id.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.0.total_cmp(&self.0).then(self.1.cmp(&other.1))
    }
}

impl Top {
    pub fn new(k: usize) -> Top {
        Top {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    /// The score a candidate must reach to enter (it may tie and win on its id);
    /// below every score while fewer than `k` are held.
    pub fn threshold(&self) -> f32 {
        match self.heap.peek() {
            Some(w) if self.heap.len() >= self.k => w.0,
            _ => f32::NEG_INFINITY,
        }
    }

    /// Whether `score` could enter the top (ties decided by `offer`).
    pub fn would_take(&self, score: f32) -> bool {
        self.heap.len() < self.k || self.heap.peek().is_some_and(|w| score >= w.0)
    }

    pub fn offer(&mut self, score: f32, id: u64) {
        if !score.is_finite() || self.k == 0 {
            return;
        }
        let s = Scored(score, id);
        if self.heap.len() < self.k {
            self.heap.push(s);
        } else if self.heap.peek().is_some_and(|worst| s < *worst) {
            self.heap.pop();
            self.heap.push(s);
        }
    }

    pub fn merge(&mut self, other: Top) {
        for s in other.heap {
            self.offer(s.0, s.1);
        }
    }

    pub fn into_sorted(self) -> Vec<(f32, u64)> {
        let mut v = self.heap.into_vec();
        v.sort();
        v.into_iter().map(|s| (s.0, s.1)).collect()
    }
}
